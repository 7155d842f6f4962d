"""Is the sweep's promoted model close to the best of a larger search? The quickstart's space, sampled and as a grid.

    python benchmarks/bench_promotion.py [--store DIR] [--json FILE] [--smoke]

(a) The quickstart's transfer sweep as ``tl-ray run`` runs it: 8 sampled trials, ASHA, ``tune.seed: 0``;
its best trial is what ``tl-ray run`` promotes (with ``run.seeds: 1``). (b) The same space as a grid 4.5 times
as large: feature extraction, fine-tuning and LP-FT, 4 learning rates over the space's range, 3 dropouts;
36 trials, every one trained its full epochs with the same ``train.seed`` and ``data.seed`` as (a). Every
trial's best checkpoint is scored on the test split. Printed: the sweep's pick, the grid's best by
validation (what a 4.5 times larger sweep would promote) and the grid's best on test, with the distance of
the sweep's pick from each in test accuracy points (goal: within 1 point of the grid's best).

The store keeps the quickstart's data and upstream model between runs (a store where the quickstart ran
has them). ``--smoke``: few images, a one-step upstream model, 2 epochs, 2 sampled trials at once against a
3-trial grid: checks that the benchmark runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = [("feature_extraction", "plain"), ("fine_tune", "plain"), ("fine_tune", "lp_ft")]
LEARNING_RATES = [5.0e-4, 1.1e-3, 2.3e-3, 5.0e-3]  # geometric over the space's loguniform(5e-4, 5e-3)
DROPOUTS = [0.0, 0.25, 0.5]  # over its uniform(0, 0.5)
SMOKE_SETS = ["data.source.train_per_class=20", "data.source.validation_per_class=20", "train.epochs=2",
              "train.probe_epochs=1", "tune.grace_period=2", "tune.num_samples=2", "tune.max_concurrent_trials=0"]


def quickstart_spec(store: str, smoke: bool):
    from tl_ray.spec import load_spec

    return load_spec(ROOT / "jobs/quickstart/target.yaml",
                     overrides=[f"storage={store}", "run.seeds=1", *(SMOKE_SETS if smoke else [])])


def prepare(spec, smoke: bool) -> None:
    """The quickstart's datasets (test split included) and its upstream model, kept when the store has them."""
    from tl_ray.errors import RegistryError
    from tl_ray.pipeline import ensure_data, ensure_upstream, sweep_and_promote
    from tl_ray.registry.store import Registry
    from tl_ray.spec import load_spec

    ensure_data(spec)
    if smoke:  # a fashion-base of one step: ensure_upstream then finds it registered
        try:
            Registry(spec.storage).resolve(spec.model.weights)
        except RegistryError:
            upstream = load_spec(ROOT / "jobs/quickstart/source.yaml",
                                 overrides=[f"storage={spec.storage}", *SMOKE_SETS[:2], "train.epochs=1"])
            ensure_data(upstream)
            sweep_and_promote(upstream)
    ensure_upstream(spec)


def grid(spec, smoke: bool) -> dict[str, dict]:
    """The grid's variants: dotted overrides by name, the seeds of the sweep's trials."""
    seeds = {"train.seed": spec.train.seed, "data.seed": spec.data.seed}
    lrs, dropouts = (LEARNING_RATES[1:2], DROPOUTS[:1]) if smoke else (LEARNING_RATES, DROPOUTS)
    return {f"{mode}-{recipe}-lr{lr:g}-dropout{d:g}": {"model.freeze.mode": mode, "train.recipe": recipe,
                                                      "train.learning_rate": lr, "model.head.dropout": d, **seeds}
            for mode, recipe in MODES for lr in lrs for d in dropouts}


def scored(spec, rows) -> list[dict]:
    """Each trial's best validation metric and its checkpoint's test accuracy."""
    from tl_ray.pipeline import checkpoint_test_accuracy

    return [{"trial": row.trial_id, "params": row.params, "val": row.metric,
             "test": checkpoint_test_accuracy(spec, row.checkpoint)} for row in rows if row.checkpoint]


def bench(store: str, smoke: bool) -> dict:
    from tl_ray.pipeline import sweep_and_promote
    from tl_ray.tune.sweep import run_variants

    spec = quickstart_spec(store, smoke)
    prepare(spec, smoke)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    result, _ = sweep_and_promote(spec, promote=False)
    sweep_s = time.perf_counter() - start
    best = result.best
    pick = {"trial": best.trial_id, "params": best.params, "val": best.metric,
            "test": scored(spec, [best])[0]["test"]}
    variants = grid(spec, smoke)
    start = time.perf_counter()
    rows = run_variants(spec, f"bench-promotion-{stamp}-grid", variants)
    grid_s = time.perf_counter() - start
    for key, row in rows.items():
        row.params = variants[key]  # what the trial trained, not the variant's name
    trials = scored(spec, [rows[k] for k in sorted(rows)])
    by_val = max(trials, key=lambda t: t["val"])
    by_test = max(trials, key=lambda t: t["test"])
    print(f"\n{'':<44}{'trials':>7}{'wall s':>8}{'val acc':>9}{'test acc':>10}  configuration")
    for label, n, wall, t in (("a sweep's pick (promoted by tl-ray run)", len(result.rows), sweep_s, pick),
                              ("b grid's best by validation", len(trials), grid_s, by_val),
                              ("c grid's best on test (hindsight)", len(trials), grid_s, by_test)):
        params = {k: v for k, v in t["params"].items() if not k.endswith(".seed")}
        print(f"{label:<44}{n:>7}{wall:>8.0f}{t['val']:>9.4f}{t['test']:>10.4f}  {json.dumps(params)}")
    gap_val = (by_val["test"] - pick["test"]) * 100
    gap_test = (by_test["test"] - pick["test"]) * 100
    print(f"b - a: {gap_val:+.2f} test points; c - a: {gap_test:+.2f} test points "
          f"(goal: the sweep's pick within 1 point of the grid's best: {'met' if gap_val <= 1 else 'missed'})")
    return {"sweep": pick, "sweep_s": sweep_s, "grid_s": grid_s, "grid": trials,
            "gap_points_best_by_val": gap_val, "gap_points_best_on_test": gap_test}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="store root, data and models reused (default: benchmarks/.store, "
                                        "with --smoke benchmarks/.store/smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    store = args.store or str(ROOT / "benchmarks/.store" / ("smoke" if args.smoke else ""))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    out = bench(store, args.smoke)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
