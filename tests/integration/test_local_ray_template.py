"""A sweep that starts its own local Ray forks its trials from the template the driver started before Ray
(tl_ray.train.driver_template), whose start-up output does not reach the driver's terminal, with no
NodeTemplate actor on the node; once that template has ended, the next sweep starts the node's actor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

DRIVER = textwrap.dedent("""
    import json, os, sys
    import psutil, ray
    from ray.util import list_named_actors
    from tl_ray.spec import validate
    from tl_ray.train import driver_template, node_template
    from tl_ray.tune.sweep import run_sweep

    spec = validate(json.loads(sys.argv[1]))
    result = run_sweep(spec, experiment="early")
    info = driver_template.info()
    node_actors = [a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith("tl-ray-trial")]
    published = driver_template.lookup(ray.get_runtime_context().get_node_id())  # what this job's actors find
    template = psutil.Process(info["pid"])
    # Fork servers among this driver's descendants (Ray's workers' own templates), other than its template and
    # the trial processes forked from it (which carry its command line).
    others = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if info["pid"] not in (proc.pid, proc.ppid()) and "forkserver" in " ".join(proc.cmdline()):
                others.append(proc.pid)
        except psutil.Error:  # ended meanwhile
            pass
    print("RESULT " + json.dumps({
        "driver": os.getpid(), "template": info["pid"], "template_parent": template.ppid(),
        "template_log": info["log"], "log_exists": os.path.exists(info["log"]),
        "statuses": [r.status for r in result.rows],
        "node_actors": node_actors, "actor_templates": others, "published": published and published["pid"],
    }))
    # The driver's template ended: the next sweep starts the node's actor, and forks from the actor's template.
    driver_template.stop()
    unpublished = driver_template.lookup(ray.get_runtime_context().get_node_id()) is None
    later = run_sweep(spec, experiment="later")
    named = [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith("tl-ray-trial")]
    status = ray.get(ray.get_actor(named[0]["name"], namespace=named[0]["namespace"]).status.remote())
    print("LATER " + json.dumps({"statuses": [r.status for r in later.rows], "actors": len(named),
                                 "unpublished": unpublished,
                                 "actor_template": status["pid"]}))
    node_template.stop_kept_templates()
""")


def test_a_sweep_on_a_new_local_ray_forks_its_trials_from_the_template_its_driver_started(tmp_path, fashion_dir):
    from tl_ray.data.ingest import ingest_fashion_mnist

    store = tmp_path / "store"
    ingest_fashion_mnist(str(store / "datasets/d/train"), path=str(fashion_dir), classes=[0, 1], per_class=20,
                         validation_to=str(store / "datasets/d/val"), validation_per_class=10)
    spec = {
        "name": "early",
        "storage": str(store),
        "data": {"train": "datasets/d/train", "validation": "datasets/d/val"},
        "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "none",
                  "freeze": {"mode": "feature_extraction"}, "head": {"dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 20, "steps_per_epoch": 1},
        "tune": {"num_samples": 1, "scheduler": "fifo", "max_concurrent_trials": 2,
                 "space": {"train.learning_rate": "grid([0.001, 0.002])"}},
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the driver starts a local Ray
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert out["statuses"] == ["DONE", "DONE"]
    assert out["template_parent"] == out["driver"]  # the driver's own child, started before Ray
    experiment = store / "experiments" / "early"
    epochs = [json.loads(l) for trial in experiment.glob("tune_trial_*")
              for l in (trial / "result.json").read_text().splitlines() if l.strip()]
    assert len(epochs) == 4 and {e["template_pid"] for e in epochs} == {out["template"]}
    assert out["node_actors"] == []  # the driver's template served the node: no NodeTemplate actor
    assert out["published"] == out["template"]  # found in Ray's key-value store by this job
    assert out["actor_templates"] == []  # no second template imported TensorFlow
    # Its output went to its log while the driver ran; the log went with the driver.
    assert out["log_exists"] and not os.path.exists(out["template_log"])
    later = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("LATER "))[len("LATER "):])
    assert later["unpublished"]  # stopped: no actor finds it any more
    assert later["statuses"] == ["DONE", "DONE"] and later["actors"] == 1
    epochs = [json.loads(l) for trial in (store / "experiments" / "later").glob("tune_trial_*")
              for l in (trial / "result.json").read_text().splitlines() if l.strip()]
    assert len(epochs) == 4 and {e["template_pid"] for e in epochs} == {later["actor_template"]}
    assert later["actor_template"] != out["template"]
