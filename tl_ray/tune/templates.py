"""The sweep's side of the trial templates per node (``tl_ray.train.node_template``)."""

from __future__ import annotations

import contextlib
import logging
import time

from ray.tune import Callback

from tl_ray.train import node_template

logger = logging.getLogger(__name__)


_running: dict | None = None  # where the running sweep's trials look for templates (node_template.locator)


@contextlib.contextmanager
def sweep_templates(where: dict | None):
    """While a sweep runs: where its trials look for their node's template. The callback reads it from here,
    not from its own state, since a resumed sweep runs with the callback Tune saved (perhaps by an older
    tl-ray, or with another ``tune.template_keep_alive_s``)."""
    global _running
    previous, _running = _running, where
    try:
        yield
    finally:
        _running = previous


# Its import path is kept in each experiment's saved state (Tune pickles the run's callbacks): resuming an
# experiment needs the class here under this name.
class NodeTemplates(Callback):
    """Starts a template on every node as the sweep starts, and on each node that joins while it runs (the
    autoscaler's), checking at most every ``interval_s``. An actor that starts on a node before its template
    does forks from a template of its own."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self._checked = 0.0

    def __getstate__(self) -> dict:  # a restored sweep checks at once, whatever clock it saved
        return {"interval_s": self.interval_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def start(self) -> None:
        """Starts the templates missing where the running sweep's trials look for them (``sweep_templates``); a
        failure is logged, not raised (the actors then start their own)."""
        self._checked = time.monotonic()
        try:
            node_template.start_node_templates(_running)
        except Exception as exc:  # noqa: BLE001 - a saving, not the sweep
            logger.warning("Could not start trial templates on the nodes (%s); trial actors start their own.", exc)

    def on_step_begin(self, iteration, trials, **info):
        if time.monotonic() - self._checked >= self.interval_s:
            self.start()
