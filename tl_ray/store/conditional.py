"""Conditional writes, the compare-and-swap registry versions, aliases and leases rest on. On S3,
``If-None-Match: *`` / ``If-Match: <ETag>``, read back; locally, a hard link creates if absent and an
``fcntl.flock`` guards read-compare-replace, with the sha256 of a file's bytes as its tag."""

from __future__ import annotations

import fcntl
import posixpath
from contextlib import contextmanager
from pathlib import Path

from tl_ray.store import locking, objects, readback, s3
from tl_ray.store.files import filesystem, publish_local, sha256_bytes, staging


def read_tagged(uri: str) -> tuple[bytes | None, str | None]:
    """The bytes at ``uri`` and a tag for ``write_if`` (``(None, None)`` when absent)."""
    if s3.is_s3(uri):
        return objects.get(uri) or (None, None)
    try:
        data = Path(filesystem(uri)[1]).read_bytes()
    except FileNotFoundError:
        return None, None
    return data, sha256_bytes(data)


def create_exclusive(uri: str, data: bytes, *, scope: str | None = None) -> bool:
    """Writes ``uri`` only if nothing is there; False when it already exists."""
    return write_if(uri, data, None, scope=scope)


def write_if(uri: str, data: bytes, tag: str | None, *, scope: str | None = None) -> bool:
    """Writes ``data`` only if ``uri`` still holds the object ``tag`` (from ``read_tagged``) came from; with
    ``tag`` None, only if absent. True when written (and, on S3, read back); False when the object changed.
    ``scope``: on S3, the folder whose conditional-write support is probed. Defaults to the object's folder.
    StorageError when the store cannot be written, ignores conditional writes (without lease locking), or
    does not read the object back as written.
    """
    if s3.is_s3(uri):
        if locking.mode(scope or posixpath.dirname(uri)) == "lease":
            return _leased(uri, tag, scope, lambda: (objects.put(uri, data), readback.check_written(uri, data)))
        written = objects.put(uri, data, **({"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}))
        if written is not None:
            readback.check_written(uri, data, written.get("ETag"))
        return written is not None
    path = Path(filesystem(uri)[1])
    with staging(path.parent) as tmp:
        tmp.write_bytes(data)
        if tag is None:
            # A reader never sees the file half-written (O_EXCL alone would show it empty for a moment).
            return publish_local(tmp, path, exclusive=True)
        with _locked(path):
            return read_tagged(uri)[1] == tag and publish_local(tmp, path)


def delete_if(uri: str, tag: str, *, scope: str | None = None) -> bool:
    """Deletes ``uri`` only if it still holds the object ``tag`` came from."""
    if s3.is_s3(uri):
        if locking.mode(scope or posixpath.dirname(uri)) == "lease":
            return _leased(uri, tag, scope, lambda: objects.delete(uri))
        return objects.delete(uri, IfMatch=tag)
    path = Path(filesystem(uri)[1])
    with _locked(path):
        if read_tagged(uri)[1] != tag:
            return False
        path.unlink()
    return True


def _leased(uri: str, tag: str | None, scope: str | None, write) -> bool:
    """``write()`` under the scope's ``FencedLock`` if ``uri`` still has ``tag`` (lease locking)."""
    with locking.FencedLock(scope or posixpath.dirname(uri)) as lock:
        if read_tagged(uri)[1] != tag:
            return False
        lock.check()
        write()
        return True


@contextmanager
def _locked(path: Path):
    # One lock file per object, never deleted: deleting it would let two writers lock different inodes.
    # Closing the file releases the lock.
    with open(path.with_name(f".{path.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
