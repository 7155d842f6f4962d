"""A Keras-like callback surface for tl-ray's own training loop.

A callback sees the loop through ``set_loop`` (``model``, ``optimizer``, ``steps_per_epoch``, ``phase_lr``:
the phase's scaled rate) and stops training by setting ``loop.stop_training = True``.
"""

from __future__ import annotations

import math


class Callback:
    """Base class: every hook is a no-op. The loop calls the training hooks in the order they are defined."""

    loop = None

    def set_loop(self, loop) -> None:
        self.loop = loop

    def on_train_begin(self) -> None: ...

    def on_phase_begin(self, phase: int, first_epoch: int, epochs: int) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_step_begin(self, step: int) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict) -> None: ...

    def on_train_end(self, logs: dict) -> None: ...

    def on_cache_build_begin(self) -> None:
        """This worker holds a feature-cache entry's lock and starts building it."""

    def on_cache_wait_begin(self) -> None:
        """This worker starts waiting for another builder's feature-cache entry."""


class CallbackList:
    """Calls each ``Callback`` hook on every callback, in order."""

    def __init__(self, callbacks=()):
        self.callbacks = list(callbacks)

    def __getattr__(self, hook: str):
        if hook.startswith("_") or not callable(getattr(Callback, hook, None)):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {hook!r}")

        def each(*args) -> None:
            for c in self.callbacks:
                getattr(c, hook)(*args)

        return each


class EarlyStopping(Callback):
    """Stops training when ``monitor`` (a metric of the logs) has not improved for ``patience`` epochs.

    Raises:
        ValueError: bad ``mode``, negative ``patience`` or ``min_delta``, or ``monitor`` not in the logs.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'min' or 'max'. Received: {mode!r}.")
        if patience < 0 or min_delta < 0:
            raise ValueError(f"EarlyStopping patience and min_delta must be >= 0. Received: {patience}, {min_delta}.")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, int(patience), float(min_delta)
        self.on_train_begin()

    def on_train_begin(self) -> None:
        self.best, self.wait, self.stopped_epoch = None, 0, None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.monitor not in logs:
            raise ValueError(
                f"train.early_stopping.monitor {self.monitor!r} is not a metric of the loop. "
                f"Received metrics: {sorted(logs)}. (val_* need data.validation.)")
        value = float(logs[self.monitor])
        better = self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        )
        if better:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience and self.loop is not None:
            self.loop.stop_training = True
            self.stopped_epoch = epoch


class LearningRateSchedule(Callback):
    """Sets the optimizer's learning rate before every step: linear warm-up over ``warmup_epochs`` (fractions
    allowed), then constant or cosine down to ``min_fraction`` of the peak.

    The schedule restarts at each phase and multiplies the phase's (batch-scaled) rate.

    Raises:
        ValueError: unknown ``kind`` or out-of-range arguments.
    """

    def __init__(self, kind: str = "cosine", warmup_epochs: float = 0.0, min_fraction: float = 0.0):
        if kind not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule kind must be 'constant' or 'cosine'. Received: {kind!r}.")
        if warmup_epochs < 0 or not 0.0 <= min_fraction <= 1.0:
            raise ValueError(f"warmup_epochs must be >= 0 and min_fraction in [0, 1]. "
                             f"Received: {warmup_epochs}, {min_fraction}.")
        self.kind, self.warmup_epochs, self.min_fraction = kind, float(warmup_epochs), float(min_fraction)
        self._phase_start_step, self._phase_steps = 0, 1

    def factor(self, step_in_phase: int, phase_steps: int, steps_per_epoch: int) -> float:
        """The multiplier of the phase's rate at ``step_in_phase`` (0-based)."""
        warmup = self.warmup_epochs * steps_per_epoch
        if warmup > 0 and step_in_phase < warmup:
            return (step_in_phase + 1) / warmup
        if self.kind == "constant":
            return 1.0
        span = max(1.0, phase_steps - warmup)
        progress = min(1.0, (step_in_phase - warmup) / span)
        return self.min_fraction + (1.0 - self.min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_phase_begin(self, phase: int, first_epoch: int, epochs: int) -> None:
        per_epoch = self.loop.steps_per_epoch
        self._phase_start_step, self._phase_steps = first_epoch * per_epoch, epochs * per_epoch

    def on_step_begin(self, step: int) -> None:
        loop = self.loop
        f = self.factor(step - self._phase_start_step, self._phase_steps, loop.steps_per_epoch)
        loop.set_learning_rate(loop.phase_lr * f)


def callbacks_from_spec(train_spec) -> list[Callback]:
    """The callbacks the ``train`` spec section asks for (LR schedule first, then early stopping)."""
    out: list[Callback] = []
    if (s := train_spec.lr_schedule) is not None:
        out.append(LearningRateSchedule(s.kind, s.warmup_epochs, s.min_fraction))
    if (e := train_spec.early_stopping) is not None:
        out.append(EarlyStopping(e.monitor, e.mode, e.patience, e.min_delta))
    return out
