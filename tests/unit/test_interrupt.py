"""An interrupted sweep (Ctrl-C) is told from a finished one, ends the command with
code 130 and the exact resume command, and is never promoted from (no Ray here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_ray.cli import main
from tl_ray.spec import load_spec
from tl_ray.tune.interrupt import SweepInterrupted, count_unfinished

MINIMAL = Path(__file__).resolve().parents[1] / "data" / "specs" / "good" / "minimal.yaml"


@pytest.mark.parametrize(
    "statuses, unfinished",
    [
        (["TERMINATED"] * 3, 0),
        (["TERMINATED", "ERROR", "TERMINATED"], 0),  # errors are settled, not interrupted
        (["TERMINATED", "RUNNING", "PENDING"], 2),
        (["TERMINATED"], 2),  # interrupted before Tune created the other grid points
    ],
)
def test_count_unfinished(statuses, unfinished):
    spec = load_spec(MINIMAL, overrides=["tune.num_samples=1", "tune.space={train.learning_rate: 'grid([0.1, 0.2, 0.3])'}"])
    assert count_unfinished(spec, statuses) == unfinished


@pytest.fixture
def interrupted_sweep(monkeypatch):
    """run_sweep stops as after Ctrl-C; promotion fails the test if reached."""
    from tl_ray import pipeline
    from tl_ray.tune import sweep

    def run_sweep(spec, resume=False, experiment=None):
        raise SweepInterrupted(experiment, f"/store/experiments/{experiment}", 2)

    def promote_row(*args, **kwargs):
        raise AssertionError("promoted from an interrupted sweep")

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    monkeypatch.setattr(sweep, "preflight", lambda spec: None)  # the spec's dataset does not exist here
    monkeypatch.setattr(pipeline, "promote_row", promote_row)
    for name in ("ensure_ray", "ensure_data", "ensure_upstream"):
        monkeypatch.setattr(pipeline, name, lambda *a, **k: None)
    monkeypatch.setattr(pipeline.store, "ensure_bucket", lambda uri: None)


def test_tune_exits_130_with_the_resume_command(interrupted_sweep, capsys):
    code = main(["tune", str(MINIMAL), "--set", "train.epochs=3", "--promote"])
    err = capsys.readouterr().err
    assert code == 130
    (line,) = [l for l in err.splitlines() if l.strip()]
    assert line.startswith("SweepInterrupted: sweep 'minimal-") and "was interrupted with 2 trial(s) unfinished" in line
    assert line.endswith(f"Resume it with: tl-ray tune {MINIMAL} --set train.epochs=3 --resume --promote")


def test_run_does_not_promote_from_an_interrupted_sweep(interrupted_sweep, capsys):
    code = main(["run", str(MINIMAL)])
    err = capsys.readouterr().err
    assert code == 130
    assert f"Resume it with: tl-ray tune {MINIMAL} --resume --promote" in err


def test_an_interrupted_stage_is_named_with_its_sweep_and_survives_pickling():
    import pickle

    exc = SweepInterrupted("sweep-1", "/store/experiments/sweep-1/top", 1, stage="top")
    assert str(exc).startswith("sweep 'sweep-1' was interrupted in its stage 'top' with 1 trial(s) unfinished")
    again = pickle.loads(pickle.dumps(exc))  # Ray carries it from a worker as a pickle
    assert str(again) == str(exc) and again.stage == "top"
