"""The feature cache on the S3 API server: a head trained on cached backbone outputs matches the same
head trained over the frozen base; two concurrent trials build an entry once; a changed weights file
gives a new entry; `tl-ray cache list|purge`. And a staged sweep that promotes its best heads to
fine-tuning, warm-started from their checkpoints."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest

from tl_ray import store as storage
from tl_ray.spec import validate

pytestmark = [pytest.mark.integration]

CLASSES = [0, 1, 7, 9]
BACKBONE = "vgg16"


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory):
    """The fault-injection folder, set before Ray starts so its workers inherit it (inert while empty)."""
    import os

    from tl_ray.testing import ENV

    path = tmp_path_factory.mktemp("hooks")
    os.environ[ENV] = str(path)
    yield path
    os.environ.pop(ENV, None)


def ingest(root: str, fashion_dir) -> None:
    from tl_ray.data.ingest import ingest_fashion_mnist

    ingest_fashion_mnist(storage.join(root, "datasets/fc/train"), path=str(fashion_dir), classes=CLASSES,
                         per_class=60, validation_to=storage.join(root, "datasets/fc/val"), validation_per_class=40,
                         rows_per_shard=64)


@pytest.fixture(scope="module")
def store(hook_dir, s3_server, fashion_dir):
    """A store on the S3 API server with a small dataset and two backbone weights files.

    VGG16's randomly initialised convolutions (no BatchNorm) already give features a head
    can learn from, so the test needs no pretraining; the two files differ by their seed.
    """
    from tl_ray.models.build import build_model
    from tl_ray.models.weights import save_backbone_weights
    from tl_ray.spec import ModelSpec
    from tl_ray.train.runtime import configure_tensorflow

    configure_tensorflow(2)
    root = f"s3://tlray-cache-{uuid.uuid4().hex[:8]}/store"
    storage.ensure_bucket(root)
    ingest(root, fashion_dir)
    for name, seed in (("init-a", 0), ("init-b", 1)):
        model = build_model(ModelSpec(backbone=BACKBONE, weights="none"), len(CLASSES), (32, 32), seed=seed)
        save_backbone_weights(model, storage.join(root, f"weights/{name}.weights.h5"))
    return root


def head_spec(root: str, name: str, **train) -> dict:
    return {
        "name": name,
        "storage": root,
        "data": {"train": "datasets/fc/train", "validation": "datasets/fc/val"},
        "model": {"backbone": BACKBONE, "weights": "weights/current.weights.h5",
                  "freeze": {"mode": "feature_extraction"}, "head": {"dense": [32], "dropout": 0.2}},
        "train": {"epochs": 4, "batch_size": 24, "learning_rate": 3e-3, **train},
        "tune": {"num_samples": 1, "scheduler": "fifo"},
    }


def use_weights(root: str, name: str) -> None:
    storage.write_bytes(storage.join(root, "weights/current.weights.h5"),
                        storage.read_bytes(storage.join(root, f"weights/{name}.weights.h5")))


def test_head_on_cached_features_matches_head_over_frozen_base(store, tmp_path):
    """Same seed, same data order: per-epoch losses within 1e-3 and validation accuracy within 0.01.

    The cached run builds the head alone and checkpoints only the head; its last checkpoint
    rebuilds into the full model, which scores what the trial reported.
    """
    from tl_ray.promote import evaluate
    from tl_ray.train.checkpoint import checkpoint_model, is_head_only
    from tl_ray.train.loop import ListReporter, train

    use_weights(store, "init-a")
    runs, checkpoints = {}, {}
    for cache in ("off", "auto"):
        reporter = ListReporter(keep_checkpoints_in=tmp_path / cache)
        train(validate(head_spec(store, f"eq-{cache}", feature_cache=cache)), reporter)
        runs[cache], checkpoints[cache] = reporter.history, reporter.checkpoints[-1]
    assert [h["feature_cache"] for h in runs["off"]] == ["off"] * 4
    assert runs["auto"][0]["feature_cache"] in ("built", "read")
    assert [h["head_only"] for h in runs["auto"]] == [True] * 4 and not runs["off"][0]["head_only"]
    assert is_head_only(checkpoints["auto"]) and not is_head_only(checkpoints["off"])
    spec = validate(head_spec(store, "eq-auto"))
    full = checkpoint_model(checkpoints["auto"])
    assert full.get_layer("backbone") is not None
    scored = evaluate(full, spec.resolve(spec.data.validation), spec.data.image_size)["accuracy"]
    assert scored == pytest.approx(runs["auto"][-1]["val_accuracy"], abs=1e-6)
    for off, cached in zip(runs["off"], runs["auto"]):
        assert cached["loss"] == pytest.approx(off["loss"], abs=1e-3)
        assert cached["val_accuracy"] == pytest.approx(off["val_accuracy"], abs=0.01)
    # The transferred features carry the task: well above chance (0.25) for 4 classes.
    assert runs["auto"][-1]["val_accuracy"] > 0.5


def _first_reports(root: str, experiment: str) -> list[dict]:
    rows = []
    for trial in storage.list_dir(storage.join(root, "experiments", experiment)):
        if trial.startswith("tune_trial"):
            text = storage.read_text(storage.join(root, "experiments", experiment, trial, "result.json"))
            rows.append(json.loads(text.splitlines()[0]))
    return rows


def test_two_concurrent_trials_build_an_entry_once_and_new_weights_rebuild_it(store, hook_dir, ray_cluster):
    from tl_ray.cli import main
    from tl_ray.feature_cache import cache_root, list_entries, purge
    from tl_ray.tune.sweep import run_sweep

    use_weights(store, "init-b")
    purge(store)
    # The builder holds its lock until the other trial waits for the same entry.
    (hook_dir / "hold_cache_build").write_text("1")
    spec = head_spec(store, "conc", epochs=2)
    spec["tune"] = {"num_samples": 1, "scheduler": "fifo", "space": {"model.head.dropout": "grid([0.1, 0.3])"}}
    result = run_sweep(validate(spec), experiment="conc")
    assert [r.status for r in result.rows] == ["DONE", "DONE"], [r.error for r in result.rows]
    firsts = _first_reports(store, "conc")
    # The held builder of the training entry waits until the other trial waits for it.
    assert sorted(r["feature_cache"] for r in firsts) == ["built", "waited"]
    # Either trial may build the validation entry next, but only one does.
    assert sorted(r["feature_cache_validation"] for r in firsts)[0] == "built"
    assert sorted(r["feature_cache_validation"] for r in firsts)[1] in ("waited", "read")
    entries = list_entries(store)
    assert len(entries) == 2 and all(e.complete for e in entries)  # train and validation, once each
    assert {e.rows for e in entries} == {4 * 60, 4 * 40}

    # Another weights file at the same path: a new key, so new entries; the old ones are not served.
    (hook_dir / "hold_cache_build").unlink()
    use_weights(store, "init-a")
    again = run_sweep(validate(head_spec(store, "rebuilt", epochs=1)), experiment="rebuilt")
    assert again.rows[0].status == "DONE"
    assert [r["feature_cache"] for r in _first_reports(store, "rebuilt")] == ["built"]
    after = list_entries(store)
    assert len(after) == 4
    weights = {e.key["weights"] for e in after}
    assert len(weights) == 2 and all(w.startswith("sha256:") for w in weights)

    assert main(["cache", "list", "--storage", store]) == 0
    one = after[0].key_id
    assert main(["cache", "purge", one, "--storage", store]) == 0
    assert one not in {e.key_id for e in list_entries(store)}
    assert main(["cache", "purge", "no-such-entry", "--storage", store]) != 0
    assert main(["cache", "purge", "--all", "--storage", store]) == 0
    assert list_entries(store) == [] and storage.list_dir(cache_root(store)) == []


def test_staged_sweep_promotes_the_best_heads_and_warm_starts_them(tmp_path, fashion_dir, ray_cluster):
    """On a local store: VGG16 checkpoints (59 MB each) would only load the in-memory S3 server."""
    from tl_ray.tune.report import build_report
    from tl_ray.tune.sweep import run_sweep

    store = str(tmp_path / "store")
    ingest(store, fashion_dir)
    spec = head_spec(store, "staged")
    spec["model"]["weights"] = "none"
    spec["tune"] = {
        "num_samples": 1, "scheduler": "fifo",
        "space": {"train.learning_rate": "grid([0.0003, 0.001, 0.003, 0.01])"},
        "stages": [
            {"name": "heads", "freeze": {"mode": "feature_extraction"}, "epochs": 2},
            {"name": "top", "freeze": {"mode": "fine_tune", "unfreeze_top": 6}, "epochs": 1, "keep": 0.5,
             "lr_factor": 0.1},
        ],
    }
    result = run_sweep(validate(spec), experiment="staged")
    heads = [r for r in result.rows if r.stage == "heads"]
    top = [r for r in result.rows if r.stage == "top"]
    assert len(heads) == 4 and len(top) == 2
    best_two = sorted(heads, key=lambda r: r.metric, reverse=True)[:2]
    assert {r.parent for r in top} == {r.trial_id for r in best_two}
    by_id = {r.trial_id: r for r in heads}
    for row in top:
        parent = by_id[row.parent]
        assert row.status == "DONE", row.error
        assert row.params["train.learning_rate"] == parent.params["train.learning_rate"]
    # Warm start: each fine-tuning trial began from its parent's best checkpoint, at a tenth of its rate.
    stage_dir = storage.join(store, "experiments", "staged", "top")
    firsts = {}
    for trial in storage.list_dir(stage_dir):
        if "_trial_" in trial:
            first = json.loads(storage.read_text(storage.join(stage_dir, trial, "result.json")).splitlines()[0])
            firsts[first["config"]["stage.parent"]] = first
    assert set(firsts) == {r.parent for r in top}
    for parent_id, first in firsts.items():
        parent = by_id[parent_id]
        assert first["warm_started_from"] == parent.checkpoint
        assert first["feature_cache"] == "off"
        assert first["learning_rate"] == pytest.approx(parent.params["train.learning_rate"] * 0.1, rel=1e-5)
        # The loaded weights score exactly what the parent's best checkpoint scored.
        assert first["warm_start_val_accuracy"] == pytest.approx(parent.metric, abs=1e-6)
    report = build_report(storage.join(store, "experiments", "staged"), "val_accuracy", "max",
                          planned_epochs={"heads": 2, "top": 1})
    assert "stage" in report.table.splitlines()[0] and report.table.count("top") >= 2
    assert any(f.endswith("learning_curves.png") for f in report.files)


def test_head_only_trials_run_on_cpus_while_fine_tuning_trials_would_need_a_gpu(store, ray_cluster):
    """The local cluster has no GPU: with train.head_trial_gpus 0 the head trial runs anyway."""
    from tl_ray.tune.sweep import run_sweep

    use_weights(store, "init-a")
    spec = head_spec(store, "cpu-heads", epochs=1, steps_per_epoch=2, gpus_per_worker=1, head_trial_gpus=0)
    result = run_sweep(validate(spec), experiment="cpu-heads")
    assert [r.status for r in result.rows] == ["DONE"], [r.error for r in result.rows]
