"""Starting the trial templates on the nodes: ``run_sweep`` starts them before it imports Tune, and a failure
there leaves them to the sweep's callback, which starts them at the sweep's start, then at most every
``interval_s`` for nodes that join, never failing the sweep, and checking at once after a resume."""

from __future__ import annotations

import logging
import pickle

from tl_ray.train import node_template
from tl_ray.tune.templates import NodeTemplates, sweep_templates


def test_nodes_are_checked_at_most_every_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(node_template, "start_node_templates", lambda where: calls.append(where))
    clock = [100.0]
    monkeypatch.setattr("tl_ray.tune.templates.time.monotonic", lambda: clock[0])
    callback = NodeTemplates(interval_s=10.0)
    callback.start()
    callback.on_step_begin(iteration=1, trials=[])
    clock[0] += 9.9
    callback.on_step_begin(iteration=2, trials=[])
    assert len(calls) == 1
    clock[0] += 0.1
    callback.on_step_begin(iteration=3, trials=[])
    assert len(calls) == 2


def test_a_failure_to_start_templates_is_logged_and_the_sweep_goes_on(monkeypatch, caplog):
    def unreachable(where):
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(node_template, "start_node_templates", unreachable)
    with caplog.at_level(logging.WARNING, logger="tl_ray.tune.templates"):
        NodeTemplates().start()
    assert "GCS unreachable" in caplog.text and "trial actors start their own" in caplog.text


def test_a_restored_callback_checks_at_once(monkeypatch):
    calls = []
    monkeypatch.setattr(node_template, "start_node_templates", lambda where: calls.append(where))
    callback = NodeTemplates(interval_s=30.0)
    callback.start()
    restored = pickle.loads(pickle.dumps(callback))  # as Tune saves the run's callbacks and a resume loads them
    assert restored.interval_s == 30.0
    restored.on_step_begin(iteration=1, trials=[])
    assert len(calls) == 2


def test_the_callback_starts_templates_where_the_running_sweep_looks(monkeypatch):
    """The callback starts templates where the running sweep's trials look for them (``sweep_templates``, set
    by run_tuner), also when it is one a resumed sweep restored from an older saved state."""
    calls = []
    monkeypatch.setattr(node_template, "start_node_templates", lambda where: calls.append(where))
    kept = {"name": "tl-ray-trial-template:{node_id}:k1", "namespace": "tl-ray", "keep_alive_s": 120.0}
    restored = NodeTemplates.__new__(NodeTemplates)
    restored.__setstate__({"interval_s": 10.0})  # what Tune saved with an experiment
    with sweep_templates(kept):
        NodeTemplates().start()
        restored.start()
    NodeTemplates().start()  # no sweep running: templates that end with the driver
    assert calls == [kept, kept, None]


def test_a_driver_looks_for_kept_templates_under_one_key(monkeypatch):
    """Kept templates are named after the driver's template key, computed once for all its sweeps and stages;
    with no keep-alive, the job's own template as before."""
    keys = iter(["k1", "k2"])
    monkeypatch.setattr(node_template, "template_key", lambda: next(keys))
    monkeypatch.setattr(node_template, "_keys", {})
    kept = {"name": "tl-ray-trial-template:{node_id}:k1", "namespace": "tl-ray", "keep_alive_s": 120.0}
    assert node_template.locator(120.0) == kept
    assert node_template.locator(120.0) == kept  # not "k2": one key per driver
    assert node_template.locator(0.0) == {"name": "tl-ray-trial-template:{node_id}", "namespace": None,
                                          "keep_alive_s": 0.0}


def _run_sweep_until_tuner(tmp_path, start_templates: str) -> str:
    """Runs ``run_sweep`` in a fresh interpreter, with ``start_templates`` as the nodes' template start, up
    to ``run_tuner``; returns what the child printed."""
    import subprocess
    import sys

    spec = {"name": "order", "storage": str(tmp_path), "data": {"train": "datasets/train"},
            "model": {"backbone": "mobilenet_v2", "weights": "none"},
            "tune": {"space": {"train.learning_rate": "loguniform(1e-4, 1e-2)"}}}
    code = (
        "import sys\n"
        "from tl_ray.spec import validate\n"
        "from tl_ray.train import node_template\n"
        "from tl_ray.tune import sweep\n"
        "seen = []\n"
        f"{start_templates}\n"
        "node_template.start_node_templates = start\n"
        "sweep.connect_ray = lambda spec=None: None\n"
        "class Reached(Exception): pass\n"
        "def run_tuner(*args, **kwargs): raise Reached\n"
        "sweep.run_tuner = run_tuner\n"
        "try:\n"
        f"    sweep.run_sweep(validate({spec!r}))\n"
        "except Reached:\n"
        "    print('reached run_tuner', seen)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout


def test_a_sweep_starts_the_templates_before_it_imports_tune(tmp_path):
    """The templates' TensorFlow import overlaps the driver's own import of Tune, not only Tune's start."""
    out = _run_sweep_until_tuner(tmp_path, "def start(where): seen.append('ray.tune' in sys.modules)")
    assert out.splitlines()[-1] == "reached run_tuner [False]"


def test_a_failed_early_start_leaves_the_sweep_to_its_callback(tmp_path):
    """A failed early start does not fail the sweep: it goes on to run_tuner, whose callback tries again (and
    logs why it fails)."""
    out = _run_sweep_until_tuner(tmp_path, "def start(where):\n    seen.append(1)\n    raise ConnectionError('GCS down')")
    assert out.splitlines()[-1] == "reached run_tuner [1]"


def test_a_kept_template_expires_only_idle_with_no_trial_process():
    idle_for = node_template._idle_for
    assert idle_for(60.0, used=0.0, children=0, now=60.0)
    assert not idle_for(60.0, used=0.0, children=0, now=59.9)  # asked for less than a keep-alive ago
    assert not idle_for(60.0, used=0.0, children=1, now=600.0)  # a trial process still runs
    assert not idle_for(0.0, used=0.0, children=0, now=600.0)  # not kept: ends with its driver instead


def test_the_template_key_follows_the_code_the_packages_and_the_runtime_environment(monkeypatch, tmp_path):
    """A sweep forks from a kept template only when the key matches: another job's working_dir, pip packages or
    env_vars, or other tl-ray code, make a template of their own."""
    import ray

    class Context:
        runtime_env: dict = {}

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context)
    base = node_template.template_key()
    assert node_template.template_key() == base
    Context.runtime_env = {"working_dir": "gcs://_ray_pkg_0123abcd.zip"}
    with_dir = node_template.template_key()
    Context.runtime_env = {"env_vars": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
    assert len({base, with_dir, node_template.template_key()}) == 3
    Context.runtime_env = {}
    installed = node_template._distributions()
    assert any(name.startswith("tensorflow-") for name in installed)
    upgraded = [name.replace("numpy-", "numpy-0.0.") for name in installed]
    monkeypatch.setattr(node_template, "_distributions", lambda: upgraded)
    assert node_template.template_key() != base
    # The code: every module of the package the template imported from.
    package = tmp_path / "tl_ray"
    (package / "train").mkdir(parents=True)
    (package / "train" / "node_template.py").write_text("")
    (package / "loop.py").write_text("EPOCHS = 1\n")
    monkeypatch.setattr(node_template, "__file__", str(package / "train" / "node_template.py"))
    before = node_template.template_key()
    (package / "loop.py").write_text("EPOCHS = 2\n")
    assert node_template.template_key() != before
