"""The report's status column from the trial folders alone (no experiment state Tune saved)."""

from __future__ import annotations

import json

from tl_ray.tune.report import build_report


def _trial(root, name: str, epochs: int, error: bool) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps({"model.head.dropout": 0.1}))
    rows = [{"training_iteration": e, "val_accuracy": 0.5 + e / 100, "time_total_s": float(e)}
            for e in range(1, epochs + 1)]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if error:
        (folder / "error.txt").write_text("Failure # 1\nRuntimeError: worker died\n")


def test_without_tunes_state_a_failed_trial_short_of_its_epochs_is_an_error_and_a_recovered_one_is_done(tmp_path):
    exp = tmp_path / "exp"
    _trial(exp, "tune_trial_a1b2c_00000_0", epochs=3, error=False)
    _trial(exp, "tune_trial_a1b2c_00001_1", epochs=1, error=True)  # failed, never trained its 3 epochs
    _trial(exp, "tune_trial_a1b2c_00002_2", epochs=3, error=True)  # failed once, restarted, finished
    _trial(exp, "tune_trial_a1b2c_00003_3", epochs=1, error=False)  # stopped early by the scheduler
    report = build_report(str(exp), "val_accuracy", "max", planned_epochs=3)
    status = {line.split()[0]: " ".join(line.split()[5:]) for line in report.table.splitlines()[1:]}
    assert status == {"a1b2c_00000": "done", "a1b2c_00001": "error", "a1b2c_00002": "done",
                      "a1b2c_00003": "stopped early"}
    assert (exp / "report" / "trials.txt").read_text().strip() == report.table
