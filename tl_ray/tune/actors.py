"""How Ray Tune starts the sweep's trial actors: with no runtime environment of their own.

Tune gives each trial actor the runtime environment ``{"env_vars": {"PL_DISABLE_FORK": "1"}}`` (for
PyTorch Lightning, which tl-ray does not use). Any runtime environment costs an actor's start:

- Ray's idle worker processes, which a raylet starts ahead of its first job (as many as the node has
  CPUs, with none), never run an actor of another runtime environment. Each trial actor of a driver's
  first sweep on a new local Ray then waits for a new worker (Python, Ray's import and registration)
  while the idle ones stay idle: 0.6 s on a 2-core machine, measured alone.
- A new worker for a runtime environment is started through the node's runtime-environment agent:
  about 0.2 s more per actor in the later jobs of a ``ray start`` cluster (``benchmarks/RESULTS.md``).

Tune still passes its actors the driver's credentials and Train settings (``AWS_*``, ``RAY_TRAIN_*``)
when they are set in the driver's environment; those actors start as before. Through Ray Client
(``ray://``) Tune runs on the cluster, not in this process, and keeps its default.
"""

from __future__ import annotations

import contextlib

#: Variables Tune sets for every trial actor that no tl-ray trial reads.
UNUSED_ENV_VARS = ("PL_DISABLE_FORK",)


@contextlib.contextmanager
def trial_actors_in_idle_workers():
    """While Tune starts trial actors (``Tuner.fit``): without the variables of ``UNUSED_ENV_VARS``.

    Example:

    >>> with trial_actors_in_idle_workers():
    ...     grid = tuner.fit()
    """
    from ray.tune.execution import class_cache

    defaults = getattr(class_cache, "DEFAULT_ENV_VARS", {})
    saved = dict(defaults)
    for name in UNUSED_ENV_VARS:
        defaults.pop(name, None)
    try:
        yield
    finally:
        defaults.clear()
        defaults.update(saved)
