"""Sweep benchmarks, side by side in one run.

    .venv/bin/python benchmarks/bench_sweep.py cache                 # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_sweep.py overhead              # ~5 min on 2 cores, 32 trials
    .venv/bin/python benchmarks/bench_sweep.py overhead --trials 64  # memory over more trials
    .venv/bin/python benchmarks/bench_sweep.py overhead --repeat 3   # 3 rounds: median and range
    .venv/bin/python benchmarks/bench_sweep.py cache --smoke         # tiny sizes: does it run?
    .venv/bin/python benchmarks/bench_sweep.py overhead --smoke

Both reuse the quickstart's data and upstream model (``fashion-base``) in the store
(``--store``, default ``benchmarks/.store``), building them first if missing (the
first run pretrains ``fashion-base``: a few minutes more).

``cache``: the quickstart target (jobs/quickstart/target.yaml: mobilenet_v2 α 0.35
transferred from the fashion-base model, 500 labelled images, 1,500 for
validation, at most 20 epochs), augmentation off and the base frozen, a 16-trial
sweep over head size, dropout and learning rate — the same 16 sampled
configurations in both runs — run

  (a) naively: every trial runs the base on every step (``train.feature_cache: off``), FIFO;
  (b) with tl-ray's feature cache and ASHA (its default scheduler).

Both run on the default trial runtime, so their ratio is what the cache and ASHA
save. It prints each run's wall time, trial-epochs, mean epoch and best
validation accuracy, then (b) against (a): the wall time ratio (goal ≥ 5×) and
the accuracy gap (goal: within 1 point).

``overhead``: ``--trials`` trials (default 32) of a fixed amount of work (a small
head on cached features, 3 epochs of ``--steps`` steps), as many at once as there
are CPUs, run

  (a) on the default runtime: Tune hands a finished trial's actor to the next trial
      (``tune.reuse_actors: true``);
  (b) with a new Ray actor per trial (``tune.reuse_actors: false``);
  (c) plain: the same trials without Ray or Tune, as many Python processes as trials
      at once, each training its share back to back with the same loop.

Ideal = the sum of the trials' epoch times / concurrency. It prints a table, one
row per run: wall, ideal, wall / ideal (goal ≤ 1.5), wall against the plain
run's, and the peak RSS of the first trial's process against the last's (goal:
within 5%). ``--repeat N`` runs the three N times, each round in a new driver
process on a new local Ray (as each ``tl-ray tune`` is), and prints each run's
median and range of wall / ideal.

``--smoke``: tiny sizes, to check that a benchmark runs (its figures mean
nothing): a store of its own (``benchmarks/.store/smoke``), 20 to 30 images per class,
``fashion-base`` pretrained for one step, 2 trials of 2 epochs (cache) or 3
trials of 3 epochs of 5 steps (overhead: on 2 cores, more than run at once, so
an actor is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from tl_ray import feature_cache as features
from tl_ray import store as storage

ROOT = Path(__file__).resolve().parent.parent
SPACE = {
    "model.head.dense": "choice([[32], [64], [128], [256]])",
    "model.head.dropout": "uniform(0.0, 0.5)",
    "train.learning_rate": "loguniform(3.0e-4, 3.0e-3)",
}
RATIO_GOAL = 1.5  # overhead: wall / ideal
RSS_GOAL = 0.05  # overhead: the last trial's peak RSS within this fraction of the first's
# --smoke: few images in every split (source and target), the upstream model pretrained for one epoch
# of one step, and short cache sweeps.
SMOKE_DATA = ["data.source.train_per_class=30", "data.source.validation_per_class=20"]
SMOKE_PRETRAIN = ["train.epochs=1"]
SMOKE_CACHE = {"train.epochs": 2, "train.checkpoint_every": 1, "tune.grace_period": 1}


def target_spec(store: str, **overrides):
    from tl_ray.spec import load_spec, validate

    # Checkpoints every 5 epochs (the ASHA rungs: grace period 5, reduction factor 2), in every run.
    sets = [f"storage={store}", "data.augment.flip=false", "model.freeze.mode=feature_extraction", "tune.seed=0",
            "train.checkpoint_every=5"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    data = load_spec(ROOT / "jobs/quickstart/target.yaml", overrides=sets).to_dict()
    data["tune"]["space"] = SPACE
    return validate(data)


def prepare(store: str, smoke: bool) -> None:
    """The quickstart's data and upstream model, reused when the store has them (no test split: unused)."""
    from tl_ray.errors import RegistryError
    from tl_ray.pipeline import ensure_data, ensure_upstream, sweep_and_promote
    from tl_ray.registry.store import Registry
    from tl_ray.spec import load_spec

    sets = [f"storage={store}", *(SMOKE_DATA if smoke else [])]
    spec = load_spec(ROOT / "jobs/quickstart/target.yaml", overrides=sets)
    spec.data.test = None
    ensure_data(spec)
    if smoke:  # a tiny fashion-base first: ensure_upstream then finds it registered
        try:
            Registry(store).resolve(spec.model.weights)
        except RegistryError:
            upstream = load_spec(ROOT / "jobs/quickstart/source.yaml", overrides=[*sets, *SMOKE_PRETRAIN])
            ensure_data(upstream)
            sweep_and_promote(upstream)
    ensure_upstream(spec)


def sweep(spec, name: str):
    """Runs the sweep on Ray, started before the clock if it is not up; returns (result, its wall time)."""
    from tl_ray.tune.cluster import connect_ray
    from tl_ray.tune.sweep import run_sweep

    connect_ray()
    start = time.perf_counter()
    result = run_sweep(spec, experiment=name)
    return result, time.perf_counter() - start


def trial_rows(result) -> list[list[dict]]:
    """Each trial's reported metrics, epoch by epoch, the trials in the order they started."""
    out = []
    for trial in storage.list_dir(result.experiment_path):
        if "_trial_" in trial:
            text = storage.read_text(storage.join(result.experiment_path, trial, "result.json"))
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            if rows:
                out.append(rows)
    return sorted(out, key=lambda rs: rs[0]["timestamp"] - rs[0]["time_total_s"])


def bench_cache(store: str, stamp: str, trials: int, smoke: bool) -> dict:
    prepare(store, smoke)
    features.purge(store)  # the cached run pays for building the cache inside its timed sweep
    runs = {}
    for label, overrides in (
        ("a naive (no cache, FIFO)", {"train.feature_cache": "off", "tune.scheduler": "fifo"}),
        ("b cache + ASHA", {"train.feature_cache": "auto", "tune.scheduler": "asha"}),
    ):
        spec = target_spec(store, **overrides, **{"tune.num_samples": trials}, **(SMOKE_CACHE if smoke else {}))
        result, wall = sweep(spec, f"bench-cache-{stamp}-{label[0]}")
        runs[label] = r = {
            "wall_s": wall,
            "best_val_accuracy": result.best.metric,
            "trials": len(result.rows),
            "epochs": sum(r.epochs for r in result.rows),
            "configs": sorted(json.dumps(r.params, sort_keys=True) for r in result.rows),
            "mean_epoch_s": statistics.mean(x["epoch_s"] for rs in trial_rows(result) for x in rs),
        }
        print(f"{label}: {wall:.0f} s, best val_accuracy {r['best_val_accuracy']:.4f}, {r['epochs']} epochs in "
              f"{r['trials']} trials, mean epoch {r['mean_epoch_s']:.2f} s", flush=True)
    naive, cached = runs.values()
    same = naive["configs"] == cached["configs"]
    ratio = naive["wall_s"] / cached["wall_s"]
    gap = (naive["best_val_accuracy"] - cached["best_val_accuracy"]) * 100
    print(f"b vs a: same {trials} configurations {same}; wall time ratio {ratio:.2f}x "
          f"(goal >= 5x: {'met' if ratio >= 5 else 'missed'}); best val accuracy {gap:+.2f} points below naive "
          f"(goal within 1 point: {'met' if gap <= 1 else 'missed'})")
    for r in runs.values():
        r.pop("configs")
    return {"runs": runs, "ratio": ratio, "accuracy_gap_points": gap, "same_configs": same}


def overhead_spec(store: str, trials: int, steps: int):
    from tl_ray.spec import validate

    data = target_spec(store, **{"train.feature_cache": "auto", "tune.scheduler": "fifo", "tune.num_samples": trials,
                                 "train.epochs": 3, "train.steps_per_epoch": steps,
                                 "train.checkpoint_every": 3}).to_dict()
    data["tune"]["space"] = {"model.head.dropout": "uniform(0.0, 0.5)"}
    return validate(data)


def summary(wall: float, work: list[float], peaks: list[float], concurrency: int) -> dict:
    """One run's figures: ``work`` and ``peaks`` per trial, in the order the trials started."""
    ideal = sum(work) / concurrency
    return {"trials": len(work), "concurrency": concurrency, "wall_s": wall, "ideal_s": ideal,
            "ratio": wall / ideal, "trial_peak_rss_mb": peaks}


def overhead_run(spec, name: str, concurrency: int) -> dict:
    result, wall = sweep(spec, name)
    rows = trial_rows(result)
    return summary(wall, [sum(r["epoch_s"] for r in rs) for rs in rows],
                   [max(r["peak_rss_mb"] for r in rs) for rs in rows], concurrency)


def _plain_slot(base: dict, dropouts: list[float], threads: int, out) -> None:
    """One slot of the plain run: a Python process that trains its trials back to back, no Ray."""
    from tl_ray.spec import apply_overrides, validate
    from tl_ray.train.loop import ListReporter, train
    from tl_ray.train.runtime import begin_trial, configure_tensorflow

    configure_tensorflow(threads, 0)
    trials = []
    for dropout in dropouts:
        begin_trial()  # frees the previous trial's Keras state
        reporter = ListReporter()
        start = time.time()
        train(validate(apply_overrides(base, [f"model.head.dropout={dropout}"])), reporter)
        trials.append((start, sum(m["epoch_s"] for m in reporter.history),
                       max(m["peak_rss_mb"] for m in reporter.history)))
    out.put(trials)


def plain_run(spec, concurrency: int) -> dict:
    """The same trials without Ray or Tune: ``concurrency`` processes, each training its share back to back
    in one process with the same loop (what a hand-written script would do). Dropout is drawn from the
    sweep's range with its own generator; it does not change a trial's work."""
    import multiprocessing
    import random

    ctx = multiprocessing.get_context("spawn")  # each starts as a script does: Python, then TensorFlow's import
    rng = random.Random(0)
    dropouts = [rng.uniform(0.0, 0.5) for _ in range(spec.tune.num_samples)]
    base = dict(spec.to_dict(), tune={})
    out = ctx.Queue()
    start = time.perf_counter()
    procs = [ctx.Process(target=_plain_slot, args=(base, dropouts[i::concurrency], spec.train.cpus_per_worker, out))
             for i in range(concurrency)]
    for proc in procs:
        proc.start()
    trials = sorted(t for _ in procs for t in out.get())
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    return summary(wall, [t[1] for t in trials], [t[2] for t in trials], concurrency)


def bench_overhead(store: str, stamp: str, trials: int, steps: int, smoke: bool) -> dict:
    import ray

    from tl_ray.registry.weights import resolve_weights
    from tl_ray.tune.cluster import connect_ray

    prepare(store, smoke)
    spec = overhead_spec(store, trials, steps)
    # The cache exists before the clock starts: every trial does the same work.
    weights = resolve_weights(spec.model.weights, spec.storage)
    for split in (spec.data.train, spec.data.validation):
        features.ensure_features(spec, spec.resolve(split), weights)
    connect_ray()
    concurrency = min(trials, int(ray.cluster_resources().get("CPU", 1)) // spec.train.cpus_per_worker)
    runs = {}
    for label, reuse in (("a reused actors (default)", True), ("b a new actor per trial", False)):
        run_spec = spec.model_copy(deep=True)
        run_spec.tune.reuse_actors = reuse
        runs[label] = overhead_run(run_spec, f"bench-overhead-{stamp}-{label[0]}", concurrency)
    runs["c plain (no Ray)"] = plain = plain_run(spec, concurrency)
    print(f"\n{trials} trials of 3 epochs x {steps} steps, {concurrency} at once")
    print(f"{'run':<28} {'wall s':>7} {'ideal s':>7} {'wall/ideal':>10} {'vs plain':>8}  trial peak RSS first -> last")
    for label, r in runs.items():
        peaks = r["trial_peak_rss_mb"]
        r["vs_plain"] = r["wall_s"] / plain["wall_s"]
        r["rss_growth"] = peaks[-1] / peaks[0] - 1
        print(f"{label:<28} {r['wall_s']:7.1f} {r['ideal_s']:7.1f} {r['ratio']:10.2f} {r['vs_plain']:7.2f}x  "
              f"{peaks[0]:.0f} -> {peaks[-1]:.0f} MiB ({r['rss_growth']:+.1%})")
    for label, r in runs.items():
        print(f"{label}: wall / ideal <= {RATIO_GOAL}: {'met' if r['ratio'] <= RATIO_GOAL else 'MISSED'}; "
              f"last trial's peak RSS within {RSS_GOAL:.0%} of the first's: "
              f"{'met' if abs(r['rss_growth']) <= RSS_GOAL else 'MISSED'}", flush=True)
    return runs


def repeat_overhead(args) -> dict:
    """``overhead`` ``args.repeat`` times, each in a new driver process on a new local Ray, as every
    ``tl-ray tune`` is; prints each run's median and range of wall / ideal."""
    import subprocess
    import tempfile

    rounds = []
    for i in range(args.repeat):
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [sys.executable, __file__, "overhead", "--store", args.store, "--trials", str(args.trials),
                   "--steps", str(args.steps), "--json", tmp.name, *(["--smoke"] if args.smoke else [])]
            print(f"== round {i + 1} of {args.repeat}", flush=True)
            subprocess.run(cmd, check=True)
            rounds.append(json.loads(Path(tmp.name).read_text()))
    print(f"\nwall / ideal over {args.repeat} rounds (goal <= {RATIO_GOAL}):")
    for label in rounds[0]:
        values = [runs[label]["ratio"] for runs in rounds]
        print(f"  {label:<28} median {statistics.median(values):.2f}, range {min(values):.2f}-{max(values):.2f}"
              f"  ({', '.join(f'{v:.2f}' for v in values)})")
    return {"rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["cache", "overhead"])
    parser.add_argument("--store", help="store root, data and models reused (default: benchmarks/.store, "
                                        "with --smoke benchmarks/.store/smoke)")
    parser.add_argument("--trials", type=int, help="number of trials (default: cache 16, overhead 32; --smoke 2 and 3)")
    parser.add_argument("--steps", type=int, help="overhead: steps per epoch of each trial, 3 epochs "
                                                  "(default 100; --smoke 5)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="overhead: run it this many times, each in a new driver process on a new local Ray, "
                             "and print each run's median and range")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    args.store = args.store or str(ROOT / "benchmarks/.store" / ("smoke" if args.smoke else ""))
    args.trials = args.trials or {(False, "cache"): 16, (False, "overhead"): 32, (True, "cache"): 2,
                                  (True, "overhead"): 3}[args.smoke, args.which]
    args.steps = args.steps or (5 if args.smoke else 100)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.which == "cache":
        out = bench_cache(args.store, stamp, args.trials, args.smoke)
    elif args.repeat > 1:
        out = repeat_overhead(args)
    else:
        out = bench_overhead(args.store, stamp, args.trials, args.steps, args.smoke)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
