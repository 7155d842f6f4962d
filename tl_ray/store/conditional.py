"""Conditional writes on the store: the compare-and-swap that registry versions, aliases and leases rest on.

On S3, ``If-None-Match: *`` (create only if absent) and ``If-Match: <ETag>`` (replace only the object
that was read); S3 answers 412 PreconditionFailed (or 409 ConditionalRequestConflict while another
conditional write to the key is in flight) and writes nothing. moto's server mode honours both too.
On a local folder, a hard link (which fails if the name exists) creates if absent, and an ``fcntl.flock``
on a sibling lock file guards read-compare-replace. The tag of a local file is the sha256 of its bytes.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

from tl_ray.errors import StorageError
from tl_ray.store import s3
from tl_ray.store.files import filesystem, publish_local, sha256_bytes, staging

_CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
_ABSENT = ("NoSuchKey", "404")


def read_tagged(uri: str) -> tuple[bytes | None, str | None]:
    """The bytes at ``uri`` and a tag for ``write_if`` (``(None, None)`` when absent)."""
    if s3.is_s3(uri):
        obj = _request(uri, "get_object", "read", _ABSENT)
        return (None, None) if obj is None else (obj["Body"].read(), obj["ETag"])
    try:
        data = Path(filesystem(uri)[1]).read_bytes()
    except FileNotFoundError:
        return None, None
    return data, sha256_bytes(data)


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
    if s3.is_s3(uri):
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        return _request(uri, "put_object", "write", _CONFLICT, Body=data, **condition) is not None
    path = Path(filesystem(uri)[1])
    with staging(path.parent) as tmp:
        tmp.write_bytes(data)
        if tag is None:
            # A reader never sees the file half-written (O_EXCL alone would show it empty for a moment).
            return publish_local(tmp, path, exclusive=True)
        with _locked(path):
            return read_tagged(uri)[1] == tag and publish_local(tmp, path)


def delete_if(uri: str, tag: str) -> bool:
    """Deletes ``uri`` only if it still holds the object ``tag`` came from."""
    if s3.is_s3(uri):
        return _request(uri, "delete_object", "delete", _CONFLICT, IfMatch=tag) is not None
    path = Path(filesystem(uri)[1])
    with _locked(path):
        if read_tagged(uri)[1] != tag:
            return False
        path.unlink()
    return True


def _request(uri: str, method: str, action: str, refused: tuple[str, ...], **kwargs):
    """One S3 request on the object at ``uri``: its response, or None when S3 answers a ``refused`` code."""
    from botocore.exceptions import ClientError

    bucket, key = s3.bucket_key(uri)
    try:
        return getattr(s3.client(), method)(Bucket=bucket, Key=key, **kwargs)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in refused:
            return None
        raise StorageError(f"cannot {action} {uri!r}: {exc}") from None


@contextmanager
def _locked(path: Path):
    # One lock file per object, never deleted: deleting it would let two writers lock different inodes.
    with open(path.with_name(f".{path.name}.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
