"""How Ray Tune starts the sweep's trial actors: in the worker processes Ray started in advance.

Ray keeps a few idle worker processes per node, started before any job asks (as many as the node has
CPUs), with no runtime environment. Tune gives each trial actor the runtime environment
``{"env_vars": {"PL_DISABLE_FORK": "1"}}`` (for PyTorch Lightning, which tl-ray does not use), and a
worker started for one runtime environment never runs an actor of another: every trial actor then
waits for a new worker process (Python, then Ray's import and registration) while the idle ones stay
idle. Without that variable, the first actors start in the idle workers, 0.3-0.6 s sooner on a 2-core
node (``benchmarks/RESULTS.md``).

Tune still passes its actors the driver's credentials and Train settings (``AWS_*``, ``RAY_TRAIN_*``)
when they are set; those trials start in new workers, as before.
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
