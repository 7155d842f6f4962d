"""Trials on a real local Ray cluster, data on the S3 API server over loopback: a tiny ASHA
sweep, registry promotions (accepted, refused), and where trials train (``tune.reuse_actors``).
Every strategy's loss curve on the same data: test_trainer.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tl_ray.data.ingest import ingest_fashion_mnist
from tl_ray.spec import validate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dataset(s3_server, fashion_dir):
    import uuid

    from tl_ray import store as storage

    store = f"s3://tlray-train-{uuid.uuid4().hex[:8]}/store"
    storage.ensure_bucket(store)
    ingest_fashion_mnist(
        storage.join(store, "datasets/small/train"),
        path=str(fashion_dir),
        classes=[0, 1, 7, 9],
        per_class=64,
        validation_to=storage.join(store, "datasets/small/val"),
        validation_per_class=32,
        rows_per_shard=64,
    )
    return store


def small_spec(store: str, name: str, **train) -> dict:
    return {
        "name": name,
        "storage": store,
        "data": {"train": "datasets/small/train", "validation": "datasets/small/val", "image_size": [32, 32]},
        "model": {
            "backbone": "mobilenet",
            "backbone_args": {"alpha": 0.25},
            "weights": "none",
            "head": {"dense": [], "dropout": 0.0},
            "freeze": {"mode": "full"},
        },
        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 3e-3, "steps_per_epoch": 6, **train},
        "tune": {"num_samples": 1, "scheduler": "fifo"},
        "promote": {"name": name},
    }




def test_tiny_asha_sweep_then_promotions_accepted_and_refused(ray_cluster, dataset):
    from tl_ray.promote import promote_checkpoint
    from tl_ray.registry.store import Registry
    from tl_ray.tune.sweep import fetch_checkpoint, run_sweep

    data = small_spec(dataset, "sweep")
    data["train"].update(epochs=2, steps_per_epoch=4)
    # Gate on val_loss: two different checkpoints never tie on it.
    data["tune"] = {
        "num_samples": 3,
        "scheduler": "asha",
        "grace_period": 1,
        "metric": "val_loss",
        "mode": "min",
        "space": {"train.learning_rate": "loguniform(1e-3, 1e-2)", "model.head.dropout": "uniform(0.0, 0.3)"},
    }
    spec = validate(data)
    result = run_sweep(spec, experiment="sweep")
    assert len(result.rows) == 3
    assert all(r.status in ("DONE", "STOPPED") for r in result.rows), [r.error for r in result.rows]
    assert {"train.learning_rate", "model.head.dropout"} <= set(result.rows[0].params)
    table = result.table()
    assert "val_loss" in table and result.best.trial_id in table

    from tl_ray import store as storage
    from tl_ray.tune.report import build_report

    report = build_report(storage.join(spec.storage, "experiments", "sweep"), "val_loss", "min", planned_epochs=2)
    assert len(report.trials) == 3 and "best val_loss" in report.table
    assert {f.rsplit("/", 1)[-1] for f in report.files} == {"trials.txt", "trials.csv", "objective.png", "learning_curves.png",
                                                          "params.png", "parallel.png"}
    assert all(storage.read_bytes(f)[:4] == b"\x89PNG" for f in report.files if f.endswith(".png"))
    # The sweep's full log, written locally, was copied next to the trials (the report read past it).
    assert "tl-ray sweep s3://" in storage.read_text(storage.join(spec.storage, "experiments", "sweep", "tl-ray.log"))

    everything = sorted((c for r in result.rows for c in r.checkpoints), key=lambda c: c[1])
    best_uri, worst_uri = everything[0][0], everything[-1][0]
    assert everything[0][1] < everything[-1][1]
    registry = Registry(spec.storage)
    with tempfile.TemporaryDirectory() as tmp:
        worst = fetch_checkpoint(worst_uri, Path(tmp) / "worst")
        best = fetch_checkpoint(best_uri, Path(tmp) / "best")
        first = promote_checkpoint(spec, worst)
        assert first.accepted and first.version == 1
        assert registry.aliases("sweep") == {"production": 1}
        better = promote_checkpoint(spec, best)
        assert better.accepted and better.challenger < better.champion
        assert registry.aliases("sweep") == {"production": 2}
        refused = promote_checkpoint(spec, worst)
        assert not refused.accepted and "NOT promoted" in refused.message()
        assert registry.aliases("sweep") == {"production": 2}  # production left as it was
        assert registry.versions("sweep") == [1, 2, 3]
        meta = registry.metadata("sweep", 3)
        assert meta["gate"]["accepted"] is False and meta["gate"]["champion_version"] == 2
        assert set(meta["files"]) >= {"model.keras"}


@pytest.mark.parametrize("reuse", [True, False])
def test_trials_train_in_their_actors_which_tune_reuses_unless_told_not_to(ray_cluster, dataset, reuse):
    import json

    from tl_ray import store as storage
    from tl_ray.tune.sweep import run_sweep

    name = f"actors-{'reused' if reuse else 'new'}"
    data = small_spec(dataset, name)
    data["train"].update(epochs=1, steps_per_epoch=2)
    data["tune"] = {"num_samples": 3, "scheduler": "fifo", "max_concurrent_trials": 2, "reuse_actors": reuse,
                    "space": {"model.head.dropout": "uniform(0.0, 0.3)"}}
    spec = validate(data)
    result = run_sweep(spec, experiment=name)
    assert [r.status for r in result.rows] == ["DONE"] * 3, [r.error for r in result.rows]
    rows = []
    experiment = storage.join(spec.storage, "experiments", name)
    for trial in storage.list_dir(experiment):
        if trial.startswith("tune_trial"):
            text = storage.read_text(storage.join(experiment, trial, "result.json"))
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    assert len(rows) == 3
    actors = {r["pid"] for r in rows}  # Tune's: the actor's process
    assert {r["trial_pid"] for r in rows} == actors  # the loop's: every trial trained in its actor
    # Two at a time: reused, the third trial ran in an earlier trial's actor; else each had its own.
    assert len(actors) <= 2 if reuse else len(actors) == 3


def test_an_ended_trial_keeps_its_best_and_latest_checkpoints_and_forces_no_state_save(ray_cluster, dataset):
    from tl_ray import store as storage
    from tl_ray.tune.sweep import run_sweep

    data = small_spec(dataset, "keep-one")
    data["train"].update(epochs=4, steps_per_epoch=2, learning_rate=3e-2)
    data["tune"] = {"num_samples": 2, "scheduler": "fifo", "metric": "val_loss", "mode": "min",
                    "checkpoint_on": "every", "keep_checkpoints": 1,
                    "space": {"model.head.dropout": "uniform(0.0, 0.3)"}}
    spec = validate(data)
    result = run_sweep(spec, experiment="keep-one")
    experiment = storage.join(spec.storage, "experiments", "keep-one")
    for row in result.rows:
        assert row.status == "DONE", row.error
        (trial,) = [t for t in storage.list_dir(experiment) if row.trial_id in t]
        on_store = {storage.join(experiment, trial, c) for c in storage.list_dir(storage.join(experiment, trial))
                    if c.startswith("checkpoint_")}
        # Four checkpoints written, one per epoch; the best by val_loss and the latest stay, and the row names them.
        latest = storage.join(experiment, trial, "checkpoint_000003")
        assert {uri for uri, _ in row.checkpoints} == on_store == {row.checkpoint, latest}
    # Tune's num_to_keep would have forced a state save at every checkpoint here.
    assert "bottleneck" not in storage.read_text(storage.join(experiment, "tl-ray.log"))
