"""Conditional writes proven, not assumed: some S3-compatible stores accept ``If-None-Match`` and ``If-Match``
and ignore them, so each scope is probed once per process. Where they are ignored, only ``storage.locking:
lease`` (or ``TLRAY_STORAGE_LOCKING=lease``) allows writing, under the weaker ``FencedLock``."""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid

from tl_ray.errors import StorageError
from tl_ray.store import objects, s3

LOCKING_CHOICES = ("conditional", "lease")
LOCK_NAME = ".tlray-lock.json"
SETTLE_S = 0.2  # pause between writing the lock and reading it back: concurrent takers' PUTs land first
LOCK_TTL_S = 30.0  # a lock older than this by its holder's clock is a dead holder's
WAIT_S = 120.0
_STALE_ETAG = '"00000000000000000000000000000000"'
_probed: dict[tuple, tuple[bool, bool]] = {}
_probe_lock = threading.Lock()
_chosen: str | None = None  # the spec's storage_locking, set by use_locking


def use_locking(value: str | None) -> None:
    """Sets this process's locking (``"conditional"``, ``"lease"``, or None to leave it to
    ``TLRAY_STORAGE_LOCKING``) from a spec's ``storage_locking``."""
    global _chosen
    if value is not None and value not in LOCKING_CHOICES:
        raise StorageError(f"storage.locking must be one of {list(LOCKING_CHOICES)}. Received: {value!r}.")
    _chosen = value


def locking_setting() -> str:
    """The spec's ``storage.locking`` if set (``use_locking``), else ``TLRAY_STORAGE_LOCKING`` (default
    ``conditional``); raises StorageError for another value."""
    if _chosen is not None:
        return _chosen
    value = os.environ.get("TLRAY_STORAGE_LOCKING", "").strip().lower() or "conditional"
    if value not in LOCKING_CHOICES:
        raise StorageError(f"TLRAY_STORAGE_LOCKING must be one of {list(LOCKING_CHOICES)}. Received: {value!r}.")
    return value


def mode(scope: str) -> str:
    """How conditional writes under the ``s3://`` folder ``scope`` are made: ``"conditional"`` or ``"lease"``;
    StorageError when the store ignores them and the locking setting is not ``lease``."""
    honours_none_match, honours_match = probe(scope)
    if honours_none_match and honours_match:
        return "conditional"
    if locking_setting() == "lease":
        return "lease"
    checks = (("If-None-Match", honours_none_match), ("If-Match", honours_match))
    ignored = " and ".join(header for header, honoured in checks if not honoured)
    raise StorageError(f"the store at {s3.endpoint_name()} ignores {ignored}: a probe object under {scope!r} "
                       "was overwritten where the store should have refused it, so registry versions, alias "
                       "moves and feature-cache builds cannot be claimed safely there; nothing was written. "
                       "Use a store that honours conditional writes (AWS S3 does), or set the spec's "
                       "storage.locking: lease (or TLRAY_STORAGE_LOCKING=lease) to use a lock object with a "
                       "fencing check instead (weaker: see the storage section of cluster/README.md).")


def probe(scope: str) -> tuple[bool, bool]:
    """``(honours If-None-Match, honours If-Match)`` for ``scope``, probed once per process: a fresh object is
    created twice, then replaced with a stale ETag, and both repeats must be refused."""
    key = (s3.endpoint_url(), scope.rstrip("/"))
    with _probe_lock:
        if key not in _probed:
            uri = f"{key[1]}/.tlray-probe-{uuid.uuid4().hex[:12]}"
            try:
                objects.put(uri, b"1", IfNoneMatch="*")  # a fresh key: the store must take it
                _probed[key] = (objects.put(uri, b"2", IfNoneMatch="*") is None,
                                objects.put(uri, b"3", IfMatch=_STALE_ETAG) is None)
            finally:
                objects.delete(uri)
        return _probed[key]


class FencedLock:
    """The lock object ``<scope>/.tlray-lock.json`` for ``lease`` locking, held around one read-compare-write,
    with ``check()`` (the fencing check) right before the write. Weaker than conditional writes: two writers
    whose requests straddle the ``SETTLE_S`` pause or the check can both proceed, and a holder stalled past
    ``LOCK_TTL_S`` loses the lock by the wall clock."""

    def __init__(self, scope: str):
        self.uri = f"{scope.rstrip('/')}/{LOCK_NAME}"
        self.token = uuid.uuid4().hex

    def _holder(self) -> dict | None:
        found = objects.get(self.uri)
        try:
            return None if found is None else dict(json.loads(found[0]))
        except (ValueError, TypeError):
            return None  # a torn or foreign lock object: free

    def __enter__(self) -> "FencedLock":
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            held = self._holder()
            if held is None or time.time() - float(held.get("at", 0)) > LOCK_TTL_S:
                body = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
                objects.put(self.uri, json.dumps(body).encode())
                time.sleep(SETTLE_S)  # part of the protocol: let concurrent takers' writes land, the last wins
                if (self._holder() or {}).get("token") == self.token:
                    return self
            time.sleep(random.uniform(0.02, 0.2))  # polling the holder's lock
        raise StorageError(f"lock {self.uri!r} stayed held for over {WAIT_S:.0f} s (lease locking). "
                           "If no tl-ray process holds it, delete the object and retry.")

    def check(self) -> None:
        """The fencing check: raises unless this lock still holds ``uri``."""
        if (self._holder() or {}).get("token") != self.token:
            raise StorageError(f"lost the lock {self.uri!r} before writing (another process took it over, or this "
                               f"one stalled past {LOCK_TTL_S:.0f} s); nothing was written. Retry.")

    def __exit__(self, *exc) -> None:
        if (self._holder() or {}).get("token") == self.token:
            objects.delete(self.uri)
