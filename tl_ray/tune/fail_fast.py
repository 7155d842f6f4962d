"""Stops a sweep at the first trial error that retrying cannot fix (``DETERMINISTIC``), which Tune would retry
``train.max_failures`` times and meet again in every other trial."""

from __future__ import annotations

import os

from ray import cloudpickle, tune
from ray.exceptions import RayTaskError

from tl_ray.errors import ConfigError, DataError, RegistryError, StorageError, TLRayError

DETERMINISTIC = (ConfigError, DataError, StorageError, RegistryError)

# What the running experiment's FailFast found: (trial id, error). Tune runs a resumed experiment with the
# callbacks it saved (a copy of the caller's object), so the finding is kept here, in the driver's process.
_found: list[tuple[str, TLRayError]] = []


def root_cause(exc: BaseException | None) -> TLRayError | None:
    """The tl-ray error under Ray's wrappers (``RayTaskError``, Ray Train's ``WorkerGroupError`` and
    ``ControllerError``) and chained exceptions; None when there is none."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TLRayError) and not isinstance(e, RayTaskError):
            return e
        # A worker's exception comes back in Ray Train's UserExceptionWithTraceback, which keeps it as _base_exc.
        todo += [getattr(e, "cause", None), getattr(e, "_base_exc", None), getattr(e, "controller_failure", None),
                 *(getattr(e, "worker_failures", None) or {}).values(), e.__cause__, e.__context__]
    return None


def deterministic_error(exc: BaseException | None) -> TLRayError | None:
    """The error retrying cannot fix under ``exc`` (a fresh copy, without Ray's traceback), else None."""
    cause = root_cause(exc)
    return type(cause)(cause.message) if isinstance(cause, DETERMINISTIC) else None


def found() -> tuple[str, TLRayError] | None:
    """(trial id, error) that stopped the last experiment, else None."""
    return _found[0] if _found else None


def _trial_exception(trial) -> BaseException | None:
    """The trial's latest exception, from the driver's copy of ``error.pkl`` (``Trial.get_pickled_error``
    reads the store's, which Tune syncs later)."""
    path = trial.pickled_error_file
    try:
        if not path or not os.path.isfile(path):
            return trial.get_pickled_error()
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001 - an error this process cannot unpickle is not one of tl-ray's: Tune goes on
        return None


class FailFast(tune.Callback, tune.Stopper):
    """A Tune callback and stopper (pass it as both): at a trial's error whose root cause is deterministic,
    stops every trial and starts no more (Tune asks its stopper before it starts the failed trial's retry)."""

    def setup(self, **info) -> None:
        _found.clear()

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        error = None if _found else deterministic_error(_trial_exception(trial))
        if error is not None:
            _found.append((trial.trial_id, error))

    on_trial_error = on_trial_recover

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return bool(_found)
