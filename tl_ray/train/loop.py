"""The training loop of one trial worker: one path for every strategy (no Ray here).

Every worker runs the same number of steps per epoch, so collectives never wait on one that ran out of data.
Each phase gets its freeze policy, a fresh optimizer and a newly traced step (as Keras' ``compile`` would).
"""

from __future__ import annotations

import itertools
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tl_ray.data.manifest import read_manifest
from tl_ray.errors import ConfigError
from tl_ray.feature_cache import backbone_digest
from tl_ray.spec import FreezeSpec, Spec
from tl_ray.train.cached_inputs import CachedInputs, MemoryRows, open_dataset, trains_on_cache
from tl_ray.train.callbacks import CallbackList, callbacks_from_spec
from tl_ray.train.checkpoint import model_weights_digest, read_state, restore_checkpoint, save_checkpoint, warm_start
from tl_ray.train.runtime import intra_op_threads, make_strategy, worker_position


class Reporter(Protocol):
    """Where a worker sends each epoch's metrics and checkpoint."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None: ...

    def restore_dir(self) -> Path | None: ...


class ListReporter:
    """Keeps reports in memory (runs outside Ray: benchmarks, unit tests)."""

    def __init__(self, keep_checkpoints_in: str | Path | None = None, restore: str | Path | None = None):
        self.history: list[dict] = []
        self.checkpoints: list[Path] = []
        self._keep = Path(keep_checkpoints_in) if keep_checkpoints_in else None
        self._restore = Path(restore) if restore else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.history.append(dict(metrics))
        if checkpoint_dir and self._keep is not None:
            dest = self._keep / f"epoch_{metrics['epoch']:04d}"
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)

    def restore_dir(self) -> Path | None:
        return self._restore


@dataclass(frozen=True)
class Phase:
    """Epochs ``[first_epoch, end)`` under one freeze policy and base rate (``augment``: data.augment on)."""

    first_epoch: int
    epochs: int
    freeze: FreezeSpec
    learning_rate: float
    augment: bool = True

    @property
    def end(self) -> int:
        return self.first_epoch + self.epochs


def plan_phases(spec: Spec) -> list[Phase]:
    """The spec's phases (``Spec.phases``); without any, one phase of ``model.freeze`` at ``train.learning_rate``."""
    cfg = spec.train
    phases = spec.phases()
    if not phases:
        return [Phase(0, cfg.epochs, spec.model.freeze, cfg.learning_rate)]
    firsts = itertools.accumulate((p.epochs for p in phases), initial=0)
    return [Phase(first, p.epochs, p.freeze, p.learning_rate or cfg.learning_rate, p.augment)
            for first, p in zip(firsts, phases)]


def lr_scale(train_spec) -> float:
    """Multiplier of every base rate for the global batch: none 1, linear B/B0, sqrt sqrt(B/B0)."""
    ratio = train_spec.batch_size / train_spec.base_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[train_spec.lr_scaling]


class LoopState:
    """What callbacks see of the running loop (``tl_ray.train.callbacks``)."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.model = None
        self.optimizer = None
        self.phase_lr = 0.0
        self.stop_training = False

    def set_learning_rate(self, value: float) -> None:
        from tl_ray.train.optimizers import inner_optimizer

        inner_optimizer(self.optimizer).learning_rate.assign(value)

    @property
    def learning_rate(self) -> float:
        from tl_ray.train.optimizers import inner_optimizer

        return float(inner_optimizer(self.optimizer).learning_rate.numpy())


def class_weight_vector(spec: Spec, manifest, num_classes: int) -> list[float] | None:
    """``train.class_weights`` as one weight per class (``balanced``: n / (K * count_k))."""
    wanted = spec.train.class_weights
    if wanted is None:
        return None
    if wanted != "balanced":
        unknown = sorted(k for k in wanted if not 0 <= k < num_classes)
        if unknown:
            raise ConfigError(f"train.class_weights names classes {unknown}, but the dataset has classes "
                              f"0..{num_classes - 1}. Received: {wanted}.")
        return [float(wanted.get(k, 1.0)) for k in range(num_classes)]
    counts = _class_counts(spec, manifest, num_classes)
    total = sum(counts)
    return [total / (num_classes * c) if c else 0.0 for c in counts]


def _class_counts(spec: Spec, manifest, num_classes: int) -> list[int]:
    by_name = (manifest.source or {}).get("class_counts")
    if isinstance(by_name, dict) and by_name:
        names = list(manifest.class_names)
        return [int(by_name.get(names[k], by_name.get(str(k), 0))) for k in range(num_classes)]
    from tl_ray.data.reader import make_dataset

    import numpy as np

    counts = np.zeros(num_classes, dtype=np.int64)
    ds = make_dataset(spec.resolve(spec.data.train), image_size=(1, 1), batch_size=1024)
    for _, labels in ds:
        counts += np.bincount(labels.numpy(), minlength=num_classes)[:num_classes]
    return [int(c) for c in counts]


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(spec: Spec, reporter: Reporter, callbacks=None) -> dict:
    """Trains the spec's model with this process's strategy; returns the last epoch's metrics.

    Args:
        reporter: receives every epoch's metrics and checkpoints, and names the checkpoint to resume from.
        callbacks: extra ``tl_ray.train.callbacks.Callback`` objects, after the spec's own.

    Raises:
        ConfigError: the global batch does not split evenly across replicas, or bad class weights.
        DataError: a dataset or shard is missing or corrupt.
    """
    import keras

    from tl_ray.registry.weights import resolve_weights

    cfg = spec.train
    strategy = make_strategy(cfg.workers, cfg.cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(
            f"train.batch_size must be a multiple of the number of replicas ({replicas}). "
            f"Received: {cfg.batch_size}. Use {max(replicas, cfg.batch_size // replicas * replicas)}.")
    manifest = read_manifest(spec.resolve(spec.data.train))
    hooks = CallbackList([*callbacks_from_spec(cfg), *(callbacks or [])])
    run = _Run(spec, reporter, strategy, hooks, manifest, resolve_weights(spec.model.weights, spec.storage))
    hooks.set_loop(run.loop)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(cfg.precision)
    try:
        keras.utils.set_random_seed(cfg.seed)
        return run.fit()
    finally:
        keras.config.set_dtype_policy(previous_policy)


class _Run:
    """One call of ``train``: the model, then each phase's optimizer and step, then its epochs."""

    def __init__(self, spec: Spec, reporter: Reporter, strategy, hooks, manifest, weights: str | None):
        import tensorflow as tf

        self.spec, self.reporter, self.strategy, self.hooks, self.weights = spec, reporter, strategy, hooks, weights
        cfg = spec.train
        self.num_classes = len(manifest.class_names)
        self.class_weights = class_weight_vector(spec, manifest, self.num_classes)
        self.loop = LoopState(cfg.steps_per_epoch or max(1, manifest.num_rows // cfg.batch_size))
        self.worker_index, self.num_workers = worker_position(strategy)
        self.per_replica = cfg.batch_size // strategy.num_replicas_in_sync
        self.image_size = tuple(spec.data.image_size)
        self.train_uri = spec.resolve(spec.data.train)
        self.val_uri = spec.resolve(spec.data.validation) if spec.data.validation else None
        self.cached = CachedInputs(spec, strategy, weights, self.num_classes, events=hooks)
        # Single device: batches go to the step as they are (distributing a dataset adds a pass per epoch).
        self.local_input = self.num_workers == 1 and isinstance(strategy, tf.distribute.OneDeviceStrategy)
        self.extra: dict = {}  # reported with the next epoch
        self.augment = spec.data.augment  # the current phase's (None: a phase that does not augment)
        self.best_checkpointed: float | None = None  # tune.metric of this trial's best checkpoint

    def fit(self) -> dict:
        restore = self.reporter.restore_dir()
        start_epoch = 0
        if restore is not None:
            state = read_state(restore)
            start_epoch = int(state["epoch"])
            self.best_checkpointed = state.get("metrics", {}).get(self.spec.tune.metric)
        phases = [(i, p) for i, p in enumerate(plan_phases(self.spec)) if p.end > start_epoch]
        self.build([p for _, p in phases], warm_start_from=None if restore is not None else self.spec.train.init_from)
        metrics: dict = {}
        self.hooks.on_train_begin()
        for index, phase in phases:
            step, datasets = self.start_phase(phase, restore, start_epoch)
            restore = None
            self.hooks.on_phase_begin(index, phase.first_epoch, phase.epochs)
            for epoch in range(max(start_epoch, phase.first_epoch), phase.end):
                metrics = self.epoch(step, datasets, epoch, index)
                if self.loop.stop_training:
                    break
            if self.loop.stop_training:
                break
        self.hooks.on_train_end(metrics)
        return metrics

    def build(self, phases: list[Phase], warm_start_from: str | None) -> None:
        """The full model, or the head alone when every phase left trains on cached features."""
        from tl_ray.models.build import build_model

        cfg = self.spec.train
        self.head_only = not cfg.init_from and trains_on_cache(self.spec, phases)
        if self.head_only:
            self.loop.model = self.cached.head(self.train_uri, self.val_uri)
        else:
            with self.strategy.scope():
                self.loop.model = build_model(self.spec.model, self.num_classes, self.image_size,
                                              weights_file=self.weights, seed=cfg.seed)
            self.cached.model = self.loop.model
        self.extra["head_only"] = self.head_only
        if warm_start_from:
            self.extra["warm_started_from"] = warm_start(self.loop.model, warm_start_from,
                                                         backbone_digest(self.spec, self.weights))

    def start_phase(self, phase: Phase, restore: Path | None, start_epoch: int):
        """The phase's optimizer (restored from ``restore``) and traced step; its train and validation data."""
        from tl_ray.models.freeze import apply_freeze
        from tl_ray.train.optimizers import make_optimizer
        from tl_ray.train.step import DistributedStep

        cfg, model = self.spec.train, self.loop.model
        backbone_vars = []
        if not self.head_only:
            apply_freeze(model, phase.freeze)
            backbone_vars = model.get_layer("backbone").trainable_variables
        lr = phase.learning_rate * lr_scale(cfg)
        with self.strategy.scope():
            optimizer = make_optimizer(cfg, lr, trainable_variables=model.trainable_variables,
                                       backbone_variables=backbone_vars,
                                       backbone_lr_multiplier=cfg.backbone_lr_multiplier, precision=cfg.precision)
        if restore is not None:
            # A checkpoint at a phase boundary holds the previous phase's optimizer: weights only. Its
            # trial_id is the donor's after a PBT exploit.
            state = restore_checkpoint(restore, model, optimizer if start_epoch > phase.first_epoch else None)
            self.extra.update(restored_from_trial=state.get("trial_id"),
                              restored_weights_digest=model_weights_digest(model))
        self.loop.optimizer, self.loop.phase_lr = optimizer, lr
        self.augment = self.spec.data.augment if phase.augment else None
        net, phase_train, phase_val, on_cache = self.cached.for_phase(phase, self.train_uri, self.val_uri)
        self.extra["feature_cache"] = self.cached.statuses["train"] if on_cache else "off"
        if on_cache and "validation" in self.cached.statuses:
            self.extra["feature_cache_validation"] = self.cached.statuses["validation"]
        step = DistributedStep(self.strategy, net, optimizer, cfg.batch_size, cfg.label_smoothing,
                               class_weights=self.class_weights, clip_norm=cfg.clip_norm, jit_compile=cfg.jit_compile)
        validation = self.validation_data(phase_val)
        if "warm_started_from" in self.extra and validation is not None and "warm_start_val_loss" not in self.extra:
            val = step.evaluate(validation(), self.num_workers)  # the score of the loaded weights
            self.extra.update(warm_start_val_loss=val["loss"], warm_start_val_accuracy=val["accuracy"])
        return step, (phase_train, validation)

    def validation_data(self, phase_val):
        """A function giving the validation dataset (None without one); in memory, the same every epoch."""
        if phase_val is None:
            return None
        # Cached features are small: large evaluation batches, few steps.
        batch = 1024 if isinstance(phase_val, MemoryRows) else max(self.per_replica, 64)

        def validation():
            return open_dataset(phase_val, image_size=self.image_size, batch_size=batch,
                                worker_index=self.worker_index, num_workers=self.num_workers)

        if isinstance(phase_val, MemoryRows):
            once = validation()
            return lambda: once
        return validation

    def epoch(self, step, datasets, epoch: int, phase_index: int) -> dict:
        """Trains one epoch, evaluates, then reports the metrics (with a checkpoint when one is due)."""
        phase_train, validation = datasets
        self.hooks.on_epoch_begin(epoch)
        epoch_start = time.perf_counter()
        iterator = self.train_iterator(phase_train, epoch)
        start = time.perf_counter()
        sums = None
        for i in range(self.loop.steps_per_epoch):
            self.hooks.on_step_begin(epoch * self.loop.steps_per_epoch + i)
            out = step.train_step(next(iterator))
            sums = out if sums is None else sums + out
        sums = sums.numpy()
        elapsed = time.perf_counter() - start
        metrics = {
            "epoch": epoch + 1, "phase": phase_index,
            "loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2]),
            "images_per_s": float(sums[2] / elapsed), "steps": (epoch + 1) * self.loop.steps_per_epoch,
            "learning_rate": self.loop.learning_rate, "intra_op_threads": intra_op_threads(),
            "peak_rss_mb": peak_rss_mb(), "trial_pid": os.getpid(), **self.extra,
        }
        self.extra = {k: v for k, v in self.extra.items() if k in ("head_only", "feature_cache",
                                                                    "feature_cache_validation")}
        if validation is not None:
            val = step.evaluate(validation(), self.num_workers)
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        metrics["epoch_s"] = time.perf_counter() - epoch_start
        self.hooks.on_epoch_end(epoch, metrics)
        self.report(metrics, last=epoch + 1 == self.spec.train.epochs or self.loop.stop_training)
        return metrics

    def train_iterator(self, phase_train, epoch: int):
        spec = self.spec

        def dataset_fn(ctx):
            return open_dataset(
                phase_train, image_size=self.image_size, batch_size=self.per_replica, shuffle=True,
                seed=spec.data.seed, epoch=epoch, shuffle_buffer=spec.data.shuffle_buffer,
                worker_index=ctx.input_pipeline_id, num_workers=ctx.num_input_pipelines,
                drop_remainder=True, repeat=True, augment=self.augment,
            )

        if self.local_input:
            return iter(dataset_fn(_single_input_context()))
        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def report(self, metrics: dict, last: bool) -> None:
        """Reports an epoch; rank 0 adds a checkpoint when one is due and ``improves``."""
        with tempfile.TemporaryDirectory(prefix="tlray-ckpt-") as tmp:
            ckpt = None
            due = metrics["epoch"] % self.spec.train.checkpoint_every == 0 or last
            if self.worker_index == 0 and due and self.improves(metrics):
                state = {"epoch": metrics["epoch"], "metrics": metrics,
                         "trial_id": getattr(self.reporter, "trial_id", None)}
                ckpt = str(save_checkpoint(tmp, self.loop.model, self.loop.optimizer, state,
                                           head_of=self.cached.recipe() if self.head_only else None))
            self.reporter.report(metrics, ckpt)

    def improves(self, metrics: dict) -> bool:
        """``writes_checkpoint`` for this epoch; records its metric if so."""
        value = metrics.get(self.spec.tune.metric)
        if not writes_checkpoint(self.spec.tune, value, self.best_checkpointed):
            return False
        if isinstance(value, (int, float)):
            self.best_checkpointed = float(value)
        return True


def writes_checkpoint(tune, value, best: float | None) -> bool:
    """Whether a due checkpoint with metric ``value`` is written: not when ``tune.checkpoint_on`` is
    improvement (scheduler not pbt) and a numeric ``value`` does not beat ``best``, the best checkpoint's."""
    if tune.checkpoint_on == "every" or tune.scheduler == "pbt" or not isinstance(value, (int, float)):
        return True
    return best is None or (value > best if tune.mode == "max" else value < best)


def _single_input_context():
    import tensorflow as tf

    return tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1)
