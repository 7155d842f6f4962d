"""The sweep's full log ``tl-ray.log``: what Ray, Ray Tune and TensorFlow log in the driver, and what workers print.

Not Tune's own ``log_to_file``: it breaks trials on reused actors.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterator

from tl_ray import store
from tl_ray.errors import StorageError
from tl_ray.tune.cluster import verbose, workers_output, workers_output_to

LOG_NAME = "tl-ray.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that do not pass their records to the root logger; the file handler is attached to each.
_OWN_HANDLERS = ("ray", "ray.data", "tensorflow")


def log_path(experiment_uri: str) -> Path:
    """In the experiment folder on a local store; on S3 a local file (``~/.cache/tl-ray/logs/<bucket>/<key>/``)
    copied into the folder at the end."""
    if store.is_s3(experiment_uri):
        return store.local_cache_dir("logs", *experiment_uri.split("://", 1)[1].strip("/").split("/")) / LOG_NAME
    _, path = store.filesystem(experiment_uri)
    return Path(path) / LOG_NAME


def shown_path(experiment_uri: str) -> str:
    """The log's path as the sweep's header names it."""
    local = log_path(experiment_uri)
    if store.is_s3(experiment_uri):
        return f"{local} (copied to {store.join(experiment_uri, LOG_NAME)} at the end)"
    return str(local)


def _quiet_tune(record: logging.LogRecord) -> bool:
    """A console filter: Ray Tune's records stay in the log alone (unless ``tl-ray -v``)."""
    return not record.name.startswith("ray.tune") or record.levelno >= logging.CRITICAL


@contextlib.contextmanager
def driver_log(experiment_uri: str) -> Iterator[Path]:
    """Appends the driver's logging to ``tl-ray.log`` of ``experiment_uri`` while the block runs; yields the
    local file, which on S3 is copied into the experiment folder at the end, also when the block raises."""
    path = log_path(experiment_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} tl-ray sweep {experiment_uri}; {workers_output()}\n")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    consoles = [] if verbose() else [h for h in logging.getLogger("ray").handlers
                                     if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    workers = logging.getLogger("tl_ray.workers")  # its records go to the log alone
    workers.propagate = False
    workers.setLevel(logging.INFO)
    own = (logging.getLogger(n) for n in _OWN_HANDLERS)
    loggers = [logging.getLogger(), workers, *(logger for logger in own if not logger.propagate)]
    for logger in loggers:
        logger.addHandler(handler)
    for h in consoles:
        h.addFilter(_quiet_tune)
    try:
        with workers_output_to(workers):
            yield path
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        for h in consoles:
            h.removeFilter(_quiet_tune)
        handler.close()
        if store.is_s3(experiment_uri):
            copy_log(path, experiment_uri)


def copy_log(path: Path, experiment_uri: str) -> None:
    """Copies the local log to the experiment folder; a failure is only said on stderr (the sweep's outcome
    matters more)."""
    try:
        store.write_bytes(store.join(experiment_uri, LOG_NAME), path.read_bytes())
    except StorageError as exc:
        print(f"warning: the full log stays at {path}: {exc}", file=sys.stderr)
