"""Starting the trial templates on the nodes: ``run_sweep`` starts them before it imports Tune, and a failure
there leaves them to the sweep's callback, which starts them at the sweep's start, then at most every
``interval_s`` for nodes that join, never failing the sweep, and checking at once after a resume."""

from __future__ import annotations

import logging
import pickle

from tl_ray.train import node_template
from tl_ray.tune.templates import NodeTemplates


def test_nodes_are_checked_at_most_every_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(node_template, "start_node_templates", lambda: calls.append(1))
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
    def unreachable():
        raise ConnectionError("GCS unreachable")

    monkeypatch.setattr(node_template, "start_node_templates", unreachable)
    with caplog.at_level(logging.WARNING, logger="tl_ray.tune.templates"):
        NodeTemplates().start()
    assert "GCS unreachable" in caplog.text and "trial actors start their own" in caplog.text


def test_a_restored_callback_checks_at_once(monkeypatch):
    calls = []
    monkeypatch.setattr(node_template, "start_node_templates", lambda: calls.append(1))
    callback = NodeTemplates(interval_s=30.0)
    callback.start()
    restored = pickle.loads(pickle.dumps(callback))  # as Tune saves the run's callbacks and a resume loads them
    assert restored.interval_s == 30.0
    restored.on_step_begin(iteration=1, trials=[])
    assert len(calls) == 2


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
        "sweep.connect_ray = lambda: None\n"
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
    out = _run_sweep_until_tuner(tmp_path, "def start(): seen.append('ray.tune' in sys.modules)")
    assert out.splitlines()[-1] == "reached run_tuner [False]"


def test_a_failed_early_start_leaves_the_sweep_to_its_callback(tmp_path):
    """A failed early start does not fail the sweep: it goes on to run_tuner, whose callback tries again (and
    logs why it fails)."""
    out = _run_sweep_until_tuner(tmp_path, "def start():\n    seen.append(1)\n    raise ConnectionError('GCS down')")
    assert out.splitlines()[-1] == "reached run_tuner [1]"
