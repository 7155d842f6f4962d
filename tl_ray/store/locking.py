"""Whether a store's conditional writes can be trusted, proven once per process, and the weaker lease
that stands in for them where a user opts in.

Registry versions, alias moves and feature-cache builds rest on ``If-None-Match: *`` and
``If-Match`` (``tl_ray.store.conditional``). Some S3-compatible stores accept those headers and
ignore them: both of two creates of one key succeed. So before the first conditional write under a
scope (a registry root, a cache root) a probe object is created twice and then replaced with a
stale ETag: the second create and the stale replace must both be refused. The answer is cached per
endpoint and scope for the life of the process.

Where the store ignores them, tl-ray refuses to claim or build, unless ``TLRAY_STORAGE_LOCKING=lease``
opts in to ``FencedLock``: a lock object written plainly, read back after a pause (the last writer
wins), and checked again right before each protected write (the fencing check). It is weaker:
two writers whose requests straddle the pause or the check can both proceed, and a holder that
stalls longer than ``LOCK_TTL_S`` loses the lock by the wall clock. Use it only with a store that
offers no conditional writes.
"""

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


def locking_setting() -> str:
    """``TLRAY_STORAGE_LOCKING``: ``conditional`` (the default) or ``lease``.

    Raises:
        StorageError: another value is set.
    """
    value = os.environ.get("TLRAY_STORAGE_LOCKING", "").strip().lower() or "conditional"
    if value not in LOCKING_CHOICES:
        raise StorageError(f"TLRAY_STORAGE_LOCKING must be one of {list(LOCKING_CHOICES)}. Received: {value!r}.")
    return value


def mode(scope: str) -> str:
    """How conditional writes under ``scope`` are made: ``"conditional"`` or ``"lease"``.

    Args:
        scope: an ``s3://`` folder, e.g. a registry root; the probe object is written in it.

    Raises:
        StorageError: the store ignores conditional writes and ``TLRAY_STORAGE_LOCKING`` is not ``lease``.
    """
    honours_none_match, honours_match = probe(scope)
    if honours_none_match and honours_match:
        return "conditional"
    if locking_setting() == "lease":
        return "lease"
    ignored = " and ".join(h for h, ok in (("If-None-Match", honours_none_match), ("If-Match", honours_match)) if not ok)
    raise StorageError(
        f"the store at {s3.endpoint_name()} ignores {ignored}: a probe object under {scope!r} was "
        "overwritten where the store should have refused it, so registry versions, alias moves and feature-cache "
        "builds cannot be claimed safely there; nothing was written. Use a store that honours conditional writes "
        "(AWS S3 does), or set TLRAY_STORAGE_LOCKING=lease to use a lock object with a fencing check instead "
        "(weaker: see the storage section of cluster/README.md)."
    )


def probe(scope: str) -> tuple[bool, bool]:
    """``(honours If-None-Match, honours If-Match)`` for ``scope``, probed once per process."""
    key = (s3.endpoint_url(), scope.rstrip("/"))
    with _probe_lock:
        if key not in _probed:
            _probed[key] = _probe(scope)
        return _probed[key]


def _probe(scope: str) -> tuple[bool, bool]:
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"{scope.rstrip('/')}/.tlray-probe-{uuid.uuid4().hex[:12]}"
    bucket, key = s3.bucket_key(uri)
    refused = []
    try:
        for body, condition in ((b"1", {"IfNoneMatch": "*"}), (b"2", {"IfNoneMatch": "*"}), (b"3", {"IfMatch": _STALE_ETAG})):
            try:
                s3.client().put_object(Bucket=bucket, Key=key, Body=body, **condition)
                refused.append(False)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in objects.CONFLICT:
                    refused.append(True)
                elif code in ("NotImplemented", "501", "InvalidArgument", "400"):
                    refused.append(None)  # the header is rejected outright: no conditional writes either
                else:
                    raise objects.s3_error(uri, exc, "write a conditional-write probe at") from None
            except BotoCoreError as exc:
                raise objects.s3_error(uri, exc, "write a conditional-write probe at") from None
    finally:
        objects.delete(uri)
    if refused[0] is not False:  # the first create must succeed: a fresh key
        return False, bool(refused[2])
    return refused[1] is True, refused[2] is True


class FencedLock:
    """The lock object ``<scope>/.tlray-lock.json`` for ``TLRAY_STORAGE_LOCKING=lease`` (see the module).

    Use as a context manager around one read-compare-write, calling ``check()`` right before the write.
    """

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
        raise StorageError(f"lock {self.uri!r} stayed held for over {WAIT_S:.0f} s (TLRAY_STORAGE_LOCKING=lease). "
                           "If no tl-ray process holds it, delete the object and retry.")

    def check(self) -> None:
        """The fencing check: raises unless this lock still holds ``uri``."""
        if (self._holder() or {}).get("token") != self.token:
            raise StorageError(f"lost the lock {self.uri!r} before writing (another process took it over, or this "
                               f"one stalled past {LOCK_TTL_S:.0f} s); nothing was written. Retry.")

    def __exit__(self, *exc) -> None:
        if (self._holder() or {}).get("token") == self.token:
            objects.delete(self.uri)
