"""Joining a Ray cluster: the one in ``RAY_ADDRESS``, the one this node belongs to, or a new local one."""

from __future__ import annotations

import os

from tl_ray.errors import ClusterError

VERBOSE_ENV = "TLRAY_VERBOSE"
_session: dict = {}  # the Ray session this process started: its log folder


def verbose() -> bool:
    """``tl-ray -v``: Ray Tune's own progress tables and every worker's output on the console."""
    return os.environ.get(VERBOSE_ENV) == "1"


def connect_ray() -> None:
    """Joins the cluster in ``RAY_ADDRESS`` (set inside Ray Jobs), else starts a local one.

    Never attaches to whatever Ray instance happens to run on the machine.
    """
    import os

    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or "local"
        check_reachable(address)
        # Workers' output (TensorFlow, Ray Train) stays in Ray's logs unless `tl-ray -v`.
        context = ray.init(address=address, include_dashboard=False, log_to_driver=verbose(), configure_logging=False)
        _session["logs"] = os.path.join(context.address_info.get("session_dir") or "/tmp/ray/session_latest", "logs")


def workers_output() -> str:
    """Where the trials' own output is: on this console (``tl-ray -v``), else Ray's log folder."""
    if verbose():
        return "workers' output below"
    where = _session.get("logs") or "/tmp/ray/session_latest/logs on each node"
    return f"workers' output in {where} (tl-ray -v shows it here)"


def join_running_cluster() -> None:
    """Joins the running cluster in ``RAY_ADDRESS``, else the one this node belongs to (``ray start``); never
    starts one.

    Raises:
        ClusterError: no cluster there.
    """
    import os

    import ray

    address = os.environ.get("RAY_ADDRESS", "")
    address = address if address and address != "local" and not address.startswith("http") else "auto"
    if address == "auto":  # the cluster the last `ray start` here recorded: Ray retries a dead one for minutes
        # Ray's only private call in tl-ray, checked against Ray 2.60: no public API reads the address
        # `ray start` recorded, and ray.init("auto") on a stale one retries for minutes before failing.
        from ray._private.services import find_bootstrap_address

        found = find_bootstrap_address(None)
        if found:
            check_reachable(found, source="the address the last `ray start` on this node recorded")
    else:
        check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterError(f"no running Ray cluster at {address!r} ({exc}). Start one with `ray start --head`, "
                           "or set RAY_ADDRESS to its address (host:6379).") from None


def check_reachable(address: str, timeout: float = 5.0, source: str = "RAY_ADDRESS") -> None:
    """Fails fast when ``address`` (``host:port`` of a cluster's GCS) does not answer; Ray itself would retry
    for minutes.

    Raises:
        ClusterError: nothing listens there.
    """
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():  # "local", "auto", ray:// clients: Ray's own rules
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()  # [::1]:6379 too
    except OSError as exc:
        if source == "RAY_ADDRESS":
            raise ClusterError(f"no Ray cluster answers at RAY_ADDRESS={address!r} ({exc}). Start it (`ray start "
                               "--head`), fix RAY_ADDRESS, or unset it to run on a local Ray.") from None
        raise ClusterError(f"no Ray cluster answers at {address!r}, {source} ({exc}). Start a cluster (`ray start "
                           "--head`), or set RAY_ADDRESS to a running cluster's address.") from None


def with_cluster_gpus(spec, out=print):
    """The spec with ``train.gpus_per_worker: auto`` resolved on the connected cluster: 1 GPU per worker when
    the cluster has GPUs, else none. A spec asking for no GPUs on a cluster that has some is told so, once."""
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

