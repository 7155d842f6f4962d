"""Sweep benchmarks, side by side in one run.

    .venv/bin/python benchmarks/bench_sweep.py cache      # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_sweep.py overhead   # ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_sweep.py overhead --modes fork,plain --repeat 4 --cluster
    .venv/bin/python benchmarks/bench_sweep.py overhead --modes fork,plain --repeat 3 --cluster --templates-ahead
    .venv/bin/python benchmarks/bench_sweep.py overhead --modes fork,plain --repeat 6 --template-start both

``cache``: the quickstart target (jobs/quickstart/target.yaml: mobilenet_v2 α 0.35
transferred from the fashion-base model, 500 labelled images, 1,500 for
validation, at most 20 epochs), augmentation off and the base frozen, a 16-trial
sweep over head size, dropout and learning rate — the same 16 sampled
configurations in both runs — run

  (a) naively: every trial runs the base on every step (``train.feature_cache: off``), FIFO;
  (b) with tl-ray's feature cache and ASHA (its default scheduler);
  (c) as (b), with ``tune.trial_process: reuse`` (the next trial runs in a finished trial's process).

(a) and (b) both run each trial in its own forked process (``tune.trial_process: fork``,
the default), so their ratio is what the cache and ASHA save.

It prints the wall times, the ratios to (a) (goal ≥ 5×) and the best validation
accuracies (goal: within 1 point of (a)).

``overhead``: 32 trials of a fixed amount of work (a small head on cached
features, a fixed number of steps), as many at once as there are CPUs.
Ideal = sum of the trials' epoch times / concurrency; prints wall / ideal (goal
≤ 1.3) and what the rest is made of, per trial: Ray worker and actor start,
TensorFlow import, set-up before the first step (data, model, weights), and what
is left (Tune's bookkeeping, checkpoints, reports). Once per
``tune.trial_process``: a new Ray actor per trial, forked processes of 8 trials
each (the default: forked from the node's template, which the sweep starts), the
same forked from a template per actor, a forked process per trial, and reused
actor processes;
then "plain": the same trials without Ray or Tune, as many Python processes as
trials at once, each training its share back to back with the same loop, and
each sweep's wall time against it. ``--repeat N`` runs them N times, each in a
new driver process (as each ``tl-ray tune`` is), and prints each one's median
and range; with ``--cluster`` the rounds are jobs of one ``ray start`` cluster,
so each after the first finds the trial template the previous job kept
(``tune.template_keep_alive_s``); with ``--templates-ahead`` the cluster starts its
templates itself (``tl-ray templates start``) before the first job. Without ``--cluster`` each round starts
a local Ray, and with it the node's trial template (``tl_ray.train.driver_template``), as ``tl-ray tune``
does; ``--template-start sweep`` leaves the template to the sweep, and ``both`` alternates the two, printing
Ray's start plus the sweep for each. Also the driver's memory before and after,
and each trial process's peak RSS, first trial against last, and (forked trials)
each actor's own RSS at its first and its last trial.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = {
    "model.head.dense": "choice([[32], [64], [128], [256]])",
    "model.head.dropout": "uniform(0.0, 0.5)",
    "train.learning_rate": "loguniform(3.0e-4, 3.0e-3)",
}


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def target_spec(store: str, **overrides):
    from tl_ray.spec import load_spec

    # Checkpoints every 5 epochs (the ASHA rungs: grace period 5, reduction factor 2), in every run.
    sets = [f"storage={store}", "data.augment.flip=false", "model.freeze.mode=feature_extraction", "tune.seed=0",
            "train.checkpoint_every=5"]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    spec = load_spec(ROOT / "jobs/quickstart/target.yaml", overrides=sets)
    data = spec.to_dict()
    data["tune"]["space"] = SPACE
    from tl_ray.spec import validate

    return validate(data)


def prepare(store: str) -> None:
    """The quickstart's data and upstream model, reused when the store has them."""
    from tl_ray.pipeline import ensure_data, ensure_upstream
    from tl_ray.spec import load_spec

    spec = load_spec(ROOT / "jobs/quickstart/target.yaml", overrides=[f"storage={store}"])
    ensure_data(spec)
    ensure_upstream(spec)


KEEP_TEMPLATES = False  # --keep-templates: a template this run's sweeps leave is left for the cluster's next job
TEMPLATE_WITH_RAY = True  # --template-start sweep: a new local Ray starts without the driver's template


def sweep(spec, name: str):
    """Runs the sweep; returns (result, its wall time, the time Ray took to start before it: 0 when up)."""
    import ray

    from tl_ray.train.node_template import stop_kept_templates, stop_node_templates
    from tl_ray.tune.cluster import connect_ray
    from tl_ray.tune.sweep import run_sweep

    # The cluster's start is not the sweep's: every sweep finds Ray up. A new local Ray starts with the node's
    # trial template (tl_ray.train.driver_template), as `tl-ray tune` starts it, unless --template-start sweep.
    ray_s = 0.0
    if not ray.is_initialized():
        begin = time.perf_counter()
        connect_ray(spec if TEMPLATE_WITH_RAY else None)
        ray_s = time.perf_counter() - begin
    start = time.perf_counter()
    result = run_sweep(spec, experiment=name)
    wall = time.perf_counter() - start
    # Each run starts its node's template (tl_ray.train.node_template) itself: none outlives its sweep here,
    # neither the driver's nor one kept for the cluster's next sweeps (tune.template_keep_alive_s).
    stop_node_templates()
    if not KEEP_TEMPLATES:
        stop_kept_templates()
    return result, wall, ray_s


def trial_rows(result) -> list[list[dict]]:
    from tl_ray import store

    out = []
    for trial in store.list_dir(result.experiment_path):
        if "_trial_" in trial:
            text = store.read_text(store.join(result.experiment_path, trial, "result.json"))
            out.append([json.loads(line) for line in text.splitlines() if line.strip()])
    return out


def bench_cache(store: str, stamp: str, trials: int) -> dict:
    from tl_ray.feature_cache import purge

    prepare(store)
    purge(store)  # the cached runs pay for building the cache inside their timed sweep
    runs = {}
    for label, overrides in (
        ("a naive (no cache, FIFO)", {"train.feature_cache": "off", "tune.scheduler": "fifo"}),
        ("b cache + ASHA", {"train.feature_cache": "auto", "tune.scheduler": "asha"}),
        ("c cache + ASHA + reused actors", {"train.feature_cache": "auto", "tune.scheduler": "asha",
                                            "tune.trial_process": "reuse"}),
    ):
        if label[0] == "c":
            purge(store)
        spec = target_spec(store, **overrides, **{"tune.num_samples": trials})
        result, wall, _ = sweep(spec, f"bench-cache-{stamp}-{label[0]}")
        rows = trial_rows(result)
        runs[label] = {
            "wall_s": wall,
            "best_val_accuracy": result.best.metric,
            "trials": len(result.rows),
            "epochs": sum(r.epochs for r in result.rows),
            "configs": sorted(json.dumps(r.params, sort_keys=True) for r in result.rows),
            "mean_epoch_s": statistics.mean(x["epoch_s"] for rs in rows for x in rs),
            "mean_startup_s": statistics.mean(
                sum(rs[0].get(k, 0.0) for k in ("startup_worker_s", "startup_import_s", "startup_setup_s"))
                for rs in rows),
        }
        r = runs[label]
        print(f"{label}: {wall:.0f} s, best val_accuracy {r['best_val_accuracy']:.4f}, {r['epochs']} epochs in "
              f"{r['trials']} trials, mean epoch {r['mean_epoch_s']:.2f} s, mean start-up {r['mean_startup_s']:.1f} s",
              flush=True)
    a = runs["a naive (no cache, FIFO)"]
    out = {"runs": runs}
    for label, r in runs.items():
        if label[0] == "a":
            continue
        same = r["configs"] == a["configs"]
        ratio = a["wall_s"] / r["wall_s"]
        gap = (a["best_val_accuracy"] - r["best_val_accuracy"]) * 100
        print(f"{label} vs naive: same {trials} configurations {same}; wall time ratio {ratio:.2f}x "
              f"(goal >= 5x: {'met' if ratio >= 5 else 'missed'}); best val accuracy {gap:+.2f} points below naive "
              f"(goal within 1 point: {'met' if gap <= 1 else 'missed'})")
        out[label] = {"ratio": ratio, "accuracy_gap_points": gap, "same_configs": same}
    for r in runs.values():
        r.pop("configs")
    return out


def overhead_run(spec, name: str) -> dict:
    import ray

    before = rss_mb()
    result, wall, ray_s = sweep(spec, name)
    after = rss_mb()
    concurrency = min(spec.tune.num_samples, int(ray.cluster_resources().get("CPU", 1)) // spec.train.cpus_per_worker)
    rows = [rs for rs in trial_rows(result) if rs]
    rows.sort(key=lambda rs: rs[0]["timestamp"] - rs[0]["time_total_s"])
    work = [sum(r["epoch_s"] for r in rs) for rs in rows]
    ideal = sum(work) / concurrency
    parts = {k: statistics.mean(rs[0].get(k, 0.0) for rs in rows)
             for k in ("startup_worker_s", "startup_import_s", "startup_setup_s")}
    parts["work (epochs)"] = statistics.mean(work)
    parts["rest (Tune bookkeeping, checkpoints, reports)"] = wall * concurrency / len(rows) - sum(parts.values())
    peaks = [max(r["peak_rss_mb"] for r in rs) for rs in rows]
    # Forked trials: each actor's own RSS at its first and its last trial (Tune's ``pid`` is the actor).
    actors: dict[int, list[float]] = {}
    for rs in rows:
        if "actor_rss_mb" in rs[-1]:
            actors.setdefault(rs[-1]["pid"], []).append(rs[-1]["actor_rss_mb"])
    # Forked trials: the template processes they were forked from (one per node, or one per actor).
    templates = {r["template_pid"] for rs in rows for r in rs if "template_pid" in r}
    return {"trials": len(rows), "concurrency": concurrency, "wall_s": wall, "ideal_s": ideal, "ratio": wall / ideal,
            "ray_start_s": ray_s,
            "templates": len(templates),
            "per_trial_s": parts, "trial_peak_rss_mb": peaks, "driver_rss_mb": [before, after],
            "actor_rss_mb": {str(pid): [v[0], v[-1], len(v)] for pid, v in actors.items()}}


def _plain_slot(base: dict, dropouts: list[float], out) -> None:
    """One slot of the plain run: a Python process that trains its trials back to back, no Ray."""
    from tl_ray.spec import apply_overrides, validate
    from tl_ray.train.loop import ListReporter, train
    from tl_ray.train.runtime import begin_trial, configure_tensorflow

    configure_tensorflow(1, 0)
    work = []
    for dropout in dropouts:
        begin_trial()  # frees the previous trial's Keras state
        reporter = ListReporter()
        train(validate(apply_overrides(base, [f"model.head.dropout={dropout}"])), reporter)
        work.append(sum(m["epoch_s"] for m in reporter.history))
    out.put(work)


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
    procs = [ctx.Process(target=_plain_slot, args=(base, dropouts[i::concurrency], out)) for i in range(concurrency)]
    for proc in procs:
        proc.start()
    work = [w for _ in procs for w in out.get()]
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join()
    return {"trials": len(work), "wall_s": wall, "ideal_s": sum(work) / concurrency,
            "ratio": wall / (sum(work) / concurrency), "work_s": statistics.mean(work)}


@contextlib.contextmanager
def own_templates(on: bool):
    """With ``on``, the sweep starts no node template: each trial actor starts its own at its first trial."""
    from tl_ray.train import node_template

    start = node_template.start_node_templates
    if on:
        node_template.start_node_templates = lambda where=None: None
    try:
        yield
    finally:
        node_template.start_node_templates = start


def bench_overhead(store: str, stamp: str, trials: int, modes: list[str], steps: int = 100) -> dict:
    from tl_ray.feature_cache import ensure_features
    from tl_ray.registry.weights import resolve_weights
    from tl_ray.spec import validate

    prepare(store)
    spec = target_spec(store, **{"train.feature_cache": "auto", "tune.scheduler": "fifo",
                                 "tune.num_samples": trials, "train.epochs": 3, "train.steps_per_epoch": steps,
                                 "train.checkpoint_every": 3})
    data = spec.to_dict()
    data["tune"]["space"] = {"model.head.dropout": "uniform(0.0, 0.5)"}
    spec = validate(data)
    # The cache exists before the clock starts: every trial does the same work.
    ensure_features(spec, spec.resolve(spec.data.train), resolve_weights(spec.model.weights, spec.storage))
    ensure_features(spec, spec.resolve(spec.data.validation), resolve_weights(spec.model.weights, spec.storage))
    runs = {}
    for label, mode in (("a a new actor per trial (actor)", "actor"),
                        ("b forked processes, 8 trials each (fork, default)", "fork"),
                        ("c as b, each actor forking from a template of its own", "forkown"),
                        ("d a forked process per trial (fork, trials_per_process 1)", "fork1"),
                        ("e reused actor processes (reuse)", "reuse")):
        if mode not in modes:
            continue
        data["tune"]["trial_process"] = mode.removesuffix("1").removesuffix("own")
        # forkown: no node template at all, neither this run's nor one kept by an earlier job.
        data["tune"]["template_keep_alive_s"] = 0.0 if mode == "forkown" else spec.tune.template_keep_alive_s
        data["tune"]["trials_per_process"] = 1 if mode == "fork1" else 8
        with own_templates(mode == "forkown"):
            runs[label] = r = overhead_run(validate(data), f"bench-overhead-{stamp}-{label[0]}")
        print(f"{label}: {r['trials']} trials, concurrency {r['concurrency']}: wall {r['wall_s']:.1f} s, "
              f"ideal {r['ideal_s']:.1f} s, ratio {r['ratio']:.2f} (goal <= 1.3: {'met' if r['ratio'] <= 1.3 else 'missed'})"
              + (f"; {r['templates']} template process(es)" if r["templates"] else "")
              + (f"; Ray's start before it {r['ray_start_s']:.1f} s (template "
                 f"{'started with Ray' if TEMPLATE_WITH_RAY else 'started by the sweep'})" if r["ray_start_s"] else ""),
              flush=True)
    if "plain" in modes:
        concurrency = next(iter(runs.values()))["concurrency"] if runs else 2
        plain = plain_run(spec, concurrency)
        print(f"f plain (the same trials back to back in {concurrency} Python processes, no Ray): wall "
              f"{plain['wall_s']:.1f} s, ideal {plain['ideal_s']:.1f} s, ratio {plain['ratio']:.2f}, work per trial "
              f"{plain['work_s']:.2f} s", flush=True)
        for label, r in runs.items():
            r["vs_plain"] = r["wall_s"] / plain["wall_s"]
            print(f"{label}: wall {r['wall_s']:.1f} s = {r['vs_plain']:.2f}x the plain run's", flush=True)
    if runs:
        print("per trial, mean seconds of one slot:" + "".join(f"  {k[:28]:>28}" for k in runs))
        for part in next(iter(runs.values()))["per_trial_s"]:
            print(f"  {part:<48}" + "".join(f"  {r['per_trial_s'][part]:>28.2f}" for r in runs.values()))
    for label, r in runs.items():
        peaks = r["trial_peak_rss_mb"]
        print(f"{label}: trial peak RSS first {peaks[0]:.0f} MiB, last {peaks[-1]:.0f} MiB, max {max(peaks):.0f} MiB; "
              f"driver RSS {r['driver_rss_mb'][0]:.0f} -> {r['driver_rss_mb'][1]:.0f} MiB")
        for pid, (first, last, n) in r["actor_rss_mb"].items():
            print(f"  actor {pid}: {n} trials, its RSS at the first {first:.0f} MiB, at the last {last:.0f} MiB")
    if "plain" in modes:
        runs["f plain"] = plain
    return runs


def repeat_overhead(args) -> dict:
    """``overhead`` ``args.repeat`` times, each in a new driver process, as every ``tl-ray tune`` is. Prints each
    mode's wall / ideal, median and range.

    Each round starts a local Ray of its own; with ``args.cluster``, every round is instead a job of one
    ``ray start`` cluster (started before the first): the first round's sweep starts the node's template, and
    each later one finds the template the previous job kept (``tune.template_keep_alive_s``).
    """
    import subprocess
    import tempfile

    ratios: dict[str, dict[str, list[float]]] = {}
    with_ray: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    rounds = []
    with contextlib.ExitStack() as stack:
        env = dict(os.environ)
        if args.cluster:
            env = stack.enter_context(ray_start_cluster())
        if args.templates_ahead:  # the cluster's set-up, before any job: not on any round's clock
            subprocess.run([sys.executable, "-m", "tl_ray.cli", "templates", "start"], check=True, env=env)
        for i in range(args.repeat):
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, __file__, "overhead", "--store", args.store, "--modes", args.modes,
                       "--steps", str(args.steps), "--json", tmp.name]
                if args.trials:
                    cmd += ["--trials", str(args.trials)]
                if args.cluster:
                    cmd += ["--keep-templates"]
                # both: alternate rounds with the template started with Ray and by the sweep, side by side
                start_with = args.template_start if args.template_start != "both" else ("ray", "sweep")[i % 2]
                cmd += ["--template-start", start_with]
                print(f"== round {i + 1} of {args.repeat}: {' '.join(c for c in cmd[1:] if c != tmp.name)}",
                      flush=True)
                subprocess.run(cmd, check=True, env=env)
                runs = json.loads(Path(tmp.name).read_text())
            rounds.append(runs)
            when = ("first job (templates started with the cluster)" if args.templates_ahead else
                    "first job (no template yet)") if args.cluster and i == 0 else (
                "later jobs (the template kept)" if args.cluster else
                f"new local Ray, template started {'with Ray' if start_with == 'ray' else 'by the sweep'}")
            for label, r in runs.items():
                ratios.setdefault(label, {}).setdefault(when, []).append(r["ratio"])
                if r.get("ray_start_s"):  # Ray's start and the sweep, as the user waits for them
                    with_ray.setdefault(label, {}).setdefault(when, []).append(
                        (r["ray_start_s"], r["wall_s"], r["ideal_s"]))
    print(f"wall / ideal over {args.repeat} rounds (goal <= 1.3):")
    for label, by_when in ratios.items():
        for when, values in by_when.items():
            print(f"  {label}, {when}: median {statistics.median(values):.2f}, range {min(values):.2f}-"
                  f"{max(values):.2f}  ({', '.join(f'{v:.2f}' for v in values)})")
    if with_ray:
        print("Ray's start, then the sweep (the rounds that started a local Ray), mean seconds:")
        for label, by_when in with_ray.items():
            for when, values in by_when.items():
                ray_s, wall, ideal = (statistics.mean(v[i] for v in values) for i in range(3))
                print(f"  {label}, {when}: Ray's start {ray_s:.1f} + sweep {wall:.1f} = {ray_s + wall:.1f} s, "
                      f"ideal {ideal:.1f} s ({len(values)} rounds)")
    return {"rounds": rounds, "ratios": ratios, "ray_start_and_sweep": with_ray}


@contextlib.contextmanager
def ray_start_cluster(cpus: int | None = None):
    """A one-node ``ray start --head`` cluster in a temp dir and on ports of its own, as a long-lived cluster
    that jobs join; yields the environment of a job (RAY_ADDRESS). Stopped by ending its process group."""
    import secrets
    import shutil
    import signal
    import socket
    import subprocess
    import tempfile

    def port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    temp_dir = tempfile.mkdtemp(prefix="tlb-", dir="/tmp")  # Unix socket paths are limited to ~107 bytes
    gcs = port()
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_ADDRESS=f"127.0.0.1:{gcs}", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}",
           f"--num-cpus={cpus or os.cpu_count()}", f"--temp-dir={temp_dir}", "--include-dashboard=false",
           "--disable-usage-stats", f"--ray-client-server-port={port()}", f"--dashboard-agent-listen-port={port()}",
           f"--dashboard-agent-grpc-port={port()}", f"--runtime-env-agent-port={port()}",
           f"--metrics-export-port={port()}"]
    head = subprocess.Popen(cmd, env=dict(env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0"),
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {head.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", gcs), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("ray start --head did not open its port in 120 s")
            time.sleep(0.2)
        yield env
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["cache", "overhead"])
    parser.add_argument("--store", default=str(ROOT / "benchmarks/.store"), help="store root (data and models reused)")
    parser.add_argument("--trials", type=int, help="number of trials (default: cache 16, overhead 32)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--modes", default="actor,fork,forkown,fork1,reuse,plain",
                        help="overhead: the tune.trial_process modes to run (forkown: fork, a template per actor "
                             "instead of per node; fork1: fork, one trial per process; plain: the same trials "
                             "without Ray)")
    parser.add_argument("--steps", type=int, default=100, help="overhead: steps per epoch of each trial (3 epochs)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="overhead: run the modes this many times, each time in a new driver process on a new "
                             "local Ray (as each `tl-ray tune` is), and print each mode's median and range")
    parser.add_argument("--cluster", action="store_true",
                        help="overhead with --repeat: every round a job of one `ray start` cluster, the later ones "
                             "finding the template the previous job kept")
    parser.add_argument("--templates-ahead", action="store_true",
                        help="with --cluster: `tl-ray templates start` after `ray start`, before the first round, "
                             "as a cluster's set-up would")
    parser.add_argument("--template-start", choices=["ray", "sweep", "both"], default="ray",
                        help="overhead, on a new local Ray: start the node's trial template with Ray (as `tl-ray "
                             "tune` does) or only with the sweep; with --repeat, both alternates them")
    parser.add_argument("--keep-templates", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.templates_ahead and not args.cluster:
        parser.error("--templates-ahead needs --cluster: templates are kept only on a `ray start` cluster")
    if args.cluster and args.repeat < 2:
        parser.error("--cluster needs --repeat 2 or more: its later rounds are what it measures")
    if args.template_start == "both" and args.repeat < 2:
        parser.error("--template-start both needs --repeat 2 or more: it alternates the rounds")
    global KEEP_TEMPLATES, TEMPLATE_WITH_RAY
    KEEP_TEMPLATES = args.keep_templates
    TEMPLATE_WITH_RAY = args.template_start != "sweep"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.which == "cache":
        out = bench_cache(args.store, stamp, args.trials or 16)
    elif args.repeat > 1:
        out = repeat_overhead(args)
    else:
        out = bench_overhead(args.store, stamp, args.trials or 32, args.modes.split(","), args.steps)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
