"""Conditional writes on the store: the compare-and-swap that registry versions, aliases and cache locks rest on.

On S3, ``PutObject`` with ``If-None-Match: *`` (create only if absent) and
``If-Match: <ETag>`` (replace only the object that was read); S3 answers 412
PreconditionFailed (or 409 ConditionalRequestConflict while another
conditional write to the key is in flight) and nothing is written. moto's
server mode honours both headers as well, so the tests exercise this path.

On a local folder, a hard link (which fails if the name exists) for create-if-absent, and an
``fcntl.flock`` on a sibling lock file around read-compare-replace (the file
itself is replaced atomically with ``os.replace``). The tag of a local file
is the sha256 of its bytes.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tl_ray import storage
from tl_ray.errors import StorageError

_CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def _s3(uri: str):
    import boto3

    bucket, _, key = uri[len("s3://") :].partition("/")
    return boto3.client("s3", endpoint_url=storage.endpoint_url()), bucket, key


def _conflict(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in _CONFLICT_CODES


def read_tagged(uri: str) -> tuple[bytes | None, str | None]:
    """The bytes at ``uri`` and a tag for ``write_if`` (``(None, None)`` when absent)."""
    if storage.is_s3(uri):
        from botocore.exceptions import ClientError

        client, bucket, key = _s3(uri)
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None, None
            raise StorageError(f"cannot read {uri!r}: {exc}") from None
        return obj["Body"].read(), obj["ETag"]
    _, path = storage.filesystem(uri)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, None
    return data, storage.sha256_bytes(data)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Writes ``uri`` only if nothing is there; False when it already exists."""
    return write_if(uri, data, None)


def write_if(uri: str, data: bytes, tag: str | None) -> bool:
    """Writes ``data`` only if ``uri`` still holds the object ``tag`` came from (None: only if absent).

    Returns:
        True when written; False when the object changed (or appeared) since it was read.

    Raises:
        StorageError: the store cannot be reached or written.
    """
    if storage.is_s3(uri):
        from botocore.exceptions import ClientError

        client, bucket, key = _s3(uri)
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
            return True
        except ClientError as exc:
            if _conflict(exc):
                return False
            raise StorageError(f"cannot write {uri!r}: {exc}") from None
    _, path = storage.filesystem(uri)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tag is None:
        # Written aside, then hard-linked into place: link() fails if the name exists, and a
        # reader never sees the file half-written (O_EXCL alone would show it empty for a moment).
        tmp = _write_aside(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    with _locked(path):
        try:
            current = storage.sha256_bytes(path.read_bytes())
        except FileNotFoundError:
            return False
        if current != tag:
            return False
        os.replace(_write_aside(path, data), path)
    return True


def _write_aside(path: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return tmp


def delete_if(uri: str, tag: str) -> bool:
    """Deletes ``uri`` only if it still holds the object ``tag`` came from."""
    if storage.is_s3(uri):
        from botocore.exceptions import ClientError

        client, bucket, key = _s3(uri)
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=tag)
            return True
        except ClientError as exc:
            if _conflict(exc):
                return False
            raise StorageError(f"cannot delete {uri!r}: {exc}") from None
    _, path = storage.filesystem(uri)
    path = Path(path)
    with _locked(path):
        try:
            if storage.sha256_bytes(path.read_bytes()) != tag:
                return False
        except FileNotFoundError:
            return False
        path.unlink()
    return True


@contextmanager
def _locked(path: Path):
    # One lock file per object, never deleted: deleting it would let two writers lock different inodes.
    with open(path.with_name(f".{path.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
