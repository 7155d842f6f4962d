"""Optimizers for tl-ray's distributed step: pre-reduced gradients, per-variable rates, loss scaling.

Keras all-reduces inside ``apply``, after clipping and the loss scale's overflow check, per replica: tl-ray's
step all-reduces and clips first, so these optimizers skip Keras' all-reduce. The backbone's multiplier scales
the learning rate, not the gradient (whose scale Adam ignores); AdamW's weight decay keeps the base rate.
"""

from __future__ import annotations

import functools

import keras

OPTIMIZERS = {
    "adam": lambda lr, wd: keras.optimizers.Adam(lr),
    "adamw": lambda lr, wd: keras.optimizers.AdamW(lr, weight_decay=wd or 0.004),
    "sgd": lambda lr, wd: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "rmsprop": lambda lr, wd: keras.optimizers.RMSprop(lr),
}


@functools.cache
def _prereduced_class(base: type) -> type:
    """``base`` with Keras' in-apply all-reduce removed and per-variable learning-rate multipliers."""

    class PreReduced(base):
        tlray_prereduced = True

        def _all_reduce_sum_gradients(self, grads_and_vars):
            # tl-ray's step already summed the gradients across replicas.
            return list(grads_and_vars)

        def set_lr_multiplier(self, variables, multiplier: float) -> None:
            """Makes ``variables`` learn at ``multiplier`` times the optimizer's rate (call after build)."""
            self._tlray_multiplier = float(multiplier)
            self._tlray_scaled = [self._var_key(v) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            multiplier = getattr(self, "_tlray_multiplier", 1.0)
            if multiplier != 1.0 and self._var_key(variable) in getattr(self, "_tlray_scaled", ()):
                learning_rate = keras.ops.multiply(learning_rate, multiplier)
            return super().update_step(gradient, variable, learning_rate)

    PreReduced.__name__ = PreReduced.__qualname__ = base.__name__
    return PreReduced


def make_optimizer(train_spec, learning_rate: float | None = None, *, trainable_variables=None, backbone_variables=(),
                   backbone_lr_multiplier: float = 1.0, precision: str = "float32"):
    """Creates (and, given ``trainable_variables``, builds) the optimizer of one training phase.

    Args:
        learning_rate: the starting rate. Defaults to ``train_spec.learning_rate``.
        backbone_variables: they learn at ``backbone_lr_multiplier`` times the rate.
        precision: ``mixed_float16`` wraps the optimizer in a ``LossScaleOptimizer``.

    Returns:
        A Keras optimizer whose ``apply`` expects gradients already summed across replicas.
    """
    lr = float(learning_rate if learning_rate is not None else train_spec.learning_rate)
    base = OPTIMIZERS[train_spec.optimizer](lr, train_spec.weight_decay)
    inner = _prereduced_class(type(base)).from_config(base.get_config())
    optimizer = keras.optimizers.LossScaleOptimizer(inner) if precision == "mixed_float16" else inner
    if trainable_variables is not None:
        optimizer.build(list(trainable_variables))  # a LossScaleOptimizer builds its inner one
        if backbone_variables and backbone_lr_multiplier != 1.0:
            inner.set_lr_multiplier(backbone_variables, backbone_lr_multiplier)
    return optimizer


def inner_optimizer(optimizer):
    """The optimizer that holds the learning rate (unwraps a ``LossScaleOptimizer``)."""
    return getattr(optimizer, "inner_optimizer", optimizer)
