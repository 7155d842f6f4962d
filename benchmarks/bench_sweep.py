"""Sweep benchmarks, side by side in one run.

    .venv/bin/python benchmarks/bench_sweep.py cache                 # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_sweep.py cache --size 224      # ~10 min on 2 cores, and build memory
    .venv/bin/python benchmarks/bench_sweep.py overhead              # ~5 min on 2 cores, 32 trials
    .venv/bin/python benchmarks/bench_sweep.py overhead --trials 64  # memory over more trials
    .venv/bin/python benchmarks/bench_sweep.py overhead --repeat 3   # 3 rounds: median and range
    .venv/bin/python benchmarks/bench_sweep.py scale                 # ~25 min on 2 cores, 500 trials twice
    .venv/bin/python benchmarks/bench_sweep.py scale --nodes 4       # on a simulated 4-node cluster
    .venv/bin/python benchmarks/bench_sweep.py cache --smoke         # tiny sizes: does it run?
    .venv/bin/python benchmarks/bench_sweep.py cache --size 224 --smoke
    .venv/bin/python benchmarks/bench_sweep.py overhead --smoke
    .venv/bin/python benchmarks/bench_sweep.py scale --smoke         # 8 trials

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

``cache --size 224``: where the cache matters, a backbone at 224 px. Fashion-MNIST classes 5-9
resized to 224 px and stored as JPEG in an image folder, ingested with ``ingest_folder`` (100
training and 100 validation images), mobilenet_v2 α 1.0 from a weights file the benchmark makes
(random weights, BatchNorm statistics adapted on the source task: not pretrained), the same
16-trial search, at most 6 epochs, ASHA's rungs at 2 and 4 (``benchmarks/cache224.py``). Goal
≥ 15× at best accuracy within 1 point. Then the cache build's peak RSS on 500 other images, each
build in a process of its own: the former fixed batch of 256 images against the memory budget
(``tl_ray.feature_cache.build_batch_size``).

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

``scale``: ``--trials`` trials (default 500) of the quickstart target's head on cached features
(built before the clock starts), at most 6 epochs of 300 steps (about 1 s of work per trial, ASHA
stopping most after 2 epochs), ASHA (grace period 2), a checkpoint
only when a trial improves (``tune.checkpoint_on: improvement``), two at a time: random search, then
Optuna's TPE (``--searches``). Every other spec field keeps tl-ray's default unless ``--set
KEY=VALUE`` changes it (to measure a setting before and after). Side by side it prints wall /
ideal (ideal: the trials' epoch times / 2), the driver's peak RSS at 0, 1/5, 1/2 and all of the trials,
the experiment folder's bytes per trial, how often and for how long the driver saved Tune's experiment
state (the trial loop waits meanwhile; timed by wrapping Tune's saving method, a measurement only),
Tune's "experiment checkpoint snapshotting ... bottleneck" warnings, the time ``build_report`` takes
on the experiment, and the Optuna searcher's time per suggestion at its 50th and 500th (timed
outside Tune, the same searcher told every epoch of every earlier trial). ``--nodes N`` runs on a
``ray.cluster_utils.Cluster`` of N 1-CPU nodes (the head, where the driver runs, has none), N trials
at a time. The feature cache is read once per trial process and kept in memory
(``tl_ray.train.cached_inputs.MemoryRows``): a reused actor's later trials read nothing.

``--smoke``: tiny sizes, to check that a benchmark runs (its figures mean
nothing): a store of its own (``benchmarks/.store/smoke``), 20 to 30 images per class (224 px: 8,
and 6 for the build's memory),
``fashion-base`` pretrained for one step, 2 trials of 2 epochs (cache) or 3
trials of 3 epochs of 5 steps (overhead: on 2 cores, more than run at once, so
an actor is reused), 8 trials of 3 epochs of 5 steps (scale).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

from ray import tune

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
# cache --size 224: 6 epochs, ASHA rungs at 2 and 4 (grace period 2, reduction factor 2), checkpoints there.
CACHE_224 = {"train.epochs": 6, "tune.grace_period": 2, "train.checkpoint_every": 2}


def target_spec(store: str, extra: list[str] | None = None, **overrides):
    """The quickstart target as the sweep benchmarks run it; ``extra``: further ``KEY=VALUE`` overrides."""
    from tl_ray.spec import load_spec

    # Checkpoints every 5 epochs (the ASHA rungs: grace period 5, reduction factor 2), in every run; trials as
    # many at a time as the CPUs allow (the quickstart runs its sweep one at a time).
    sets = [f"storage={store}", "data.augment.flip=false", "model.freeze.mode=feature_extraction", "tune.seed=0",
            "train.checkpoint_every=5", "tune.max_concurrent_trials=0", *(extra or [])]
    sets += [f"{k}={v}" for k, v in overrides.items()] + [f"tune.space={json.dumps(SPACE)}"]
    return load_spec(ROOT / "jobs/quickstart/target.yaml", overrides=sets)


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


def cache_specs(args) -> tuple[list, str]:
    """The two runs' specs of ``cache`` (naive, then cache + ASHA) and a description of the task."""
    sizes = {"tune.num_samples": args.trials, **(SMOKE_CACHE if args.smoke else {})}
    extra: list[str] = []
    if args.size == 224:
        import cache224

        uris = cache224.prepare_data(args.store, args.smoke)
        extra = cache224.sets(args.store, uris, cache224.prepare_weights(args.store))
        sizes.update(CACHE_224 if not args.smoke else {**CACHE_224, **SMOKE_CACHE})
        task = "224-px Fashion-MNIST 5-9 JPEG, mobilenet_v2 alpha 1.0 (not pretrained: BatchNorm adapted)"
    else:
        prepare(args.store, args.smoke)
        task = "the quickstart target at 32 px, mobilenet_v2 alpha 0.35 from fashion-base"
    specs = [target_spec(args.store, extra, **overrides, **sizes) for overrides in (
        {"train.feature_cache": "off", "tune.scheduler": "fifo"},
        {"train.feature_cache": "auto", "tune.scheduler": "asha"})]
    return specs, task


def bench_cache(args, stamp: str) -> dict:
    specs, task = cache_specs(args)
    features.purge(args.store)  # the cached run pays for building the cache inside its timed sweep
    print(f"task: {task}; {args.trials} trials, at most {specs[0].train.epochs} epochs", flush=True)
    runs = {}
    for label, spec in zip(("a naive (no cache, FIFO)", "b cache + ASHA"), specs):
        result, wall = sweep(spec, f"bench-cache{args.size}-{stamp}-{label[0]}")
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
    goal = 15 if args.size == 224 else 5
    print(f"b vs a: same {args.trials} configurations {same}; wall time ratio {ratio:.2f}x "
          f"(goal >= {goal}x: {'met' if ratio >= goal else 'missed'}); best val accuracy {gap:+.2f} points below "
          f"naive (goal within 1 point: {'met' if abs(gap) <= 1 else 'missed'})")
    for r in runs.values():
        r.pop("configs")
    out = {"runs": runs, "ratio": ratio, "accuracy_gap_points": gap, "same_configs": same}
    if args.size == 224:
        out["build_peak_rss"] = build_memory(specs[1], args.store, args.smoke)
    return out


def build_memory(spec, store: str, smoke: bool) -> dict:
    """The cache build's peak RSS on the memory dataset: the former fixed batch against the memory budget."""
    import cache224

    from tl_ray.data.manifest import read_manifest

    uri = cache224.prepare_data(store, smoke)["memory"]
    rows = read_manifest(uri).num_rows
    out = {}
    for label, budget in ((f"fixed batch of {features.BATCH} (before)", 1e9),
                          (f"budget {features.MEMORY_MIB} MiB (now)", features.MEMORY_MIB)):
        peak, batch = cache224.build_peak_rss(spec, uri, spec.model.weights, budget)
        out[label] = {"peak_rss_mib": peak, "batch": batch}
        print(f"cache build of {rows} images at 224 px, {label}: batch {batch}, peak RSS {peak:,.0f} MiB", flush=True)
    return out


def build_features(spec) -> None:
    """The feature-cache entries of the spec's train and validation sets, built now if missing."""
    from tl_ray.registry.weights import resolve_weights

    weights = resolve_weights(spec.model.weights, spec.storage)
    for split in (spec.data.train, spec.data.validation):
        features.ensure_features(spec, spec.resolve(split), weights)


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

    from tl_ray.tune.cluster import connect_ray

    prepare(store, smoke)
    spec = overhead_spec(store, trials, steps)
    build_features(spec)  # before the clock starts: every trial does the same work
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


# scale: head-only trials on the quickstart target's cached features, ASHA, random search then Optuna TPE.
SCALE = {"train.epochs": 6, "train.steps_per_epoch": 300, "tune.grace_period": 2, "train.checkpoint_every": 1,
         "tune.checkpoint_on": "improvement"}
SMOKE_SCALE = {"train.epochs": 3, "train.steps_per_epoch": 5, "tune.grace_period": 1}
OPTUNA_AT = (50, 500)  # the suggestions timed (the n-th suggestion of a study); --smoke: 10 and 20


class DriverMemory(tune.Callback):
    """The driver's peak RSS (MiB): ``peaks[n]`` once ``n`` trials have ended (``peaks[0]``: the sweep's start)."""

    def __init__(self):
        self.peaks: list[float] = []

    def setup(self, **info) -> None:
        self.peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    on_trial_error = on_trial_complete


class StateSaves(logging.Handler):
    """Instruments Tune's experiment-state saving in this driver: the time spent in it (the trial loop waits
    meanwhile), the saves made, and Tune's warnings that snapshotting is a bottleneck."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seconds, self.saves, self.warnings = 0.0, 0, 0

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings += "bottleneck" in record.getMessage()

    def __enter__(self):
        from ray.tune.execution import experiment_state

        manager, original = experiment_state._ExperimentCheckpointManager, None
        original = manager.sync_up_experiment_state

        def timed(mgr, *args, **kwargs):
            start, before = time.perf_counter(), mgr._last_save_time
            try:
                return original(mgr, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.saves += mgr._last_save_time != before

        self._restore = lambda: setattr(manager, "sync_up_experiment_state", original)
        manager.sync_up_experiment_state = timed
        self._logger = logging.getLogger(experiment_state.__name__)
        self._logger.setLevel(logging.WARNING)  # tl-ray's console mutes ray.tune below CRITICAL
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
        self._logger.removeHandler(self)


def folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def optuna_suggest_ms(spec, at: tuple[int, int]) -> dict[int, float]:
    """Milliseconds per suggestion of the sweep's Optuna searcher at the ``at`` suggestions (median of
    the 9 around each), each earlier trial told every epoch and its end, as Tune does (outside Tune)."""
    import random

    from tl_ray.tune.tuner import _search_alg

    searcher, rng = _search_alg(spec), random.Random(0)
    times = []
    for i in range(max(at) + 4):
        start = time.perf_counter()
        searcher.suggest(f"t{i}")
        times.append((time.perf_counter() - start) * 1000)
        for epoch in range(1, spec.train.epochs + 1):
            searcher.on_trial_result(f"t{i}", {spec.tune.metric: rng.random(), "training_iteration": epoch})
        searcher.on_trial_complete(f"t{i}", {spec.tune.metric: rng.random()})
    return {n: statistics.median(times[n - 5:n + 4]) for n in at}


def scale_run(spec, name: str, concurrency: int) -> dict:
    """One sweep of the spec through ``run_tuner`` (as ``run_sweep`` runs it), instrumented; then its report."""
    from tl_ray.tune.report import build_report
    from tl_ray.tune.space import to_param_space
    from tl_ray.tune.trainable import tune_trial
    from tl_ray.tune.tuner import run_tuner

    memory = DriverMemory()
    trainable = tune.with_parameters(tune_trial, base_spec=spec.to_dict())
    with StateSaves() as saves:
        start = time.perf_counter()
        result = run_tuner(spec, name, trainable, to_param_space(spec.tune.space), callbacks=(memory,))
        wall = time.perf_counter() - start
    rows = trial_rows(result)
    out = summary(wall, [sum(r["epoch_s"] for r in rs) for rs in rows], [], concurrency)
    n = len(rows)
    out.update(folder_bytes_per_trial=folder_bytes(result.experiment_path) / n, state_saves=saves.saves,
               state_save_s=saves.seconds, bottleneck_warnings=saves.warnings, best=result.best.metric,
               trial_epochs=sum(len(rs) for rs in rows),
               checkpoints=sum(r.get("checkpoint_dir_name") is not None for rs in rows for r in rs),
               driver_peak_rss_mb={k: memory.peaks[min(k, len(memory.peaks) - 1)] for k in (0, n // 5, n // 2, n)})
    start = time.perf_counter()
    build_report(result.experiment_path, spec.tune.metric, spec.tune.mode, planned_epochs=spec.train.epochs)
    out["report_s"] = time.perf_counter() - start
    print(f"{name}: {n} trials in {wall:.0f} s, wall / ideal {out['ratio']:.2f}", flush=True)
    return out


def start_cluster(nodes: int):
    """A simulated cluster on this machine: a head without CPUs (the driver) and ``nodes`` nodes of 1 CPU."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return cluster


def print_scale(runs: dict, optuna_ms: dict | None) -> None:
    labels = list(runs)
    lines = [("trials (trial-epochs)", lambda r: f"{r['trials']} ({r['trial_epochs']})"),
             ("checkpoints written", lambda r: str(r["checkpoints"])),
             ("wall s / ideal s", lambda r: f"{r['wall_s']:.0f} / {r['ideal_s']:.0f}"),
             ("wall / ideal (goal <= 1.3)", lambda r: f"{r['ratio']:.2f}"),
             ("driver peak RSS MiB at " + "/".join(map(str, runs[labels[0]]["driver_peak_rss_mb"])) + " trials",
              lambda r: " / ".join(f"{v:.0f}" for v in r["driver_peak_rss_mb"].values())),
             ("experiment folder KiB per trial", lambda r: f"{r['folder_bytes_per_trial'] / 1024:.1f}"),
             ("experiment-state saves (driver s)", lambda r: f"{r['state_saves']} ({r['state_save_s']:.1f} s)"),
             ("snapshot bottleneck warnings (goal 0)", lambda r: str(r["bottleneck_warnings"])),
             ("tl-ray report s (goal <= 10)", lambda r: f"{r['report_s']:.1f}"),
             ("best val_accuracy", lambda r: f"{r['best']:.4f}")]
    print(f"\n{'':<40}" + "".join(f"{label:>28}" for label in labels))
    for title, cell in lines:
        print(f"{title:<40}" + "".join(f"{cell(runs[label]):>28}" for label in labels))
    if optuna_ms:
        trial_ms = 1000 * runs[labels[-1]]["ideal_s"] * runs[labels[-1]]["concurrency"] / runs[labels[-1]]["trials"]
        print("Optuna TPE suggestion (outside Tune, same searcher): "
              + ", ".join(f"{ms:.1f} ms at trial {n}" for n, ms in optuna_ms.items())
              + f"; {max(optuna_ms.values()) / trial_ms:.1%} of a mean trial's work ({trial_ms:.0f} ms; goal <= 10%)")


def bench_scale(args, stamp: str) -> dict:
    import ray

    from tl_ray.spec import validate

    prepare(args.store, args.smoke)
    sizes = {**(SMOKE_SCALE if args.smoke else SCALE), "tune.num_samples": args.trials}
    if args.nodes:
        ray.shutdown()  # the local Ray that building the data or fashion-base may have started
    cluster = start_cluster(args.nodes) if args.nodes else None
    concurrency = args.nodes or 2
    runs, optuna_ms = {}, None
    try:
        for search in args.searches.split(","):
            data = target_spec(args.store, **{"train.feature_cache": "auto", "tune.scheduler": "asha",
                                              "tune.search": search, "tune.max_concurrent_trials": concurrency},
                               **sizes).to_dict()
            spec = validate(apply_sets(data, args.set))
            build_features(spec)
            runs[f"{search} + ASHA"] = scale_run(spec, f"bench-scale-{stamp}-{search}", concurrency)
            if search == "optuna":
                optuna_ms = optuna_suggest_ms(spec, (10, 20) if args.smoke else OPTUNA_AT)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    where = f"{args.nodes} simulated nodes of 1 CPU" if args.nodes else "local Ray"
    print(f"\n{args.trials} trials, {concurrency} at once on {where}; settings: {' '.join(args.set) or 'defaults'}")
    print_scale(runs, optuna_ms)
    return {"runs": runs, "optuna_suggest_ms": optuna_ms, "sets": args.set}


def apply_sets(data: dict, sets: list[str]) -> dict:
    from tl_ray.spec import apply_overrides

    return apply_overrides(data, sets) if sets else data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["cache", "overhead", "scale"])
    parser.add_argument("--store", help="store root, data and models reused (default: benchmarks/.store, "
                                        "with --smoke benchmarks/.store/smoke)")
    parser.add_argument("--trials", type=int, help="number of trials (default: cache 16, overhead 32; --smoke 2 and 3)")
    parser.add_argument("--steps", type=int, help="overhead: steps per epoch of each trial, 3 epochs "
                                                  "(default 300, about 1 s of work per trial; --smoke 5)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="overhead: run it this many times, each in a new driver process on a new local Ray, "
                             "and print each run's median and range")
    parser.add_argument("--searches", default="random,optuna", help="scale: the searches run, comma-separated")
    parser.add_argument("--nodes", type=int, default=0,
                        help="scale: run on a simulated cluster of this many 1-CPU nodes (ray.cluster_utils)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="scale: a spec field over the benchmark's (repeatable), e.g. tune.keep_checkpoints=0")
    parser.add_argument("--size", type=int, choices=[32, 224], default=32,
                        help="cache: 32 (the quickstart target) or 224 (mobilenet_v2 alpha 1.0 on 224-px JPEG "
                             "images, and the cache build's peak memory)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    args.store = args.store or str(ROOT / "benchmarks/.store" / ("smoke" if args.smoke else ""))
    args.trials = args.trials or {(False, "cache"): 16, (False, "overhead"): 32, (True, "cache"): 2,
                                  (True, "overhead"): 3, (False, "scale"): 500, (True, "scale"): 8}[args.smoke, args.which]
    args.steps = args.steps or (5 if args.smoke else 300)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.which == "cache":
        out = bench_cache(args, stamp)
    elif args.which == "scale":
        out = bench_scale(args, stamp)
    elif args.repeat > 1:
        out = repeat_overhead(args)
    else:
        out = bench_overhead(args.store, stamp, args.trials, args.steps, args.smoke)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
