"""URIs to filesystems: local paths, ``file://`` and ``s3://bucket/prefix``.

All I/O goes through ``pyarrow.fs`` (boto3 only where pyarrow has no call).
S3 honours the standard AWS credential chain and ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), so the same code talks to S3, MinIO or a test server.

Writes that others read appear atomically: a single object is written aside
and renamed (local) or PUT in one request (S3, where an object is never
visible half-written); a folder of files is published by writing its marker
file last, and readers ignore folders without a marker.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import posixpath
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from tl_ray.errors import StorageError

# Bounded retries: an unreachable bucket fails in seconds, not minutes.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 20.0
S3_MAX_ATTEMPTS = 4
# A streaming read (a shard being read through an epoch) keeps retrying a store that went away
# for this long, on top of the client's own retries, then fails with StorageError.
READ_RETRY_TIMEOUT_S = 60.0
READ_RETRY_BACKOFF_S = (0.1, 4.0)  # first and largest pause between attempts (full jitter)
# S3 error codes that retrying cannot fix.
_PERMANENT_S3_ERRORS = ("ACCESS_DENIED", "NO_SUCH_KEY", "NO_SUCH_BUCKET", "INVALID_ACCESS_KEY", "SIGNATURE")

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def is_absolute(uri: str) -> bool:
    """True for a URI or an absolute local path; False for a store-relative path."""
    return "://" in uri or os.path.isabs(uri)


def join(base: str, *parts: str) -> str:
    """Joins URI parts with '/', keeping the scheme."""
    out = base.rstrip("/")
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    kwargs = dict(
        region=region,
        connect_timeout=S3_CONNECT_TIMEOUT_S,
        request_timeout=S3_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS),
    )
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if os.environ.get("AWS_S3_FORCE_PATH_STYLE", "1") != "0":
            kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Returns ``(pyarrow filesystem, path within it)`` for ``uri``."""
    if is_s3(uri):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return _s3_filesystem(endpoint_url(), region), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        raise StorageError(
            f"storage URI {uri!r} has an unsupported scheme. Use a local path, file:// or s3://bucket/prefix."
        )
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _wrap(uri: str, exc: Exception, action: str) -> StorageError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = ""
    if is_s3(uri):
        hint = (
            f" Check that the bucket exists and is reachable"
            f" (endpoint: {endpoint_url() or 'AWS default'}) and that credentials are set."
        )
    return StorageError(f"cannot {action} {uri!r}: {text}.{hint}")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "reach") from None


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path, compression=None) as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{uri!r} does not exist.") from None
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "read") from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` to ``uri`` atomically: readers see the old object or the whole new one."""
    fs, path = filesystem(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        else:
            with fs.open_output_stream(path, compression=None) as f:  # one PUT (or multipart): never visible half-written
                f.write(data)
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "write") from None


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def open_input_file(uri: str):
    """A seekable random-access file (for Parquet)."""
    fs, path = filesystem(uri)
    try:
        return fs.open_input_file(path)
    except FileNotFoundError:
        raise StorageError(f"{uri!r} does not exist.") from None
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "open") from None


def is_transient(uri: str, exc: BaseException) -> bool:
    """True when ``exc`` from reading ``uri`` may go away on retry (network, 5xx, throttling).

    Only object-store errors are transient: a local file that fails to read is broken, and
    a missing object or a refused credential stays so.
    """
    if not is_s3(uri) or not isinstance(exc, (OSError, pa.ArrowException)):
        return False
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    text = str(exc)
    return "AWS Error" in text and not any(code in text for code in _PERMANENT_S3_ERRORS)


def retry_read(uri: str, attempt, *, what: str, timeout_s: float | None = None, on_retry=None):
    """Runs ``attempt()`` until it succeeds, retrying transient store errors with capped backoff.

    The client's own retry strategy (``S3_MAX_ATTEMPTS``) runs inside each attempt; this outer
    loop rides out longer outages (a restarting server) and gives up after ``timeout_s``.
    ``attempt`` must be idempotent: callers pass the offset to resume from, so a retried read
    neither skips nor repeats data.

    Args:
        uri: the object being read, named in logs and errors.
        attempt: a callable doing one read.
        what: what is being read, e.g. ``"bytes 0..8388608"``, for logs and errors.
        timeout_s: give up after this many seconds. Defaults to ``READ_RETRY_TIMEOUT_S``.
        on_retry: called with the exception before each retry (e.g. to reopen a handle). Defaults to None.

    Returns:
        What ``attempt()`` returns.

    Raises:
        StorageError: the store stayed unreachable for ``timeout_s``; names ``uri`` and ``what``.
        Exception: whatever non-transient error ``attempt`` raised, unchanged.
    """
    timeout_s = READ_RETRY_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    first, cap = READ_RETRY_BACKOFF_S
    failures = 0
    while True:
        try:
            return attempt()
        except (OSError, pa.ArrowException) as exc:
            if not is_transient(uri, exc):
                raise
            failures += 1
            pause = random.uniform(0, min(cap, first * 2 ** (failures - 1)))
            if time.monotonic() + pause > deadline:
                text = str(exc).strip().splitlines()[0]
                raise StorageError(
                    f"cannot read {uri!r} ({what}): the store stayed unreachable for {timeout_s:g}s over "
                    f"{failures} attempts (last error: {text}). Check that the endpoint "
                    f"({endpoint_url() or 'AWS default'}) is up and the bucket exists."
                ) from None
            log.warning("retrying read of %s (%s) after transient error #%d: %s", uri, what, failures, exc)
            if on_retry is not None:
                on_retry(exc)
            time.sleep(pause)


def open_input_stream(uri: str):
    """A sequential stream (for TFRecord and large reads)."""
    fs, path = filesystem(uri)
    try:
        return fs.open_input_stream(path, compression=None)
    except FileNotFoundError:
        raise StorageError(f"{uri!r} does not exist.") from None
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "open") from None


def list_dir(uri: str) -> list[str]:
    """Names directly under ``uri`` (files and folders), sorted; empty when it does not exist."""
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "list") from None
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def delete(uri: str) -> None:
    """Deletes a file or a folder tree; missing is fine."""
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "delete") from None


def upload_dir(local_dir: str | Path, uri: str, marker: str | None = None) -> None:
    """Copies the files of ``local_dir`` to ``uri``; the file named ``marker`` goes last.

    Local targets are staged in a sibling folder and renamed into place, so the
    folder appears whole. On S3 the marker is written last: readers treat a
    folder without its marker as absent.
    """
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    if marker is not None:
        files.sort(key=lambda p: p.relative_to(local_dir).as_posix() == marker)
    fs, path = filesystem(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            staging = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
            shutil.copytree(local_dir, staging)
            try:
                os.rename(staging, path)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return
        for f in files:
            rel = f.relative_to(local_dir).as_posix()
            with fs.open_output_stream(f"{path}/{rel}", compression=None) as out, open(f, "rb") as src:
                shutil.copyfileobj(src, out, length=8 * 2**20)
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "write") from None


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copies the tree at ``uri`` into ``local_dir`` and returns it."""
    local_dir = Path(local_dir)
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=False))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(path) :].lstrip("/")
            dest = local_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path, compression=None) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, length=8 * 2**20)
    except FileNotFoundError:
        raise StorageError(f"{uri!r} does not exist.") from None
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "read") from None
    return local_dir


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def ensure_bucket(uri: str) -> None:
    """Creates the bucket of an ``s3://`` URI if it does not exist (tests and first runs)."""
    if not is_s3(uri):
        return
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = uri[len("s3://") :].split("/", 1)[0]
    client = boto3.client("s3", endpoint_url=endpoint_url())
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            client.create_bucket(Bucket=bucket)
        else:
            raise _wrap(uri, exc, "reach") from None
    except BotoCoreError as exc:
        raise _wrap(uri, exc, "reach") from None


def local_cache_dir(*parts: str) -> Path:
    """A per-node cache folder (``TLRAY_CACHE`` or ~/.cache/tl-ray)."""
    root = Path(os.environ.get("TLRAY_CACHE", Path.home() / ".cache" / "tl-ray"))
    out = root.joinpath(*parts)
    out.mkdir(parents=True, exist_ok=True)
    return out


def list_files(uri: str) -> list[str]:
    """Paths (relative to ``uri``, '/'-separated) of every file under ``uri``, sorted; empty when missing."""
    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except (OSError, pa.ArrowException) as exc:
        raise _wrap(uri, exc, "list") from None
    base = path.rstrip("/") + "/"
    return sorted(i.path[len(base) :] for i in infos if i.type == pafs.FileType.File and i.path.startswith(base))
