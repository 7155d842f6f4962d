"""A trial template started by the driver before the local Ray it starts.

``tl-ray tune`` without ``RAY_ADDRESS`` starts a local Ray, which takes seconds (3.6 s on two cores),
and then the node's template (``tl_ray.train.node_template``) imports TensorFlow for as long again
before the first trial can fork. Here the driver starts the template first, as its own child, so that
the import runs while Ray starts. It is Python's ``forkserver``, as a ``NodeTemplate`` actor's own
would be, and ends with the driver, as the local Ray does. Its output (TensorFlow's start-up notices)
goes to a log file of its own, not to the driver's terminal; the file is removed when the driver exits.

The sweep starts no ``NodeTemplate`` actor on the driver's node while this template runs: it publishes
the template's address in the cluster's key-value store (``publish``), where the node's trial actors
find it (``lookup``). An actor of its own would take one of the worker processes Ray starts ahead of
the first job, as many as the node has CPUs, so that one of Tune's trial actors would wait for a new
worker (Python and Ray's import) while the sweep starts. With ``tune.template_keep_alive_s`` above 0
the driver ends the template once it has had no trial process for that long (``keep_alive``), as a
kept actor would. It ends earlier with the sweep's templates (``node_template.stop_node_templates``,
``stop_kept_templates``). An actor that finds it gone falls back to the node's ``NodeTemplate``, which
the sweep then starts, or to a template of its own.

Only for a Ray the driver starts on its own node: on a cluster, templates run on every node, under Ray.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
import threading
import time

_info: dict | None = None  # the connection to this driver's template, and where it is published
_KV_KEY = "tl-ray-trial-template:{node_id}"
_KV_NAMESPACE = "tl-ray"


def start() -> None:
    """Starts this driver's template if it has none running; returns at once (the template imports meanwhile)."""
    global _info
    from multiprocessing import forkserver

    from tl_ray.train import trial_process

    if info() is not None:  # started for an earlier local Ray of this driver: this one's sweeps use it
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
    """Ties the template to the local Ray just started (its GCS address): only that cluster's sweeps use it."""
    if _info is not None:
        _info["gcs"] = gcs_address


def publish(node_id: str, keep_alive_s: float = 0.0) -> None:
    """Makes the template the one this job's trial actors on node ``node_id`` (this driver's) fork from, in the
    connected Ray's key-value store; with ``keep_alive_s`` > 0 it ends once it has had no trial process for
    that long (a sweep's call counts as use)."""
    import ray
    from ray.experimental import internal_kv

    with _lock:
        if _info is None:
            return
        if _info.get("node_id") == node_id:  # the sweep's later calls (every 10 s): only the keep-alive's use
            _keep_alive(keep_alive_s)
            return
        authkey = _info["authkey"]
        value = {"address": _info["address"], "pid": _info["pid"], "authkey": authkey.hex() if authkey else None,
                 "created": _created(_info["pid"]), "job": ray.get_runtime_context().get_job_id()}
        internal_kv._internal_kv_put(_KV_KEY.format(node_id=node_id), json.dumps(value), namespace=_KV_NAMESPACE)
        _info["node_id"] = node_id
        _keep_alive(keep_alive_s)


def lookup(node_id: str) -> dict | None:
    """In a trial actor: the connection to the template its job's driver published for node ``node_id``; None
    when there is none, it is another job's, or it has ended (its pid gone or taken by another process)."""
    import ray
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_KV_KEY.format(node_id=node_id), namespace=_KV_NAMESPACE)
    if not raw:
        return None
    value = json.loads(raw)
    if value["job"] != ray.get_runtime_context().get_job_id() or _created(value["pid"]) != value["created"]:
        return None
    return {"address": value["address"], "pid": value["pid"],
            "authkey": bytes.fromhex(value["authkey"]) if value["authkey"] else None}


def keep_alive(seconds: float) -> None:
    """Ends the template once it has had no trial process for ``seconds`` (counted from now at the latest);
    0 leaves it to the driver's exit."""
    with _lock:
        _keep_alive(seconds)


_lock = threading.RLock()  # the template's state (_info) against the keep-alive's watcher
_watching: dict | None = None  # the _info the running watcher watches


def _keep_alive(seconds: float) -> None:
    global _watching
    if _info is None:
        return
    _info["keep_alive_s"], _info["used"] = max(0.0, seconds), time.monotonic()
    if seconds > 0 and _watching is not _info:  # a watcher of an earlier template ends at its next look
        _watching = _info
        threading.Thread(target=_watch, args=(_info,), name="tl-ray-template-keep-alive", daemon=True).start()


def _watch(info: dict) -> None:
    global _watching
    from tl_ray.train.node_template import _children, _idle_for

    while True:
        time.sleep(min(10.0, max(0.2, info["keep_alive_s"] / 4 or 10.0)))
        children = _children(info["pid"])
        with _lock:
            if _info is not info:  # stopped, or another template started since
                return
            if children:
                info["used"] = time.monotonic()  # the keep-alive counts from the last trial process's end
            elif _idle_for(info["keep_alive_s"], info["used"], children):
                _stop()
                _watching = None
                return


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
    with _lock:
        _stop()


def _stop() -> None:
    global _info
    from multiprocessing import forkserver

    if _info is None:
        return
    info, _info = _info, None
    if "node_id" in info:
        _unpublish(info["node_id"])
    server = forkserver._forkserver
    try:
        server._stop()
    except OSError:  # it was reaped already: forget it as _stop would
        server._forkserver_pid = server._forkserver_address = server._forkserver_alive_fd = None


def _unpublish(node_id: str) -> None:
    try:
        import ray
        from ray.experimental import internal_kv

        if ray.is_initialized():
            internal_kv._internal_kv_del(_KV_KEY.format(node_id=node_id), namespace=_KV_NAMESPACE)
    except Exception:  # noqa: BLE001, S110 - Ray is going away: lookup checks that the template runs
        pass


def _created(pid: int) -> float | None:
    """When process ``pid`` started (None when it does not run): a pid taken again later has another time."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.create_time()
    except Exception:  # noqa: BLE001 - gone
        return None


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (an ended child of this driver that is not yet reaped does not)."""
    return _created(pid) is not None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
