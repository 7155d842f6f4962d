"""A trial template started by the driver before the local Ray it starts.

``tl-ray tune`` without ``RAY_ADDRESS`` starts a local Ray, which takes seconds (3.6 s on two cores),
and then the node's template (``tl_ray.train.node_template``) imports TensorFlow for as long again
before the first trial can fork. Here the driver starts the template first, as its own child, so that
the import runs while Ray starts; the node's ``NodeTemplate`` actor then adopts it instead of starting
one. It is Python's ``forkserver``, as the actor's own would be, and ends with the driver, as the
local Ray does. Its output (TensorFlow's start-up notices) goes to a log file of its own, not to the
driver's terminal; the file is removed when the driver exits. The template ends earlier with the sweep's
templates (``node_template.stop_node_templates``, ``stop_kept_templates``), and when its adopting actor
expires (``tune.template_keep_alive_s``).

Only for a Ray the driver starts on its own node: on a cluster, templates run on every node, under Ray.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile

_info: dict | None = None  # the connection to this driver's template (node_template.NodeTemplate's adopt)


def start() -> None:
    """Starts this driver's template if it has none running; returns at once (the template imports meanwhile)."""
    global _info
    from multiprocessing import forkserver

    from tl_ray.train import trial_process

    if info() is not None:  # started for an earlier local Ray of this driver: this one's actor adopts it
        return
    trial_process.preload_template()
    fd, log = tempfile.mkstemp(prefix="tl-ray-template-", suffix=".log")
    atexit.register(_remove, log)
    # The template inherits this process's stdout and stderr: point them at the log while it starts.
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        forkserver.ensure_running()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)
    server = forkserver._forkserver
    _info = {"address": server._forkserver_address, "pid": server._forkserver_pid,
             "authkey": getattr(server, "_forkserver_authkey", None), "log": log}


def bind(gcs_address: str) -> None:
    """Ties the template to the local Ray just started (its GCS address): only that cluster's actor adopts it."""
    if _info is not None:
        _info["gcs"] = gcs_address


def info(gcs_address: str | None = None) -> dict | None:
    """The connection to this driver's template; None when it started none, the template has ended, or (with
    ``gcs_address``) it was started for another Ray than that one."""
    if _info is None or not running(_info["pid"]):
        return None
    if gcs_address is not None and _info.get("gcs") != gcs_address:
        return None
    return _info


def stop() -> None:
    """Ends this driver's template, if it has one, and waits for its exit; its trial processes end with their
    actors. Python's own stop: the template exits once its "alive" pipe closes (after its imports, if it is
    still importing), and the next ``start`` starts a new one."""
    global _info
    from multiprocessing import forkserver

    if _info is None:
        return
    _info = None
    server = forkserver._forkserver
    try:
        server._stop()
    except OSError:  # it was reaped already: forget it as _stop would
        server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (an ended child of this driver that is not yet reaped does not)."""
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001 - gone
        return False


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
