"""Fault-injection hook for the resume and node-loss tests; inert unless ``TLRAY_TEST_HOOK_DIR`` is set.

With ``TLRAY_TEST_HOOK_DIR=D`` and a file ``D/<experiment>/pause_after_epoch``
holding N, each worker of that experiment, right after reporting epoch N,
writes the id of its Ray node to ``D/<experiment>/node.<rank>`` and then its
pid to ``D/<experiment>/pid.<rank>``, and waits there to be killed (a real
``os.kill`` of the pid, or the removal of the node, from the test). A worker
restarted from the checkpoint finds its pid file already written and carries on.
``N SUFFIX`` holds only the trial whose Tune trial id ends with SUFFIX (e.g. ``2 _00002``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "TLRAY_TEST_HOOK_DIR"
WAIT_S = 300.0


def after_report(experiment: str, epoch: int, rank: int) -> None:
    root = os.environ.get(ENV)
    if not root:
        return
    folder = Path(root) / experiment
    trigger = folder / "pause_after_epoch"
    if not trigger.is_file():
        return
    wanted, *suffix = trigger.read_text().split()
    if int(wanted) != epoch or (suffix and not _trial_id().endswith(suffix[0])):
        return
    pid_file = folder / f"pid.{rank}"
    if pid_file.exists():
        return
    _write(folder / f"node.{rank}", _node_id())
    _write(pid_file, str(os.getpid()))  # last: a test that sees the pid also sees the node
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:  # the test kills this process meanwhile
        time.sleep(0.05)
    raise RuntimeError(f"{ENV}: worker {rank} of {experiment!r} was paused for a kill that never came")


def _trial_id() -> str:
    from tl_ray.train.runtime import TRIAL_CONTEXT

    if TRIAL_CONTEXT:  # a forked trial process: no Ray session here
        return TRIAL_CONTEXT.get("trial_id") or ""
    try:
        from ray import tune

        return tune.get_context().get_trial_id() or ""
    except Exception:  # not in a Tune trial
        return ""


def _node_id() -> str:
    from tl_ray.train.runtime import TRIAL_CONTEXT

    if TRIAL_CONTEXT:
        return TRIAL_CONTEXT.get("node_id") or ""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")  # per rank: workers pause at the same time
    tmp.write_text(text)
    os.replace(tmp, path)


def cache_builder_started() -> None:
    """With ``D/hold_cache_build`` present, a feature-cache builder holding its lock waits until
    another process has started waiting for the same entry (``D/cache_waiter``), so a test
    sees two trials want one entry at the same time."""
    root = os.environ.get(ENV)
    if not root or not (Path(root) / "hold_cache_build").is_file():
        return
    deadline = time.monotonic() + WAIT_S
    while not (Path(root) / "cache_waiter").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ENV}: no second trial waited for the feature cache within {WAIT_S:.0f} s")
        time.sleep(0.05)


def cache_waiter_started() -> None:
    root = os.environ.get(ENV)
    if root and (Path(root) / "hold_cache_build").is_file():
        (Path(root) / "cache_waiter").write_text(str(os.getpid()))
