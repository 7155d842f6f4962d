"""A sweep whose driver process is killed (a real SIGKILL) is continued by
`tl-ray tune SPEC --resume`: finished trials are not rerun and the sweep completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    out = {}
    for trial in sorted(experiment.glob("tune_trial_*")):
        path = trial / "result.json"
        if path.is_file():
            out[trial.name] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return out


def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(tmp_path, fashion_dir):
    from tl_ray.data.ingest import ingest_fashion_mnist

    store = tmp_path / "store"
    ingest_fashion_mnist(str(store / "datasets/r/train"), path=str(fashion_dir), classes=[0, 1], per_class=40,
                         validation_to=str(store / "datasets/r/val"), validation_per_class=20)
    spec = {
        "name": "resumable",
        "storage": str(store),
        "data": {"train": "datasets/r/train", "validation": "datasets/r/val"},
        "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "none",
                  "freeze": {"mode": "full"}, "head": {"dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 20, "steps_per_epoch": 2},
        "tune": {"num_samples": 1, "scheduler": "fifo", "max_concurrent_trials": 1,
                 "space": {"train.learning_rate": "grid([0.001, 0.002, 0.003])"}},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "tl_ray.cli", "tune", str(spec_path)]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    experiments = store / "experiments"
    deadline = time.monotonic() + 600
    finished: dict[str, list[dict]] = {}
    while not finished:  # until one trial has reported its last epoch
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        for exp in experiments.glob("resumable-*") if experiments.exists() else []:
            finished = {k: v for k, v in trial_results(exp).items() if v and v[-1].get("epoch") == 2}
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    log.close()
    (experiment,) = list(experiments.glob("resumable-*"))
    before = trial_results(experiment)

    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming {experiment}" in second.stdout
    after = trial_results(experiment)
    assert len(after) == 3 and all(v and v[-1]["epoch"] == 2 for v in after.values())
    for name, rows in finished.items():  # finished trials were not run again
        assert after[name] == before[name]
