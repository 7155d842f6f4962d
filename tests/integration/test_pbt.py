"""PBT on a real local Ray cluster: an exploiting trial continues from the donor's
checkpoint (the very weights the donor saved) with its own, mutated learning rate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tl_ray.spec import validate

pytestmark = pytest.mark.integration


def test_pbt_exploit_restores_the_donor_weights_with_the_mutated_learning_rate(ray_cluster, tmp_path, fashion_dir):
    from tl_ray.data.ingest import ingest_fashion_mnist
    from tl_ray.tune.sweep import run_sweep

    store = tmp_path / "store"
    ingest_fashion_mnist(str(store / "datasets/p/train"), path=str(fashion_dir), classes=[0, 1], per_class=40,
                         validation_to=str(store / "datasets/p/val"), validation_per_class=20)
    spec = validate({
        "name": "pbt",
        "storage": str(store),
        "data": {"train": "datasets/p/train", "validation": "datasets/p/val"},
        "model": {"backbone": "vgg16", "weights": "none",
                  "freeze": {"mode": "feature_extraction"}, "head": {"dropout": 0.0}},
        # PBT exploits only a donor that was in the top quantile at its own last report, so the trials must
        # keep their ranks from report to report. A head over a frozen VGG16 (no batch normalization) learns
        # at a pace set by its learning rate; a wholly trained MobileNetV2 of this size validated at chance
        # (its batch-norm statistics barely moved), ranked by noise, and some runs ended without an exploit.
        "train": {"epochs": 6, "batch_size": 20, "steps_per_epoch": 2, "lr_scaling": "none",
                  "feature_cache": "off"},
        "tune": {"num_samples": 4, "scheduler": "pbt", "perturbation_interval": 1, "metric": "val_loss",
                 "mode": "min", "keep_checkpoints": 0, "max_concurrent_trials": 4,
                 # Wide enough that trials separate and the worst one exploits the best.
                 "space": {"train.learning_rate": "loguniform(1e-5, 0.3)"}},
    })
    result = run_sweep(spec, experiment="pbt")
    assert len(result.rows) == 4 and all(r.status == "DONE" for r in result.rows), [r.error for r in result.rows]

    experiment = store / "experiments" / "pbt"
    rows = {}  # Tune trial id -> its result rows
    checkpoints = {}  # Tune trial id -> the state.json of every checkpoint in its folder
    for trial_dir in experiment.glob("tune_trial_*"):
        # The id from the folder name: a donor paused by PBT can end with no rows in its result.json.
        tid = re.match(r"tune_trial_([0-9a-f]+_\d+)_", trial_dir.name).group(1)
        results = [json.loads(l) for l in (trial_dir / "result.json").read_text().splitlines() if l.strip()]
        rows[tid] = results
        checkpoints[tid] = [
            json.loads((c / "state.json").read_text()) for c in trial_dir.glob("checkpoint_*")
        ]
    assert len(rows) == 4

    exploits = [(tid, r) for tid, rs in rows.items() for r in rs
                if r.get("restored_from_trial") not in (None, tid)]
    assert exploits, "no PBT exploit happened"
    for tid, row in exploits:
        donor = row["restored_from_trial"]
        # The donor wrote that checkpoint, for the epoch before the one this row reports.
        (state,) = [s for s in checkpoints[donor] if s["epoch"] == row["epoch"] - 1]
        assert state["trial_id"] == donor
        assert row["restored_weights_digest"] == state["weights_digest"]
        # The learning rate in force is the exploiting trial's new config value, not the donor's rate
        # (the one the checkpoint's optimizer state holds). Taken from the checkpoint's state: in one
        # run the donor's result.json lacked the row of that epoch.
        own_lr = row["config"]["train.learning_rate"]
        donor_lr = state["metrics"]["learning_rate"]
        assert own_lr != pytest.approx(donor_lr, rel=1e-3)  # PBT mutated it
        assert row["learning_rate"] == pytest.approx(own_lr, rel=1e-6)
