"""Fault-injection callbacks for tl-ray's own resume, node-loss and feature-cache tests.

Inert unless ``TLRAY_TEST_HOOK_DIR`` (D) is set, when the trainable adds :class:`PauseAfterEpoch`.
With ``D/hold_cache_build``, a feature-cache builder holding its lock waits until another process waits
for the same entry (``D/cache_waiter``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tl_ray import store
from tl_ray.train.callbacks import Callback

ENV = "TLRAY_TEST_HOOK_DIR"
WAIT_S = 300.0


class PauseAfterEpoch(Callback):
    """Pauses a worker for the test to kill it, once it has reported the epoch the test names.

    With ``D/<experiment>/pause_after_epoch`` holding N (or ``N SUFFIX``: only the trial whose id ends with
    SUFFIX), each worker that has reported epoch N writes its node id to ``D/<experiment>/node.<rank>``,
    then its pid to ``pid.<rank>``, and waits to be killed; restarted, it finds its pid file and carries on.
    """

    def __init__(self, experiment: str, rank: int, trial_id: str = "", node_id: str = ""):
        self.root = Path(os.environ[ENV])  # the trainable adds this callback only when it is set
        self.folder = self.root / experiment
        self.rank, self.trial_id, self.node_id = rank, trial_id, node_id

    def on_epoch_begin(self, epoch: int) -> None:  # epoch N (0-based) begins once epoch N was reported
        trigger = self.folder / "pause_after_epoch"
        if not trigger.is_file():
            return
        wanted, *suffix = trigger.read_text().split()
        if int(wanted) != epoch or (suffix and not self.trial_id.endswith(suffix[0])):
            return
        pid_file = self.folder / f"pid.{self.rank}"
        if pid_file.exists():
            return
        store.write_text(str(self.folder / f"node.{self.rank}"), self.node_id)  # each file appears whole
        store.write_text(str(pid_file), str(os.getpid()))  # last: a test that sees the pid also sees the node
        _wait_for(lambda: False, f"worker {self.rank} of {self.folder.name!r} was paused for a kill that never came")

    def on_cache_build_begin(self) -> None:
        if (self.root / "hold_cache_build").is_file():
            _wait_for((self.root / "cache_waiter").exists,
                      f"no second trial waited for the feature cache within {WAIT_S:.0f} s")

    def on_cache_wait_begin(self) -> None:
        if (self.root / "hold_cache_build").is_file():
            (self.root / "cache_waiter").write_text(str(os.getpid()))


def _wait_for(condition, failure: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():  # the test kills this process, or meets the condition, meanwhile
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ENV}: {failure}")
        time.sleep(0.05)