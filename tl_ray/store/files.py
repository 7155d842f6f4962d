"""Store URIs (local paths, ``file://``, ``s3://bucket/prefix``): read (riding out outages), listed,
deleted, copied, and written atomically (locally built aside and renamed; on S3 one PUT per object)."""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import random
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from tl_ray.errors import StorageError, first_line
from tl_ray.store import objects, readback, s3

# A streaming read keeps retrying a store that went away for this long, on top of the client's retries.
READ_RETRY_TIMEOUT_S = 60.0
READ_RETRY_BACKOFF_S = (0.1, 4.0)  # first and largest pause between attempts (full jitter)
# S3 error codes that retrying cannot fix.
_PERMANENT_S3_ERRORS = ("ACCESS_DENIED", "NO_SUCH_KEY", "NO_SUCH_BUCKET", "INVALID_ACCESS_KEY", "SIGNATURE")

log = logging.getLogger(__name__)


def is_absolute(uri: str) -> bool:
    """True for a URI or an absolute local path; False for a store-relative path."""
    return "://" in uri or os.path.isabs(uri)


def join(base: str, *parts: str) -> str:
    """Joins URI parts with '/', keeping the scheme; empty parts are left out."""
    stripped = (str(part).strip("/") for part in parts)
    return "/".join([base.rstrip("/"), *(part for part in stripped if part)])


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Returns ``(pyarrow filesystem, path within it)`` for ``uri``."""
    if s3.is_s3(uri):
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return s3.arrow_filesystem(s3.endpoint_url(), region), uri[len("s3://") :].rstrip("/")
    uri = uri.removeprefix("file://")
    if "://" in uri:
        raise StorageError(f"storage URI {uri!r} has an unsupported scheme. Use a local path, file:// or "
                           "s3://bucket/prefix.")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


@contextmanager
def reported(uri: str, action: str, *, missing: bool = False):
    """Raises the OS and pyarrow errors of the block as StorageErrors that say what failed (with ``missing``,
    a missing file as "does not exist")."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        if missing and isinstance(exc, FileNotFoundError):
            raise StorageError(f"{uri!r} does not exist.") from None
        hint = (f" Check that the bucket exists and is reachable (endpoint: {s3.endpoint_url() or 'AWS default'})"
                " and that credentials are set.") if s3.is_s3(uri) else ""
        raise StorageError(f"cannot {action} {uri!r}: {first_line(exc)}.{hint}") from None


def exists(uri: str) -> bool:
    """True when a file or folder is at ``uri``."""
    if s3.is_s3(uri):
        return (bool(s3.bucket_key(uri)[1].strip("/")) and objects.head(uri) is not None) or objects.folder_exists(uri)
    fs, path = filesystem(uri)
    with reported(uri, "reach"):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    """The bytes of the file at ``uri``."""
    if s3.is_s3(uri):
        found = objects.get(uri)
        if found is None:
            raise _missing(uri)
        return found[0]
    fs, path = filesystem(uri)
    with reported(uri, "read", missing=True), fs.open_input_stream(path, compression=None) as f:
        return f.read()


def _missing(uri: str) -> StorageError:
    if objects.folder_exists(uri):
        return StorageError(f"{uri!r} is a folder (objects lie under {uri + '/'!r}), not a file. Name the file in "
                            "it, or delete the folder-marker object if a console created one by mistake.")
    return StorageError(f"{uri!r} does not exist.")


def read_text(uri: str) -> str:
    """The text (UTF-8) of the file at ``uri``."""
    return read_bytes(uri).decode("utf-8")


def open_input_stream(uri: str):
    """A sequential stream (for TFRecord and large reads)."""
    fs, path = filesystem(uri)
    with reported(uri, "open", missing=True):
        return fs.open_input_stream(path, compression=None)


def is_transient(uri: str, exc: BaseException) -> bool:
    """True when ``exc`` from reading ``uri`` may go away on retry (network, 5xx, throttling): only
    object-store errors, and not a missing object or a refused credential."""
    if not s3.is_s3(uri) or not isinstance(exc, (OSError, pa.ArrowException)):
        return False
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    text = str(exc)
    return "AWS Error" in text and not any(code in text for code in _PERMANENT_S3_ERRORS)


def retry_read(uri: str, attempt, *, what: str, on_retry=None):
    """Returns ``attempt()``, retrying transient store errors with capped, jittered backoff, to ride out
    outages longer than the client's own retries. ``attempt`` must be idempotent (resume from a given offset),
    so a retried read neither skips nor repeats data.

    Args:
        what: what is being read, e.g. ``"bytes 0..8388608"``, for logs and errors.
        on_retry: called with the exception before each retry (e.g. to reopen a handle).

    Raises:
        StorageError: the store stayed unreachable for ``READ_RETRY_TIMEOUT_S``. Other errors pass unchanged.
    """
    deadline = time.monotonic() + READ_RETRY_TIMEOUT_S
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
                raise StorageError(
                    f"cannot read {uri!r} ({what}): the store stayed unreachable for {READ_RETRY_TIMEOUT_S:g}s over "
                    f"{failures} attempts (last error: {first_line(exc)}). Check that the endpoint "
                    f"({s3.endpoint_url() or 'AWS default'}) is up and the bucket exists."
                ) from None
            log.warning("retrying read of %s (%s) after transient error #%d: %s", uri, what, failures, exc)
            if on_retry is not None:
                on_retry(exc)
            time.sleep(pause)


def list_dir(uri: str) -> list[str]:
    """Names directly under ``uri`` (files and folders), sorted; empty when it does not exist or is a file."""
    if s3.is_s3(uri):
        return objects.list_names(uri)
    fs, path = filesystem(uri)
    with reported(uri, "list"):
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except NotADirectoryError:
            return []
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def list_files(uri: str) -> list[str]:
    """Paths (relative to ``uri``, '/'-separated) of every file under ``uri``, sorted; empty when missing."""
    if s3.is_s3(uri):
        return [path for path, _, _ in objects.list_objects(uri)]
    fs, path = filesystem(uri)
    with reported(uri, "list"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    base = path.rstrip("/") + "/"
    return sorted(i.path[len(base) :] for i in infos if i.type == pafs.FileType.File and i.path.startswith(base))


def delete(uri: str) -> None:
    """Deletes a file or a folder tree; missing is fine."""
    if s3.is_s3(uri):
        # One request per object: not every S3-compatible store has the multi-object DeleteObjects.
        for path, _, _ in objects.list_objects(uri):
            objects.delete(join(uri, path))
        if s3.bucket_key(uri)[1].strip("/"):
            objects.delete(uri)
        return
    fs, path = filesystem(uri)
    with reported(uri, "delete"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copies the tree at ``uri`` into ``local_dir`` and returns it; on S3, an object replaced after the
    listing is a StorageError, never a copy mixing two versions."""
    local_dir = Path(local_dir)
    if s3.is_s3(uri):
        listed = objects.list_objects(uri)
        if not listed:
            raise _missing(uri)
        for path, etag, _ in listed:
            dest = local_dir / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            found = objects.get(join(uri, path), if_match=etag or None)
            if found is None:
                raise StorageError(f"{join(uri, path)!r} was deleted between listing {uri!r} and reading it. "
                                   "Another process is removing it; retry once it is done.")
            dest.write_bytes(found[0])
        return local_dir
    fs, path = filesystem(uri)
    with reported(uri, "read", missing=True):
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=False)):
            if info.type == pafs.FileType.File:
                dest = local_dir / info.path[len(path) :].lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(info.path, compression=None) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, length=8 * 2**20)
    return local_dir


@contextmanager
def staging(folder: str | Path) -> Iterator[Path]:
    """A scratch path in ``folder`` (beside the destination, so the move is a rename), deleted on exit."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(folder) / f".tmp-{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a folder
        tmp.unlink(missing_ok=True)  # a file


def publish_local(staged: Path, dest: str | Path, *, exclusive: bool = False) -> bool:
    """Renames ``staged`` onto ``dest``; with ``exclusive``, hard-links it (False if ``dest`` exists)."""
    if not exclusive:
        os.replace(staged, dest)
        return True
    try:
        os.link(staged, dest)
    except FileExistsError:
        return False
    return True


def write_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` to ``uri`` atomically: readers see the old object or the whole new one."""
    if s3.is_s3(uri):
        objects.put(uri, data)
        return
    fs, path = filesystem(uri)
    with reported(uri, "write"), staging(os.path.dirname(path)) as tmp:
        tmp.write_bytes(data)
        publish_local(tmp, path)


def write_text(uri: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``uri`` atomically."""
    write_bytes(uri, text.encode("utf-8"))


def publish_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` to ``uri`` atomically and, on S3, reads it back (``readback``)."""
    write_bytes(uri, data)
    if s3.is_s3(uri):
        readback.check_written(uri, data)


def publish_text(uri: str, text: str) -> None:
    """``publish_bytes`` of ``text`` (UTF-8)."""
    publish_bytes(uri, text.encode("utf-8"))


def upload_dir(local_dir: str | Path, uri: str, marker: str | None = None) -> None:
    """Copies the files of ``local_dir`` to ``uri``; the file named ``marker`` goes last, read back on S3
    (readers treat a folder without it as absent; on a failed read-back the upload is removed)."""
    if not s3.is_s3(uri):
        path = filesystem(uri)[1]
        with reported(uri, "write"), staging(os.path.dirname(path)) as tmp:
            shutil.copytree(local_dir, tmp)
            publish_local(tmp, path)
        return
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    rel = [f.relative_to(local_dir).as_posix() for f in files]
    for name, f in sorted(zip(rel, files), key=lambda pair: pair[0] == marker):
        if name == marker:
            try:
                publish_bytes(join(uri, name), f.read_bytes())
            except StorageError:
                for other in rel:
                    objects.delete(join(uri, other))
                raise
        else:
            with open(f, "rb") as body:  # one PUT, streamed (up to S3's 5 GiB for a single object)
                objects.put(join(uri, name), body)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def local_cache_dir(*parts: str) -> Path:
    """A per-node cache folder (``TLRAY_CACHE`` or ~/.cache/tl-ray)."""
    out = Path(os.environ.get("TLRAY_CACHE", Path.home() / ".cache" / "tl-ray")).joinpath(*parts)
    out.mkdir(parents=True, exist_ok=True)
    return out
