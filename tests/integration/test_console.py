"""What a user sees when every trial fails the same way: `tl-ray train` in a process of its own (its own local
Ray), a spec whose trials raise a ConfigError that only a trial meets (class weights for a class the dataset
lacks), on one worker and on two Ray Train workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import kill_group
from tiny_specs import write_tiny_spec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("workers", [1, 2])
def test_a_deterministic_trial_error_stops_the_sweep_once_with_its_cause_and_the_log(tmp_path, fashion_dir, workers):
    path, store = write_tiny_spec(tmp_path, fashion_dir, "fails", per_class=20, batch_size=10, steps_per_epoch=1,
                                  max_failures=2, class_weights={5: 2.0}, workers=workers)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "TLRAY_VERBOSE")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "tl_ray", "train", str(path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
    assert proc.returncode == 2, f"{out}\n{err}"  # ConfigError's exit code
    cause = [line for line in err.splitlines() if line.startswith("ConfigError: train.class_weights")]
    assert len(cause) == 1 and (out + err).count("train.class_weights names classes [5]") == 1, f"{out}\n{err}"
    (experiment,) = (store / "experiments").glob("fails-*")  # (2 workers: Ray Train's runs are in "train")
    log = experiment / "tl-ray.log"
    assert f"its traceback is in {log}" in cause[0]
    assert f"full log {log}" in out
    assert "Traceback" not in out + err
    text = log.read_text()
    assert "Traceback" in text and "ConfigError: train.class_weights" in text
    (trial,) = [p for p in experiment.iterdir() if p.name.startswith("tune_trial_")]
    assert (trial / "error.txt").read_text().count("Failure #") == 1  # not retried (train.max_failures: 2)
    # The workers' own output is in the log (the trial's process, and for 2 workers the Ray Train workers).
    assert "tl_ray.workers: (tune_trial pid=" in text
    if workers > 1:  # Ray Train raised at once, leaving the retries to Tune (which FailFast stopped)
        assert "(RayTrainWorker pid=" in text and "[FailurePolicy] RAISE" in text
        assert "[FailurePolicy] RETRY" not in text
