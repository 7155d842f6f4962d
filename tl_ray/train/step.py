"""tl-ray's one distributed train and eval step, for OneDevice, Mirrored and MultiWorkerMirrored strategies.

Keras 3 ``Model.fit`` fails under MultiWorkerMirroredStrategy with more than one worker, hence this step: the
loss is averaged over the GLOBAL batch, gradients are all-reduced, then clipped, then applied.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from tl_ray.train.optimizers import inner_optimizer
from tl_ray.train.runtime import worker_position

_PACKED = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=32 * 2**20)


def head_kind(model) -> str:
    """``"binary"``, ``"multiclass"`` or ``"multilabel"`` from the model's output layer."""
    units = model.output_shape[-1]
    if units == 1:
        return "binary"
    try:
        activation = model.get_layer("predictions").activation.__name__
    except ValueError:
        activation = "softmax"
    return "multilabel" if activation == "sigmoid" else "multiclass"


class DistributedStep:
    """Compiled train and eval steps for ``model`` under ``strategy``.

    Args:
        strategy: a tf.distribute strategy; model and optimizer were built in its scope.
        model: a Keras 3 model whose ``predictions`` layer is one sigmoid unit (binary, labels 0/1), softmax
            (int labels) or K sigmoid units (multi-label: multi-hot ``[B, K]`` labels, or int ``[B]`` as
            one-hot; accuracy per label).
        optimizer: built on ``model.trainable_variables``. One from ``tl_ray.train.optimizers.make_optimizer``
            takes gradients the step all-reduced (needed for ``clip_norm``); a stock one all-reduces itself.
        global_batch_size: examples per step across all replicas.
        class_weights: per-class loss weights, length K (2 for a binary head).
        clip_norm: clip the all-reduced gradients to this global norm.

    Raises:
        ValueError: ``clip_norm`` with an optimizer that all-reduces by itself.
    """

    def __init__(self, strategy, model, optimizer, global_batch_size: int, label_smoothing: float = 0.0, *,
                 class_weights=None, clip_norm: float | None = None, jit_compile: bool = False):
        self.strategy, self.model, self.optimizer, self.clip_norm = strategy, model, optimizer, clip_norm
        self.global_batch_size, self.label_smoothing = int(global_batch_size), float(label_smoothing)
        self.kind = head_kind(model)
        self.binary = self.kind == "binary"
        self.num_classes = 2 if self.binary else model.output_shape[-1]
        inner = inner_optimizer(optimizer)
        self._prereduced = bool(getattr(inner, "tlray_prereduced", False))
        if clip_norm and not self._prereduced:
            raise ValueError(
                "clip_norm needs an optimizer from tl_ray.train.optimizers.make_optimizer (it clips the "
                f"all-reduced gradient). Received: {type(inner).__name__}.")
        self._loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        self.class_weights = None
        if class_weights is not None:
            weights = np.asarray(class_weights, dtype=np.float32)
            if weights.shape != (self.num_classes,):
                raise ValueError(f"class_weights must have {self.num_classes} entries. Received shape {weights.shape}.")
            self.class_weights = tf.constant(weights)
        # No AutoGraph: the steps branch only on Python values (flags, shapes), never on a tensor, and
        # Keras 3 layers need no conversion, which is slow in every new process.
        self._grads = (tf.function(self._loss_and_grads, jit_compile=True, autograph=False) if jit_compile
                       else self._loss_and_grads)
        self._train = tf.function(self._train_distributed, autograph=False)
        self._eval = tf.function(self._eval_local, reduce_retracing=True, autograph=False)

    def per_example_loss(self, labels, probs):
        """Weighted cross-entropy of each example, ``[B]``."""
        smoothing = self.label_smoothing
        if self.kind == "multilabel":
            y = self._multi_hot(labels, probs.dtype)
            per_class = keras.losses.binary_crossentropy(y[..., None], probs[..., None], label_smoothing=smoothing)
            if self.class_weights is not None:
                per_class = per_class * self.class_weights
            return tf.reduce_mean(per_class, axis=-1)
        ids = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
        if self.binary:
            y = tf.cast(tf.reshape(ids, (-1, 1)), probs.dtype)
            loss = keras.losses.binary_crossentropy(y, probs, label_smoothing=smoothing)
        else:
            y = tf.one_hot(ids, self.num_classes, dtype=probs.dtype)
            loss = keras.losses.categorical_crossentropy(y, probs, label_smoothing=smoothing)
        if self.class_weights is not None:
            loss = loss * tf.gather(self.class_weights, ids)
        return loss

    def _multi_hot(self, labels, dtype):
        if labels.shape.rank == 1:  # int labels, one class per example (as the reader yields)
            return tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=dtype)
        return tf.cast(labels, dtype)

    def correct(self, labels, probs):
        if self.kind == "multilabel":
            hits = tf.cast(tf.equal(tf.cast(probs > 0.5, tf.float32), self._multi_hot(labels, tf.float32)), tf.float32)
            return tf.reduce_sum(tf.reduce_mean(hits, axis=-1))
        if self.binary:
            pred = tf.cast(tf.reshape(probs, (-1,)) > 0.5, tf.int32)
        else:
            pred = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(pred, tf.cast(tf.reshape(labels, (-1,)), tf.int32)), tf.float32))

    def _sums(self, labels, probs, per_example):
        """[loss sum, correct, examples] of one replica's batch."""
        count = tf.cast(tf.shape(per_example)[0], tf.float32)
        return tf.stack([tf.reduce_sum(per_example), self.correct(labels, probs), count])

    def _loss_and_grads(self, images, labels):
        with tf.GradientTape() as tape:
            probs = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self.per_example_loss(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
            scaled = self.optimizer.scale_loss(loss) if self._loss_scaled else loss
        return probs, per_example, tape.gradient(scaled, self.model.trainable_variables)

    def _replica_step(self, images, labels):
        variables = self.model.trainable_variables
        probs, per_example, grads = self._grads(images, labels)
        if self._prereduced:
            # One replica has nothing to sum; TensorFlow's all-reduce would also register a gradient function
            # per trace that lives as long as the process (a reused trial actor's memory grew with each trial).
            if self.strategy.num_replicas_in_sync > 1:
                ctx = tf.distribute.get_replica_context()
                # Packed into few collectives: one per gradient tensor costs a round trip each across workers.
                grads = _on_present(grads, lambda gs: ctx.all_reduce(tf.distribute.ReduceOp.SUM, gs, options=_PACKED))
            if self.clip_norm:
                # Loss-scaled gradients are S times too large until the optimizer unscales them.
                limit = self.clip_norm * (self.optimizer.dynamic_scale if self._loss_scaled else 1.0)
                grads = _on_present(grads, lambda gs: tf.clip_by_global_norm(gs, limit)[0])
        self.optimizer.apply_gradients(zip(grads, variables))
        return self._sums(labels, probs, per_example)

    def _train_distributed(self, dist_batch):
        images, labels = dist_batch
        sums = self.strategy.run(self._replica_step, args=(images, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def train_step(self, dist_batch) -> np.ndarray:
        """One optimisation step; returns [loss sum, correct, examples] over all replicas."""
        return self._train(dist_batch)

    def _eval_local(self, images, labels):
        probs = tf.cast(self.model(images, training=False), tf.float32)
        return self._sums(labels, probs, self.per_example_loss(labels, probs))

    def evaluate(self, local_dataset, num_workers: int = 1) -> dict[str, float]:
        """Loss and accuracy over ``local_dataset`` (this worker's part), summed over workers.

        Parts may differ in length: each worker evaluates without collectives, then one all-reduce adds sums.
        """
        sums = np.zeros(3, dtype=np.float64)
        for images, labels in local_dataset:
            sums += self._eval(images, labels).numpy()
        if num_workers > 1:
            sums = self.all_reduce_sum(sums)
        loss, correct, count = sums
        count = max(count, 1.0)
        return {"loss": float(loss / count), "accuracy": float(correct / count), "examples": int(count)}

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """Sums one vector across workers (each worker contributes once)."""
        strategy = self.strategy
        local = tf.constant(values, dtype=tf.float64)
        per_worker = strategy.num_replicas_in_sync // worker_position(strategy)[1]

        def value_fn(ctx):
            first = ctx.replica_id_in_sync_group % per_worker == 0
            return local if first else tf.zeros_like(local)

        dist = strategy.experimental_distribute_values_from_function(value_fn)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, dist, axis=None).numpy()


def _on_present(grads, fn):
    """``fn`` of the gradients that are not None, put back in their places."""
    present = [g for g in grads if g is not None]
    done = iter(fn(present) if present else [])
    return [None if g is None else next(done) for g in grads]
