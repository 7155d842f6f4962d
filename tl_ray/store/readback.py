"""Read-back: an object published on S3 counts as written only once a GET returns the bytes sent (a store can
answer 200 to a PUT and keep something else). A mismatch deletes the object and raises a StorageError naming
the likely cause and fix."""

from __future__ import annotations

import re

from tl_ray.errors import StorageError
from tl_ray.store import objects
from tl_ray.store.s3 import checksum_settings, endpoint_name

_CHUNK_HEADER = re.compile(rb"^[0-9a-fA-F]+(;[^\r\n]*)?\r\n")

# Off only for the side-by-side benchmark of its cost (benchmarks/bench_readback.py).
ENABLED = True


def check_written(uri: str, data: bytes, etag: str | None = None) -> None:
    """Reads the ``s3://`` object ``uri`` back; deletes it and raises StorageError when it is missing or
    differs from ``data``. With the PUT's ``etag``, an object since replaced by another writer counts as
    written."""
    if not ENABLED:
        return
    found = objects.get(uri, if_match=etag, refused=objects.ABSENT + objects.CONFLICT)
    if found is None and etag and objects.head(uri) is not None:
        return  # replaced by a later conditional write: that writer reads its own back
    got = None if found is None else found[0]
    if got == data:
        return
    if got is not None:
        objects.delete(uri, **({"IfMatch": etag} if etag else {}))
    raise StorageError(f"{uri!r} did not read back as written on {endpoint_name()}: {diagnose(data, got)} "
                       "It was removed: nothing was published.")


def check_size(uri: str, data: bytes) -> None:
    """For a large object (a shard): a HEAD comparing the stored size with ``len(data)`` (catches kept upload
    framing without a full read); deletes it and raises when they differ."""
    if not ENABLED or not uri.startswith("s3://"):
        return
    stored = (objects.head(uri) or {}).get("ContentLength")
    if stored != len(data):
        found = objects.get(uri) if stored else None
        objects.delete(uri)
        raise StorageError(f"{uri!r} did not read back as written on {endpoint_name()}: it holds {stored} bytes, "
                           f"{len(data)} were written; {diagnose(data, found and found[0])} It was removed.")


def diagnose(sent: bytes, got: bytes | None) -> str:
    """The likely cause of reading ``got`` back after writing ``sent``, and the fix."""
    if got is None:
        return ("the store answered the PUT but has no object there (a store that acknowledges writes it does "
                "not keep, or one with eventual read-after-write). Check the store's consistency settings.")
    if _CHUNK_HEADER.match(got) and sent in got:
        framing = (f"the store kept the aws-chunked framing of the upload inside the object (it began with "
                   f"{got[:12]!r}): it does not decode Content-Encoding: aws-chunked.")
        if checksum_settings()["request_checksum_calculation"] == "when_required":
            return (f"{framing} tl-ray sent a plain body (AWS_REQUEST_CHECKSUM_CALCULATION=when_required), so "
                    "something between tl-ray and the store re-encodes uploads: check the proxy or gateway in "
                    "front of it.")
        return (f"{framing} Set AWS_REQUEST_CHECKSUM_CALCULATION=when_required (tl-ray's default on a custom "
                "endpoint) so uploads are plain bodies.")
    return (f"it holds {len(got)} bytes, {len(sent)} were written, and they differ: another writer replaced it "
            "at the same moment, or the store or a proxy alters uploads. Retry; if it persists, check the store.")
