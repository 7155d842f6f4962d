"""A sweep whose driver process is killed (a real SIGKILL) or interrupted (SIGINT, as
Ctrl-C sends) is continued by `tl-ray tune SPEC --resume`: finished trials are not
rerun and the sweep completes."""

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


def saved_statuses(experiment: Path) -> dict[str, str]:
    """Each trial's status in the experiment state the driver saved last, by folder name; empty before its first
    save (or while it is being written)."""
    from tl_ray.tune.interrupt import saved_trial_statuses

    try:
        return saved_trial_statuses(str(experiment))
    except Exception:  # noqa: BLE001 - not saved yet
        return {}


def write_spec(tmp_path: Path, fashion_dir: Path, epochs: int) -> tuple[Path, Path]:
    """A three-trial grid sweep run one trial at a time; returns (spec path, store)."""
    from tl_ray.data.ingest import ingest_fashion_mnist

    store = tmp_path / "store"
    ingest_fashion_mnist(str(store / "datasets/r/train"), path=str(fashion_dir), classes=[0, 1], per_class=40,
                         validation_to=str(store / "datasets/r/val"), validation_per_class=20)
    spec = {
        "name": "resumable",
        "storage": str(store),
        "data": {"train": "datasets/r/train", "validation": "datasets/r/val"},
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "freeze": {"mode": "full"}, "head": {"dropout": 0.0}},
        "train": {"epochs": epochs, "batch_size": 20, "steps_per_epoch": 2},
        "tune": {"num_samples": 1, "scheduler": "fifo", "max_concurrent_trials": 1, "checkpoint_on": "every",
                 "space": {"train.learning_rate": "grid([0.001, 0.002, 0.003])"}},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return spec_path, store


def test_killed_sweep_driver_resumes_without_rerunning_finished_trials(tmp_path, fashion_dir):
    spec_path, store = write_spec(tmp_path, fashion_dir, epochs=2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "tl_ray.cli", "tune", str(spec_path)]
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    experiments = store / "experiments"
    deadline = time.monotonic() + 600
    finished: dict[str, list[dict]] = {}
    # Until the driver has saved a trial as finished (TERMINATED in Tune's experiment state): a trial whose last
    # epoch is in its results but not yet in that state is resumed from its last checkpoint, as Tune does.
    while not finished:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        for exp in experiments.glob("resumable-*") if experiments.exists() else []:
            saved = saved_statuses(exp)
            finished = {k: v for k, v in trial_results(exp).items() if saved.get(k) == "TERMINATED"}
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
    # The report: each trial once, all done (a folder the killed driver left unsaved is not counted).
    report = [line for line in (experiment / "report" / "trials.txt").read_text().splitlines()[1:]
              if not line.startswith("(")]
    saved = saved_statuses(experiment)
    assert sorted(line.split()[0] for line in report) == sorted(
        n.split("_")[2] + "_" + n.split("_")[3] for n in after if n in saved)
    assert len(report) == 3 and all(line.split()[-1] == "done" for line in report)


def test_ctrl_c_stops_the_sweep_says_how_to_resume_and_resume_completes_it(tmp_path, fashion_dir):
    from tl_ray.testing import ENV

    epochs = 3
    spec_path, store = write_spec(tmp_path, fashion_dir, epochs=epochs)
    hooks = tmp_path / "hooks"
    (hooks / "resumable").mkdir(parents=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{ENV: str(hooks)})
    cmd = [sys.executable, "-m", "tl_ray.cli", "tune", str(spec_path)]
    out_path, err_path = tmp_path / "first.out", tmp_path / "first.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:  # files: a full pipe would stall the sweep
        first = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)

    # Interrupt the last trial mid-way, where only Tune's saved state tells the sweep is unfinished
    # (Tune marks the trials it stops TERMINATED in memory): the hook holds the third trial (trials
    # run one at a time) once it has reported epoch 2.
    (hooks / "resumable" / "pause_after_epoch").write_text("2 _00002")
    experiments = store / "experiments"
    deadline = time.monotonic() + 600
    held = hooks / "resumable" / "pid.0"
    while not held.exists():
        assert first.poll() is None, err_path.read_text()[-3000:]
        assert time.monotonic() < deadline, "the third trial never reached epoch 2"
        time.sleep(0.1)
    # Ctrl-C in a terminal signals the whole foreground process group.
    os.killpg(first.pid, signal.SIGINT)
    first.wait(timeout=600)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    (experiment,) = list(experiments.glob("resumable-*"))
    assert first.returncode == 130, stdout[-3000:] + stderr[-3000:]
    message = [line for line in stderr.splitlines() if line.startswith("SweepInterrupted:")]
    assert len(message) == 1, stderr[-3000:]
    assert f"sweep {experiment.name!r} was interrupted with 1 trial(s) unfinished" in message[0]
    assert message[0].endswith(f"Resume it with: tl-ray tune {spec_path} --resume")
    assert "[tune] best trial" not in stdout  # no results table, no promotion from a partial sweep
    before = trial_results(experiment)
    finished = {k: v for k, v in before.items() if v and v[-1]["epoch"] == epochs}
    (held_trial,) = [k for k in before if k not in finished]
    assert len(finished) == 2 and before[held_trial][-1]["epoch"] == 2

    second = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming {experiment}" in second.stdout
    after = trial_results(experiment)
    assert len(after) == 3 and all(v and v[-1]["epoch"] == epochs for v in after.values())
    for name in finished:  # finished trials were not run again
        assert after[name] == before[name]
    # The held trial continued from its epoch-2 checkpoint (the hook lets a restarted worker through).
    assert [r["epoch"] for r in after[held_trial][len(before[held_trial]):]] == [3]


def test_a_searched_dataset_that_is_missing_fails_before_any_trial_starts(tmp_path, fashion_dir):
    """One of two validation datasets the space lists does not exist, which no retry would fix: `tl-ray tune`
    exits 3 with the cause on one line, before it starts Ray or any trial."""
    spec_path, store = write_spec(tmp_path, fashion_dir, epochs=1)
    spec = yaml.safe_load(spec_path.read_text())
    spec["tune"]["space"] = {"data.validation": "grid([datasets/r/val, datasets/r/missing])"}
    spec_path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-m", "tl_ray.cli", "tune", str(spec_path)], capture_output=True,
                         text=True, env=env, timeout=900)
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr[-3000:]
    (error_line,) = [line for line in run.stderr.splitlines() if "datasets/r/missing" in line]
    assert error_line.startswith("DataError: ")
    assert not list((store / "experiments").glob("resumable-*"))  # no sweep started
    assert "[tune]" not in run.stdout and "Traceback" not in run.stdout + run.stderr
