"""One Ray Tune experiment of the spec's trials: scheduler, search, resources, and its result rows."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray import tune
from ray.tune import schedulers
from ray.tune.search import BasicVariantGenerator

from tl_ray import store
from tl_ray.errors import ConfigError, TrialError
from tl_ray.spec import Spec, apply_overrides, validate
from tl_ray.spec.space import parse_space, pbt_dimensions
from tl_ray.train.cached_inputs import trains_on_cache
from tl_ray.train.loop import plan_phases
from tl_ray.tune import fail_fast
from tl_ray.tune.cluster import connect_ray, verbose, with_cluster_gpus, workers_output
from tl_ray.tune.driver_log import LOG_NAME, driver_log, shown_path
from tl_ray.tune.interrupt import SweepInterrupted, count_unfinished, quiet_ray_resume_hint, saved_trial_statuses
from tl_ray.tune.progress import SweepProgress
from tl_ray.tune.pruning import KeepCheckpoints, kept
from tl_ray.tune.report import fmt, text_table
from tl_ray.tune.space import KeepInRange, optuna_space, to_tune
from tl_ray.tune.trainable import checkpoint_uri, ray_storage


@dataclass
class TrialRow:
    trial_id: str
    params: dict
    metric: float | None
    epochs: int
    status: str
    checkpoint: str | None = None  # URI or local path of the best epoch's checkpoint
    error: str | None = None
    checkpoints: list[tuple[str, float]] = field(default_factory=list)  # (URI, metric) of each one kept
    stage: str = ""  # staged sweeps: the stage's name
    parent: str = ""  # staged sweeps: the trial of the previous stage this one warm-started from


@dataclass
class SweepResult:
    metric: str
    mode: str
    rows: list[TrialRow] = field(default_factory=list)
    experiment_path: str = ""
    wall_time_s: float = 0.0

    @property
    def best(self) -> TrialRow:
        scored = [r for r in self.rows if r.metric is not None and r.checkpoint]
        if not scored:
            errors = "; ".join(f"{r.trial_id}: {r.error}" for r in self.rows if r.error)[:2000]
            raise TrialError(f"no trial of the sweep produced a checkpoint with '{self.metric}'. {errors}")
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda r: r.metric)

    def table(self) -> str:
        keys = sorted({k for r in self.rows for k in r.params})
        staged = any(r.stage for r in self.rows)
        head = ["trial", *(["stage", "from"] if staged else []), *keys, self.metric, "epochs", "status"]
        body = [[r.trial_id, *([r.stage, r.parent or "-"] if staged else []),
                 *(fmt(r.params.get(k)) for k in keys), fmt(r.metric), str(r.epochs), r.status]
                for r in self.rows]
        return "\n".join(text_table(head, body))


def trial_resources(spec: Spec, config: dict | None = None) -> dict:
    """What one trial (``config``: its sampled fields) asks Ray for; ``_head_only`` ones ask for
    ``train.head_trial_gpus`` GPUs."""
    if config:
        spec = validate(apply_overrides(spec.to_dict(), config), source="trial spec")
    if spec.train.workers == 1:
        res = {"CPU": spec.train.cpus_per_worker}
        gpus = spec.train.head_trial_gpus if _head_only(spec) else spec.train.gpus_per_worker
        if gpus:
            res["GPU"] = gpus
        return res
    # The trial only drives its Ray Train worker group: a fraction of a CPU held on a worker node would keep
    # a whole group (whole CPUs, whole GPUs) from fitting there.
    return {"memory": 64 * 2**20}


def _head_only(spec: Spec) -> bool:
    """Every phase of the trial trains on cached features (and ``train.head_trial_gpus`` is set)."""
    return spec.train.head_trial_gpus is not None and trains_on_cache(spec, plan_phases(spec))


def _max_concurrent(spec: Spec) -> int | None:
    if spec.tune.max_concurrent_trials:
        return spec.tune.max_concurrent_trials
    if spec.train.workers == 1:
        return None
    resources = ray.cluster_resources()
    fits = resources.get("CPU", 1) // (spec.train.workers * spec.train.cpus_per_worker)
    if spec.train.gpus_per_worker:
        fits = min(fits, resources.get("GPU", 0) // (spec.train.workers * spec.train.gpus_per_worker))
    return max(1, int(fits))


def _scheduler(spec: Spec):
    t, epochs = spec.tune, spec.train.epochs
    grace = min(t.grace_period, epochs)
    if t.scheduler == "fifo":
        return schedulers.FIFOScheduler()
    if t.scheduler == "asha":
        return schedulers.ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=grace,
                                        reduction_factor=t.reduction_factor)
    if t.scheduler == "hyperband":
        return schedulers.HyperBandScheduler(time_attr="training_iteration", max_t=epochs,
                                             reduction_factor=t.reduction_factor)
    if t.scheduler == "median":
        return schedulers.MedianStoppingRule(time_attr="training_iteration", grace_period=grace,
                                             min_samples_required=2)
    if spec.train.workers > 1:
        raise ConfigError(
            "tune.scheduler pbt needs single-worker trials (train.workers: 1): its exploit step restores a "
            "better trial's checkpoint through Tune, which multi-worker trials report through Ray Train.")
    # Conditional dimensions, and the fields their conditions test, are not mutated (see pbt_dimensions).
    dists = parse_space(t.space)
    mutations = {k: to_tune(dists[k]) for k in pbt_dimensions(t.space)[0]}
    return schedulers.PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=t.perturbation_interval,
        hyperparam_mutations=mutations, quantile_fraction=0.25, custom_explore_fn=KeepInRange(t.space))


def _search_alg(spec: Spec, max_concurrent: int | None = None):
    if spec.tune.search == "random":
        if spec.tune.seed is None:
            return None
        # Tune ignores TuneConfig's max_concurrent_trials for a search generator: the limit goes here.
        return BasicVariantGenerator(random_state=spec.tune.seed, max_concurrent=max_concurrent or 0)
    try:
        from ray.tune.search.optuna import OptunaSearch
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError(
            "tune.search optuna needs Optuna: pip install 'tl-ray[optuna]' (or pip install optuna)."
        ) from None
    # A define-by-run space: Tune's param_space is then empty, so metric and mode go here.
    return OptunaSearch(space=optuna_space(spec.tune.space), metric=spec.tune.metric, mode=spec.tune.mode,
                        seed=spec.train.seed if spec.tune.seed is None else spec.tune.seed)


def run_tuner(spec: Spec, name: str, trainable, param_space: dict, *, resume: bool = False, folder: tuple = (),
              num_samples: int | None = None, search: bool = True, stage: str = "",
              callbacks: tuple = ()) -> SweepResult:
    """Runs one Ray Tune experiment ``<store>/experiments/<folder...>/<name>`` of ``trainable``.

    Args:
        num_samples: defaults to ``tune.num_samples``; ``search``: whether to use ``tune.search``.
        callbacks: more Ray Tune callbacks (a new run only: a restored one keeps those it was saved with).

    Raises:
        ConfigError, DataError, StorageError, RegistryError: a trial failed on it (``tl_ray.tune.fail_fast``).
        SweepInterrupted: Ctrl-C stopped the sweep before every trial finished.
    """
    connect_ray()
    spec = with_cluster_gpus(spec)
    storage_path, fs = ray_storage(spec, *folder)
    if search and spec.tune.search == "optuna":
        param_space = {}  # Optuna samples through its define-by-run space (tl_ray.tune.space)
    if spec.train.head_trial_gpus is None or spec.train.workers > 1:
        trainable = tune.with_resources(trainable, trial_resources(spec))
    else:  # per trial: head-only trials may ask for other resources than fine-tuning ones
        trainable = tune.with_resources(
            trainable, lambda config: tune.PlacementGroupFactory([trial_resources(spec, config)]))
    exp_path = f"{storage_path.rstrip('/')}/{name}"
    top = folder[0] if folder else name  # a staged sweep's top folder
    log_folder = store.join(spec.storage, "experiments", top)
    total = (num_samples or spec.tune.num_samples) * _grid_points(param_space)
    print(f"[tune] {name}: {total} trials, {spec.tune.scheduler} scheduler, {spec.tune.metric} ({spec.tune.mode}), "
          f"each {_resources_text(spec)}; experiment {exp_path}; full log {shown_path(log_folder)}; "
          f"{workers_output()}", flush=True)
    progress = SweepProgress(spec.tune.metric, spec.tune.mode, total, spec.train.epochs)
    if not verbose():  # Tune's newer console prints its header boxes even at verbose=0; its older one is silent
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    start = time.perf_counter()
    with driver_log(log_folder) as log, quiet_ray_resume_hint():
        if resume and tune.Tuner.can_restore(exp_path, storage_filesystem=fs):
            tuner = tune.Tuner.restore(exp_path, trainable=trainable, param_space=param_space,
                                       resume_errored=True, storage_filesystem=fs)
        else:
            tuner = _new_tuner(spec, name, trainable, param_space, storage_path, fs, num_samples=num_samples,
                               search=search, callbacks=(progress, *callbacks))
        grid = tuner.fit()
    stopped = fail_fast.found()
    if stopped:  # an error every retry would meet: said once, its traceback in the log
        trial_id, error = stopped
        where = store.join(log_folder, LOG_NAME) if store.is_s3(log_folder) else log
        raise type(error)(f"{error} (trial {trial_id}; the sweep stopped, its traceback is in {where})")
    unfinished = count_unfinished(spec, list(saved_trial_statuses(exp_path, fs).values()), None if search else total)
    if unfinished:  # Ctrl-C: Tune saved the experiment and returned as if it had ended
        raise SweepInterrupted(top, exp_path, unfinished, stage=stage)
    wall_time_s = time.perf_counter() - start
    rows = [_row(spec, res, stage) for res in grid]
    return SweepResult(spec.tune.metric, spec.tune.mode, rows, exp_path, wall_time_s)


def _new_tuner(spec: Spec, name: str, trainable, param_space: dict, storage_path: str, fs, *,
               num_samples: int | None, search: bool, callbacks: tuple):
    """A new Tune experiment; ``FailFast`` stops it at the first error that retrying cannot fix."""
    limit = _max_concurrent(spec)
    search_alg = _search_alg(spec, limit) if search else None
    stopper = fail_fast.FailFast()
    keep = spec.tune.keep_checkpoints or None
    by_tune = spec.tune.scheduler == "pbt"  # tl_ray.tune.pruning: why only PBT's trials use Tune's num_to_keep
    pruning = [KeepCheckpoints(keep, spec.tune.metric, spec.tune.mode)] if keep and not by_tune else []
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.tune.metric, mode=spec.tune.mode, num_samples=num_samples or spec.tune.num_samples,
            scheduler=_scheduler(spec), search_alg=search_alg,
            max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator) else limit,
            reuse_actors=spec.tune.reuse_actors and spec.train.workers == 1),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep if by_tune else None,
                                                    checkpoint_score_attribute=spec.tune.metric,
                                                    checkpoint_score_order=spec.tune.mode),
            verbose=1 if verbose() else 0,
            callbacks=[callbacks[0], stopper, *callbacks[1:], *pruning], stop=stopper),
    )


def _resources_text(spec: Spec) -> str:
    t = spec.train
    gpus = f" + {t.gpus_per_worker} GPU" if t.gpus_per_worker else ""
    return f"{t.workers} worker{'s' if t.workers > 1 else ''} x {t.cpus_per_worker} CPU{gpus}"


def _grid_points(param_space: dict) -> int:
    """Trials per sample of a param space: the product of its grid_search lengths."""
    return math.prod(len(v["grid_search"]) for v in param_space.values() if isinstance(v, dict) and "grid_search" in v)


def _row(spec: Spec, res, stage: str) -> TrialRow:
    metric, mode = spec.tune.metric, spec.tune.mode
    trial_id = (res.metrics or {}).get("trial_id") or (Path(res.path).name if res.path else "?")
    df = res.metrics_dataframe
    epochs = 0
    if df is not None and len(df):
        epochs = int(df["training_iteration"].max()) if "training_iteration" in df else len(df)
    # The last result counts too: after PBT exploits, a trial's result file can miss rows.
    epochs = max(epochs, int((res.metrics or {}).get("epoch", 0) or 0))
    # Every checkpointed epoch with its metric: Tune's for single-worker trials, else TuneReportCallback's.
    latest = res.checkpoint.path if res.checkpoint else None
    scored = [(checkpoint_uri(spec, ckpt.path), float(m[metric]))  # the latest last (kept keeps it)
              for ckpt, m in sorted(res.best_checkpoints or [], key=lambda c: c[0].path == latest)
              if m.get(metric) is not None]
    if not scored and df is not None and "checkpoint_path" in df and metric in df:
        scored = [(checkpoint_uri(spec, path), float(value))
                  for path, value in zip(df["checkpoint_path"], df[metric])
                  if isinstance(path, str) and value == value]
    scored = kept(scored, spec.tune.keep_checkpoints, mode)  # those deleted once the trial ended are left out
    pick = max if mode == "max" else min
    checkpoint, best_value = pick(scored, key=lambda c: c[1]) if scored else (None, None)
    status = "ERROR" if res.error else ("STOPPED" if epochs < spec.train.epochs else "DONE")
    return TrialRow(trial_id, dict(res.config or {}), best_value, epochs, status, checkpoint,
                    str(res.error) if res.error else None, scored, stage)


