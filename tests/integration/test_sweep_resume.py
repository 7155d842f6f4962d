"""`tl-ray tune SPEC --resume` after Ctrl-C (SIGINT to the driver's process group) for a staged
sweep interrupted in its second stage and for an Optuna sweep interrupted after some trials
finished: finished trials are not run again, the interrupted trial continues from its checkpoint,
the sweep completes, and an Optuna sweep keeps its searcher's history and trial count."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

TIMEOUT_S = 600


def ingest(store: Path, fashion_dir: Path) -> dict:
    from tl_ray.data.ingest import ingest_fashion_mnist

    ingest_fashion_mnist(str(store / "datasets/r/train"), path=str(fashion_dir), classes=[0, 1], per_class=40,
                         validation_to=str(store / "datasets/r/val"), validation_per_class=20)
    return {"train": "datasets/r/train", "validation": "datasets/r/val"}


def trial_results(experiment: Path) -> dict[str, list[dict]]:
    """Trial folder name -> the rows of its result.json (folders without one are left out)."""
    out = {}
    for trial in sorted(experiment.glob("*_trial_*")):
        path = trial / "result.json"
        if trial.is_dir() and path.is_file():
            out[trial.name] = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return out


def trial_id(folder: str) -> str:
    """Tune's trial id from a trial folder name (tune_trial_ID_N_... or stage_trial_ID_N_...)."""
    return re.match(r"^(?:tune|stage)_trial_([0-9a-f]+(?:_\d{5})?)_", folder).group(1)


def epochs(rows: list[dict]) -> list[int]:
    return [r["epoch"] for r in rows]


def results_table(stdout: str) -> tuple[list[str], dict[str, list[str]]]:
    """(header, rows by trial id) of the results table `tl-ray tune` prints before its best trial."""
    lines = stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("[tune] best trial"))
    start = max(i for i, line in enumerate(lines[:end]) if line.split()[:1] == ["trial"])
    return lines[start].split(), {line.split()[0]: line.split() for line in lines[start + 1:end] if line.strip()}


def saved_statuses(experiment: Path) -> list[str]:
    from tl_ray.tune.interrupt import saved_trial_statuses

    return sorted(saved_trial_statuses(str(experiment)).values())


class Sweep:
    """`tl-ray tune SPEC` in its own process group, output in files (a full pipe would stall it)."""

    def __init__(self, tmp_path: Path, spec_path: Path, hooks: Path):
        from tl_ray.testing import ENV

        self.spec_path = spec_path
        self.env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **{ENV: str(hooks)})
        self.cmd = [sys.executable, "-m", "tl_ray.cli", "tune", str(spec_path)]
        self.out_path, self.err_path = tmp_path / "first.out", tmp_path / "first.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err, env=self.env, start_new_session=True)

    def wait_for(self, condition, what: str) -> None:
        """Polls ``condition`` until it holds; fails if the sweep exits or the time runs out."""
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            assert self.proc.poll() is None, f"the sweep exited before {what}:\n" + self.err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting until {what}"
            time.sleep(0.1)

    def ctrl_c(self) -> tuple[str, str]:
        """SIGINT to the whole process group, as Ctrl-C in a terminal; returns (stdout, stderr)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(timeout=TIMEOUT_S)
        stdout, stderr = self.out_path.read_text(), self.err_path.read_text()
        assert self.proc.returncode == 130, stdout[-3000:] + stderr[-3000:]
        return stdout, stderr

    def resume(self) -> str:
        second = subprocess.run(self.cmd + ["--resume"], capture_output=True, text=True, env=self.env,
                                timeout=TIMEOUT_S)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        return second.stdout

    def interrupt_message(self, stderr: str) -> str:
        message = [line for line in stderr.splitlines() if line.startswith("SweepInterrupted:")]
        assert len(message) == 1, stderr[-3000:]
        assert message[0].endswith(f"Resume it with: tl-ray tune {self.spec_path} --resume")
        return message[0]


def test_staged_sweep_interrupted_in_its_second_stage_resumes_without_rerunning_the_first(tmp_path, fashion_dir):
    store = tmp_path / "store"
    name = "staged-resume"
    spec = {
        "name": name,
        "storage": str(store),
        "data": ingest(store, fashion_dir),
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "head": {"dropout": 0.0}},
        "train": {"batch_size": 20, "steps_per_epoch": 2},
        # Learning rates too small to move any prediction in two steps: both heads score the same,
        # and the tie decides which goes on. One trial at a time, so the second head reports last and
        # comes first in the resumed sweep's rows (Tune restores trials newest result first).
        # Every epoch checkpointed, so the held trial resumes from epoch 2 (improvement would keep epoch 1).
        "tune": {
            "num_samples": 1, "scheduler": "fifo", "max_concurrent_trials": 1, "checkpoint_on": "every",
            "space": {"train.learning_rate": "grid([1.0e-6, 2.0e-6])"},
            "stages": [
                {"name": "heads", "freeze": {"mode": "feature_extraction"}, "epochs": 1},
                {"name": "top", "freeze": {"mode": "fine_tune", "unfreeze_top": 10}, "epochs": 3, "keep": 0.5,
                 "lr_factor": 0.1},
            ],
        },
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    hooks = tmp_path / "hooks"
    (hooks / name).mkdir(parents=True)
    # Heads train one epoch, so only the second stage's trial reaches epoch 2: the hook holds it there.
    (hooks / name / "pause_after_epoch").write_text("2")

    sweep = Sweep(tmp_path, spec_path, hooks)
    sweep.wait_for((hooks / name / "pid.0").exists, "the second stage's trial reached epoch 2")
    _, stderr = sweep.ctrl_c()
    (folder,) = list((store / "experiments").glob(f"{name}-*"))
    heads, top = folder / "heads", folder / "top"
    message = sweep.interrupt_message(stderr)
    assert f"sweep {folder.name!r} was interrupted in its stage 'top' with 1 trial(s) unfinished" in message
    assert str(top) in message

    heads_before, top_before = trial_results(heads), trial_results(top)
    assert len(heads_before) == 2 and all(epochs(rows) == [1] for rows in heads_before.values())
    assert saved_statuses(heads) == ["TERMINATED", "TERMINATED"]
    (held,) = top_before
    assert epochs(top_before[held]) == [1, 2]
    parent = top_before[held][0]["config"]["stage.parent"]
    scores = {rows[-1]["trial_id"]: rows[-1]["val_accuracy"] for rows in heads_before.values()}
    assert len(set(scores.values())) == 1 and parent == min(scores)  # keep 0.5 of two tied heads: the first

    stdout = sweep.resume()
    assert f"resuming {folder}" in stdout
    # The first stage was not run again: the same two trials, with the same single epoch each.
    assert trial_results(heads) == heads_before
    assert saved_statuses(heads) == ["TERMINATED", "TERMINATED"]
    # The second stage finished: its trial, from the same parent, continued from its epoch-2 checkpoint.
    top_after = trial_results(top)
    assert list(top_after) == [held]
    assert top_after[held][: len(top_before[held])] == top_before[held]
    assert epochs(top_after[held]) == [1, 2, 3]
    assert top_after[held][-1]["config"]["stage.parent"] == parent
    assert saved_statuses(top) == ["TERMINATED"]

    # The sweep's table and `tl-ray report` list both stages.
    head_ids = [trial_id(t) for t in heads_before]
    top_id = trial_id(held)
    header, rows = results_table(stdout)
    assert header[:3] == ["trial", "stage", "from"]
    assert set(rows) == {*head_ids, top_id}
    assert all(rows[t][1:3] == ["heads", "-"] for t in head_ids)
    assert rows[top_id][1:3] == ["top", parent] and rows[top_id][-2:] == ["3", "DONE"]

    report = subprocess.run([sys.executable, "-m", "tl_ray.cli", "report", folder.name, "--storage", str(store)],
                            capture_output=True, text=True, env=sweep.env, timeout=TIMEOUT_S)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    lines = report.stdout.splitlines()
    assert lines[0].split()[:2] == ["trial", "stage"]
    listed = {line.split()[0]: line.split() for line in lines[1:] if line.strip() and not line.startswith("wrote ")}
    assert set(listed) == {*head_ids, top_id}
    assert all(listed[t][1] == "heads" and listed[t][-3] == "1" for t in head_ids)
    assert listed[top_id][1] == "top" and listed[top_id][-3] == "3" and listed[top_id][-1] == "done"


def load_searcher(experiment: Path, name: str | None = None):
    """The Optuna searcher Tune saved in the experiment folder (the newest, or the file ``name``)."""
    path = experiment / name if name else max(experiment.glob("searcher-state-*.pkl"))
    with open(path, "rb") as f:
        return pickle.load(f)


def test_optuna_sweep_resumes_with_its_searcher_history_and_trial_count(tmp_path, fashion_dir):
    import optuna

    store = tmp_path / "store"
    name = "optuna-resume"
    num_samples = 3
    spec = {
        "name": name,
        "storage": str(store),
        "data": ingest(store, fashion_dir),
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "freeze": {"mode": "full"}, "head": {"dropout": 0.0}},
        "train": {"epochs": 2, "batch_size": 20, "steps_per_epoch": 2},
        "tune": {"num_samples": num_samples, "scheduler": "fifo", "search": "optuna", "seed": 7, "checkpoint_on": "every",
                 "max_concurrent_trials": 1,
                 "space": {"train.learning_rate": "loguniform(0.0005, 0.005)",
                           "model.head.dropout": "uniform(0.0, 0.3)"}},
    }
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    hooks = tmp_path / "hooks"
    (hooks / name).mkdir(parents=True)
    experiments = store / "experiments"

    def first_trial_past_epoch_1() -> bool:
        # Its epoch-2 checkpoint is written after its epoch-1 report has passed the hook.
        return any(experiments.glob(f"{name}-*/tune_trial_*/checkpoint_000001"))

    sweep = Sweep(tmp_path, spec_path, hooks)
    sweep.wait_for(first_trial_past_epoch_1, "the first trial reached epoch 2")
    # Optuna's trial ids are random, so the hold is armed now: the next trial to report epoch 1
    # (one trial runs at a time) is held there, mid-way, after the first trial finished.
    (hooks / name / "pause_after_epoch").write_text("1")
    sweep.wait_for((hooks / name / "pid.0").exists, "a later trial reached epoch 1")
    _, stderr = sweep.ctrl_c()
    (experiment,) = list(experiments.glob(f"{name}-*"))

    before = trial_results(experiment)
    finished = {k: v for k, v in before.items() if epochs(v) == [1, 2]}
    (held,) = [k for k in before if k not in finished]
    assert epochs(before[held]) == [1]
    assert 1 <= len(finished) and len(before) < num_samples  # some finished, some not created yet
    message = sweep.interrupt_message(stderr)
    assert f"interrupted with {num_samples - len(finished)} trial(s) unfinished" in message
    ids_before = {k: v[0]["trial_id"] for k, v in before.items()}

    # What the interrupted sweep's searcher knew: the finished trials told, the held one asked.
    saved_before = {p.name for p in experiment.glob("searcher-state-*.pkl")}
    searcher = load_searcher(experiment)
    assert set(searcher["_ot_trials"]) == set(ids_before.values())
    history = {t.number: t for t in searcher["_ot_study"].trials}
    told = {tid: searcher["_ot_trials"][tid].number for tid in (ids_before[k] for k in finished)}
    assert all(history[n].state == optuna.trial.TrialState.COMPLETE for n in told.values())

    stdout = sweep.resume()
    assert f"resuming {experiment}" in stdout
    after = trial_results(experiment)
    # The resumed sweep ran num_samples trials in all, not num_samples more than were created.
    assert len(after) == num_samples and all(epochs(rows) == [1, 2] for rows in after.values())
    assert saved_statuses(experiment) == ["TERMINATED"] * num_samples
    for k in finished:  # finished trials were not run again
        assert after[k] == before[k]
    # The held trial continued from its epoch-1 checkpoint.
    assert after[held][: len(before[held])] == before[held] and epochs(after[held][len(before[held]):]) == [2]
    ids = {k: v[0]["trial_id"] for k, v in after.items()}
    _, rows = results_table(stdout)
    assert set(rows) == set(ids.values()) and all(r[-2:] == ["2", "DONE"] for r in rows.values())

    # The resumed searcher continued the interrupted one's history: every trial, the earlier ones
    # under the same Optuna trial with the same parameters and value, and each new trial suggested by it.
    (resumed_file,) = {p.name for p in experiment.glob("searcher-state-*.pkl")} - saved_before
    resumed = load_searcher(experiment, resumed_file)
    assert set(resumed["_ot_trials"]) == set(ids.values())
    study = resumed["_ot_study"]
    assert len(study.trials) == num_samples
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    by_number = {t.number: t for t in study.trials}
    for k, rows in after.items():
        ot = by_number[resumed["_ot_trials"][ids[k]].number]
        assert ot.params == pytest.approx(rows[0]["config"])  # the trial ran what Optuna suggested
        assert ot.value == pytest.approx(rows[-1]["val_accuracy"])  # and Optuna was told its result
    for tid, number in told.items():
        assert resumed["_ot_trials"][tid].number == number
        assert by_number[number].params == history[number].params and by_number[number].value == history[number].value
