"""``run.seeds`` on a real local Ray: after the sweep, `tl-ray run` trains its configuration (here an LP-FT
recipe) and the from-scratch baseline on two seeds each, promotes the transferred seed with the best
validation metric, and records the comparison in the registry and the sweep's report folder."""

from __future__ import annotations

import pytest

from tl_ray import store as storage
from tl_ray.spec import validate

pytestmark = pytest.mark.integration


def test_run_seeds_trains_both_on_each_seed_promotes_the_best_validation_seed_and_records_it(
        ray_cluster, fashion_dir, tmp_path):
    from tl_ray.data.ingest import ingest_fashion_mnist
    from tl_ray.pipeline import run_pipeline
    from tl_ray.registry.store import Registry

    store = str(tmp_path / "store")
    for split, folder, per_class in (("train", "train", 20), ("train", "val", 10), ("test", "test", 20)):
        ingest_fashion_mnist(f"{store}/datasets/t/{folder}", path=str(fashion_dir), split=split, classes=[7, 8, 9],
                             per_class=per_class, seed=len(folder))  # a small test set: six evaluations read it
    spec = validate({
        "name": "tiny-seeds", "storage": store,
        "data": {"train": "datasets/t/train", "validation": "datasets/t/val", "test": "datasets/t/test",
                 "augment": {"flip": True}},
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "head": {"dropout": 0.0}, "freeze": {"mode": "fine_tune", "unfreeze_top": 4}},
        "train": {"recipe": "lp_ft", "epochs": 2, "probe_epochs": 1, "batch_size": 20, "steps_per_epoch": 2},
        "tune": {"num_samples": 1, "scheduler": "fifo", "seed": 0, "max_concurrent_trials": 2,  # 2 cores: reused actors
                 "space": {"train.learning_rate": "loguniform(1e-3, 1e-2)"}},
        "promote": {"name": "tiny-seeds"},
        "run": {"seeds": 2, "compare_from_scratch": True, "serve": False},
    })
    lines: list[str] = []
    figures = run_pipeline(spec, out=lines.append)
    log = "\n".join(lines)

    meta = Registry(store).metadata("tiny-seeds", 1)["seeds"]
    runs = meta["runs"]
    assert [r["seed"] for r in runs["transferred"]] == [r["seed"] for r in runs["scratch"]] == [0, 1]
    assert all(r["test_accuracy"] is not None for r in runs["transferred"] + runs["scratch"])
    best = max(runs["transferred"], key=lambda r: (r["val_metric"], -r["seed"]))
    assert meta["promoted_seed"] == best["seed"] == figures["promoted_seed"]
    assert figures["promoted"] == "tiny-seeds:v1"
    assert figures["seeds_gap"] == pytest.approx(meta["transferred"]["mean"] - meta["scratch"]["mean"])
    # The promoted version is that seed's run of the sweep's configuration, and says so.
    params = Registry(store).metadata("tiny-seeds", 1)["metrics"]["params"]
    assert params["train.seed"] == best["seed"] and params["data.seed"] == best["seed"]
    assert 1e-3 <= params["train.learning_rate"] < 1e-2
    assert f"promoting seed {best['seed']}" in log and "[seeds] from scratch: test accuracy" in log
    reports = [n for n in storage.list_dir(storage.join(store, "experiments")) if not n.endswith("-seeds")]
    assert storage.exists(storage.join(store, "experiments", reports[0], "report", "seeds.png"))
