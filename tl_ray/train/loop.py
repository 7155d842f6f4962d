"""The training loop of one trial worker: one path for every strategy.

``train()`` builds the model inside the strategy's scope, streams this
worker's part of the shards through ``distribute_datasets_from_function``,
runs :class:`DistributedStep` for a fixed number of steps per epoch (the same
on every worker, so collectives never wait on a worker that ran out of data),
evaluates, and hands metrics plus a checkpoint folder to a reporter (Ray Tune,
Ray Train, or a plain list outside Ray).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Protocol

from tl_ray.errors import ConfigError
from tl_ray.spec import Spec


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
            import shutil

            dest = self._keep / f"epoch_{metrics['epoch']:04d}"
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            self.checkpoints.append(dest)

    def restore_dir(self) -> Path | None:
        return self._restore


def make_optimizer(train_spec, learning_rate: float | None = None):
    import keras

    lr = learning_rate if learning_rate is not None else train_spec.learning_rate
    name = train_spec.optimizer
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=train_spec.weight_decay or 0.004)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    return keras.optimizers.RMSprop(lr)


def worker_position(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers) of a strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    n = len(spec.get("worker", [])) + len(spec.get("chief", []))
    return (int(resolver.task_id or 0), n) if n > 1 else (0, 1)


def train(spec: Spec, reporter: Reporter) -> dict:
    """Trains the spec's model with this process's strategy; returns the last epoch's metrics.

    Raises:
        ConfigError: the global batch does not split evenly across replicas.
        DataError: a dataset or shard is missing or corrupt.
    """
    import keras
    import tensorflow as tf

    from tl_ray.data.manifest import read_manifest
    from tl_ray.data.reader import make_dataset
    from tl_ray.models.build import build_model
    from tl_ray.models.weights import resolve_weights
    from tl_ray.train.checkpoint import restore_checkpoint, save_checkpoint
    from tl_ray.train.runtime import make_strategy
    from tl_ray.train.step import DistributedStep

    cfg = spec.train
    strategy = make_strategy(cfg.workers, cfg.cpu_devices)
    worker_index, num_workers = worker_position(strategy)
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ConfigError(
            f"train.batch_size must be a multiple of the number of replicas ({replicas}). "
            f"Received: {cfg.batch_size}. Use {max(replicas, cfg.batch_size // replicas * replicas)}."
        )
    image_size = tuple(spec.data.image_size)
    train_uri = spec.resolve(spec.data.train)
    val_uri = spec.resolve(spec.data.validation) if spec.data.validation else None
    manifest = read_manifest(train_uri)
    num_classes = len(manifest.class_names)

    keras.utils.set_random_seed(cfg.seed)
    weights = resolve_weights(spec.model.weights, spec.storage)
    with strategy.scope():
        model = build_model(spec.model, num_classes, image_size, weights_file=weights, seed=cfg.seed)
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)

    start_epoch = 0
    restore = reporter.restore_dir()
    if restore is not None:
        start_epoch = int(restore_checkpoint(restore, model, optimizer)["epoch"])

    step = DistributedStep(strategy, model, optimizer, cfg.batch_size, cfg.label_smoothing)
    steps = cfg.steps_per_epoch or max(1, manifest.num_rows // cfg.batch_size)
    per_replica = cfg.batch_size // replicas
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):

        def dataset_fn(ctx, epoch=epoch):
            return make_dataset(
                train_uri,
                image_size=image_size,
                batch_size=per_replica,
                shuffle=True,
                seed=spec.data.seed,
                epoch=epoch,
                shuffle_buffer=spec.data.shuffle_buffer,
                worker_index=ctx.input_pipeline_id,
                num_workers=ctx.num_input_pipelines,
                drop_remainder=True,
                repeat=True,
                augment=spec.data.augment,
            )

        dist = strategy.distribute_datasets_from_function(dataset_fn)
        iterator = iter(dist)
        start = time.perf_counter()
        sums = None
        for _ in range(steps):
            out = step.train_step(next(iterator))
            sums = out if sums is None else sums + out
        sums = sums.numpy()
        elapsed = time.perf_counter() - start
        metrics = {
            "epoch": epoch + 1,
            "loss": float(sums[0] / sums[2]),
            "accuracy": float(sums[1] / sums[2]),
            "images_per_s": float(sums[2] / elapsed),
            "steps": (epoch + 1) * steps,
        }
        if val_uri is not None:
            local_val = make_dataset(
                val_uri,
                image_size=image_size,
                batch_size=max(per_replica, 64),
                worker_index=worker_index,
                num_workers=num_workers,
            )
            val = step.evaluate(local_val, num_workers)
            metrics.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
        with tempfile.TemporaryDirectory(prefix="tlray-ckpt-") as tmp:
            ckpt = None
            if worker_index == 0:
                ckpt = str(save_checkpoint(tmp, model, optimizer, {"epoch": epoch + 1, "metrics": metrics}))
            reporter.report(metrics, ckpt)
    return metrics
