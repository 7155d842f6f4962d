"""tl-ray's one distributed train and eval step, used by every strategy.

Keras 3 ``Model.fit`` fails under MultiWorkerMirroredStrategy with more than
one worker, so tl-ray owns the step: ``strategy.run`` of a replica function
that averages the per-example loss over the GLOBAL batch
(``tf.nn.compute_average_loss``), applies gradients, and returns sums that are
reduced across replicas. The same object serves OneDevice, Mirrored and
MultiWorkerMirrored strategies.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras


class DistributedStep:
    """Compiled train and eval steps for ``model`` under ``strategy``.

    Args:
        strategy: a tf.distribute strategy; model and optimizer were built in its scope.
        model: a Keras 3 model with softmax (K > 2) or sigmoid (1 unit) outputs.
        optimizer: a Keras 3 optimizer, built on ``model.trainable_variables``.
        global_batch_size: examples per step across all replicas.
        label_smoothing: label smoothing of the cross-entropy. Defaults to 0.
    """

    def __init__(self, strategy, model, optimizer, global_batch_size: int, label_smoothing: float = 0.0):
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = int(global_batch_size)
        self.label_smoothing = float(label_smoothing)
        self.binary = model.output_shape[-1] == 1
        self.num_classes = 2 if self.binary else model.output_shape[-1]
        self._train = tf.function(self._train_distributed)
        self._eval = tf.function(self._eval_local, reduce_retracing=True)

    # -- losses -------------------------------------------------------------
    def per_example_loss(self, labels, probs):
        if self.binary:
            y = tf.cast(tf.reshape(labels, (-1, 1)), probs.dtype)
            return keras.losses.binary_crossentropy(y, probs, label_smoothing=self.label_smoothing)
        y = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes, dtype=probs.dtype)
        return keras.losses.categorical_crossentropy(y, probs, label_smoothing=self.label_smoothing)

    def correct(self, labels, probs):
        if self.binary:
            pred = tf.cast(tf.reshape(probs, (-1,)) > 0.5, tf.int32)
        else:
            pred = tf.argmax(probs, axis=-1, output_type=tf.int32)
        return tf.reduce_sum(tf.cast(tf.equal(pred, tf.cast(labels, tf.int32)), tf.float32))

    # -- train --------------------------------------------------------------
    def _replica_step(self, images, labels):
        with tf.GradientTape() as tape:
            probs = tf.cast(self.model(images, training=True), tf.float32)
            per_example = self.per_example_loss(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            if self.model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(self.model.losses))
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return tf.stack(
            [
                tf.reduce_sum(per_example),
                self.correct(labels, probs),
                tf.cast(tf.shape(labels)[0], tf.float32),
            ]
        )

    def _train_distributed(self, dist_batch):
        images, labels = dist_batch
        sums = self.strategy.run(self._replica_step, args=(images, labels))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    def train_step(self, dist_batch) -> np.ndarray:
        """One optimisation step; returns [loss sum, correct, examples] over all replicas."""
        return self._train(dist_batch)

    # -- eval ---------------------------------------------------------------
    def _eval_local(self, images, labels):
        probs = tf.cast(self.model(images, training=False), tf.float32)
        return tf.stack(
            [
                tf.reduce_sum(self.per_example_loss(labels, probs)),
                self.correct(labels, probs),
                tf.cast(tf.shape(labels)[0], tf.float32),
            ]
        )

    def evaluate(self, local_dataset, num_workers: int = 1) -> dict[str, float]:
        """Loss and accuracy over ``local_dataset`` (this worker's part), summed over workers.

        Every worker evaluates its own part without collectives (parts may differ
        in length), then one all-reduce adds the sums.
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
        per_worker = strategy.num_replicas_in_sync // max(1, _num_workers(strategy))

        def value_fn(ctx):
            first = ctx.replica_id_in_sync_group % per_worker == 0
            return local if first else tf.zeros_like(local)

        dist = strategy.experimental_distribute_values_from_function(value_fn)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, dist, axis=None).numpy()


def _num_workers(strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))
