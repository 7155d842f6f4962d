"""Joining a Ray cluster (``RAY_ADDRESS``, else a new local one) and resolving GPU settings on it."""

from __future__ import annotations

import contextlib
import os

from tl_ray.errors import ClusterError

VERBOSE_ENV = "TLRAY_VERBOSE"
# For every Ray worker tl-ray starts: Tune runs each trial of a reused actor in a new thread, and glibc gives
# new threads new malloc arenas (up to 8 per core), so the actor's memory grew with every trial.
WORKER_ENV = {"MALLOC_ARENA_MAX": "4"}
_session: dict = {}  # the Ray connection this process started: whether it streams workers' output, its log folder


def verbose() -> bool:
    """``tl-ray -v``: Ray Tune's own progress tables and every worker's output on the console."""
    return os.environ.get(VERBOSE_ENV) == "1"


def connect_ray() -> None:
    """Joins the cluster in ``RAY_ADDRESS`` (set inside Ray Jobs), else starts a local one; never attaches to
    whatever Ray instance happens to run on the machine."""
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or "local"
        check_reachable(address)
        if address == "local":  # the new cluster's workers inherit this environment
            for name, value in WORKER_ENV.items():
                os.environ.setdefault(name, value)
        # Workers' output reaches this process for the sweep's log; the console shows it with `tl-ray -v`.
        dispatcher = _stdstream_dispatcher()
        context = ray.init(address=address, include_dashboard=False, log_to_driver=verbose() or dispatcher is not None,
                           configure_logging=False)
        if dispatcher is not None and not verbose():
            dispatcher.remove_handler("ray_print_logs")  # Ray's printer of workers' output on the console
        _session.update(connection=_connection(), streamed=dispatcher is not None,
                        logs=os.path.join(context.address_info.get("session_dir") or "/tmp/ray/session_latest", "logs"))


def _connection() -> tuple[str, str] | None:
    """This process's Ray connection (node, job), which a later ``ray.init`` after ``ray.shutdown`` changes."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return context.get_node_id(), context.get_job_id()


def _stdstream_dispatcher():
    """Ray's dispatcher of workers' output in the driver, else None (a private API: the public one only prints
    it on the console; checked against Ray 2.60)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    return global_worker_stdstream_dispatcher


@contextlib.contextmanager
def workers_output_to(logger):
    """Logs every line the workers print (``(<actor> pid=<pid>, ip=<ip>) <line>``) to ``logger`` while the block
    runs (nothing when Ray was initialised without ``log_to_driver``)."""
    dispatcher = _stdstream_dispatcher()
    if dispatcher is None:
        yield
        return

    def write(batch: dict) -> None:
        name = batch.get("actor_name") or batch.get("task_name") or ""
        prefix = f"({name + ' ' if name else ''}pid={batch.get('pid')}, ip={batch.get('ip')})"
        lines = batch.get("lines", ())
        if batch.get("pid") == "autoscaler":  # its status every few seconds: only its events, as on Ray's console
            lines = [line.split(":event_summary:", 1)[1] for line in lines if ":event_summary:" in line]
        for line in lines:
            logger.info("%s %s", prefix, line)

    dispatcher.add_handler("tl-ray log", write)
    try:
        yield
    finally:
        dispatcher.remove_handler("tl-ray log")


def workers_output() -> str:
    """Where the trials' own output is: in the sweep's log when ``connect_ray`` started Ray streaming it, else
    in Ray's log folder."""
    ours = _session.get("connection") is not None and _session["connection"] == _connection()
    if ours and _session["streamed"]:
        return "workers' output included" + (", and shown below" if verbose() else " (tl-ray -v shows it live)")
    if verbose():
        return "workers' output below"
    where = _session["logs"] if ours else "/tmp/ray/session_latest/logs on each node"
    return f"workers' output in {where} (tl-ray -v shows it here)"


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raises ClusterError at once when ``address`` (``RAY_ADDRESS``, ``host:port`` of a cluster's GCS) does
    not answer: Ray itself would retry for minutes."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():  # "local", "auto", ray:// clients: Ray's own rules
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()  # [::1]:6379 too
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at RAY_ADDRESS={address!r} ({exc}). Start it (`ray start "
                           "--head`), fix RAY_ADDRESS, or unset it to run on a local Ray.") from None


def with_cluster_gpus(spec, out=print):
    """The spec with ``train.gpus_per_worker: auto`` resolved on the connected cluster (1 if it has GPUs,
    else 0); a spec asking for no GPUs on a cluster that has some is told so, once."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    asked = spec.train.gpus_per_worker
    if asked == "auto":
        train = spec.train.model_copy(update={"gpus_per_worker": 1.0 if gpus else 0.0})
        return spec.model_copy(update={"train": train})
    if gpus and not asked and not _session.get("told_no_gpus"):
        _session["told_no_gpus"] = True
        out(f"note: the cluster has {gpus:g} GPUs, but train.gpus_per_worker is 0: trials train on CPUs. "
            "Set train.gpus_per_worker to auto or a number to train on them.")
    return spec

