"""The report of a many-trial sweep: the top trials in the table and the curves, every trial in trials.csv."""

from __future__ import annotations

import csv
import json
import random

import matplotlib.axes
import pytest

from tl_ray.errors import ConfigError
from tl_ray.tune.report import build_report


def many_trials(root, n: int, seed: int = 0) -> None:
    """``n`` trial folders as Tune writes them: three searched parameters, 2 to 6 epochs of val_accuracy."""
    rng = random.Random(seed)
    for i in range(n):
        params = {"model.head.dense": rng.choice([[32], [64], [128], [256]]),
                  "model.head.dropout": rng.uniform(0.0, 0.5), "train.learning_rate": 10 ** rng.uniform(-3.5, -2.5)}
        quality = 0.45 + 0.06 * rng.random() - 0.1 * params["model.head.dropout"] ** 2
        epochs = rng.choice([2, 2, 2, 4, 6])
        rows = [{"training_iteration": e, "val_accuracy": quality + 0.01 * e, "time_total_s": 0.4 * e,
                 "timestamp": 1_800_000_000 + i + 0.1 * e} for e in range(1, epochs + 1)]
        folder = root / f"tune_trial_ab12c_{i:05d}_{i}_dense={i}"
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps(params))
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_500_trial_report_lists_the_top_k_and_writes_every_trial_to_csv(tmp_path):
    exp = tmp_path / "exp"
    many_trials(exp, 500)
    report = build_report(str(exp), "val_accuracy", "max", planned_epochs=6)
    lines = report.table.splitlines()
    assert len(lines) == 1 + 20 + 1  # header, the best 20, a line counting the rest
    assert "the best 20 of 500 trials" in lines[-1] and "every trial in trials.csv" in lines[-1]
    best = [float(line.split()[-4]) for line in lines[1:-1]]
    assert best == sorted(best, reverse=True)
    with open(exp / "report" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 500 and len({r["trial"] for r in rows}) == 500
    assert float(rows[0]["best val_accuracy"]) == pytest.approx(best[0], abs=1e-4)
    names = {f.rsplit("/", 1)[-1] for f in report.files}
    assert names == {"trials.txt", "trials.csv", "objective.png", "learning_curves.png", "params.png",
                     "parallel.png"}
    assert all((exp / "report" / name).stat().st_size > 10_000 for name in names if name.endswith(".png"))


def test_learning_curves_draw_the_top_k_only(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    many_trials(exp, 60)
    labels = []
    real_plot = matplotlib.axes.Axes.plot

    def plot(ax, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return real_plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    report = build_report(str(exp), "val_accuracy", "max", top=5)
    curves = [label for label in labels if label and label.startswith("ab12c_")]
    assert len(curves) == 5
    assert [line.split()[0] for line in report.table.splitlines()[1:6]] == [c.split()[0] for c in curves]


def test_a_resumed_trials_repeated_epochs_count_once(tmp_path):
    """Restored from its epoch-2 checkpoint after the driver died at epoch 3, a trial reports epochs 3 and 4
    again in the same result.json: one trial, 4 epochs, the later rows kept."""
    exp = tmp_path / "exp"
    many_trials(exp, 3)
    (trial,) = [p for p in exp.iterdir() if p.name.startswith("tune_trial_ab12c_00001")]
    rows = [{"training_iteration": e, "val_accuracy": v, "time_total_s": float(e)}
            for e, v in [(1, 0.3), (2, 0.4), (3, 0.9), (3, 0.5), (4, 0.6)]]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(str(exp), "val_accuracy", "max", planned_epochs=4)
    assert len(report.trials) == 3
    (resumed,) = [t for t in report.trials if t.name == "ab12c_00001"]
    assert [r["training_iteration"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.best("val_accuracy", "max") == 0.6


def test_top_must_be_positive(tmp_path):
    many_trials(tmp_path / "exp", 2)
    with pytest.raises(ConfigError, match="top must be at least 1. Received: 0"):
        build_report(str(tmp_path / "exp"), "val_accuracy", "max", top=0)


def test_tl_ray_report_takes_top(tmp_path, capsys):
    from tl_ray.cli import main

    many_trials(tmp_path / "exp", 30)
    assert main(["report", str(tmp_path / "exp"), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "the best 5 of 30 trials" in out and out.count("wrote ") == 6


def test_after_a_resume_folders_outside_tunes_saved_state_are_not_counted(tmp_path, monkeypatch):
    """A driver killed after creating trials it had not saved leaves their folders, and the resumed sweep runs
    others in their place; under random search those carry the same ids ("<hex>_<index>") in new folders."""
    from tl_ray.tune import report as report_module

    exp = tmp_path / "exp"
    saved = ("tune_trial_1a2b3c4d_1_x", "tune_trial_5e6f7a8b_2_x", "tune_trial_ab12c_00003_3_x_2026-12-04_20-52-01")
    for name in (*saved, "tune_trial_9c0d1e2f_3_x", "tune_trial_ab12c_00003_3_x_2026-12-04_20-51-58"):
        (exp / name).mkdir(parents=True)
        (exp / name / "params.json").write_text(json.dumps({"model.head.dropout": 0.1}))
    for name in saved:
        (exp / name / "result.json").write_text(json.dumps({"training_iteration": 1, "val_accuracy": 0.5}) + "\n")
    monkeypatch.setattr(report_module, "_saved_statuses",
                        lambda uri, listing: dict(zip(saved, ("TERMINATED", "ERROR", "TERMINATED"))))
    report = build_report(str(exp), "val_accuracy", "max", planned_epochs=1)
    assert sorted(t.name for t in report.trials) == ["1a2b3c4d_1", "5e6f7a8b_2", "ab12c_00003"]
    assert {line.split()[0]: line.split()[-1] for line in report.table.splitlines()[1:4]} == {
        "1a2b3c4d_1": "done", "5e6f7a8b_2": "error", "ab12c_00003": "done"}  # the saved status of each folder
    assert report.table.splitlines()[-1].startswith("(2 trial folder(s) not in Tune's saved state")
