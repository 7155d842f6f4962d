"""Helpers for tests that start processes of their own (a sweep's driver, `ray start --block`)."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_group(proc: subprocess.Popen) -> None:
    """Stops a process started in its own session, then kills whatever is left of its group.

    SIGTERM goes to the leader alone, so `ray start --block` stops its own Ray processes
    in order (SIGTERM to the whole group would take the GCS first, and the leader would wait
    30 s for it to drain the node); SIGKILL to the group then takes any straggler.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    proc.wait()
