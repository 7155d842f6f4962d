"""Read-back: an object tl-ray publishes on S3 (a manifest, a version's metadata, an alias, a lease) counts as
written only once one GET returns the very bytes that were sent.

A store can answer 200 to a PUT and keep something else: one that does not decode ``aws-chunked``
uploads keeps the chunk framing (``283\\r\\n{...``) inside the object. A mismatch deletes what was
written, when it is still there, and raises a StorageError that names the object, the endpoint,
the likely cause and the setting that fixes it. Local files are renamed into place whole and need
no read-back.
"""

from __future__ import annotations

import re

from tl_ray.errors import StorageError
from tl_ray.store import objects
from tl_ray.store.s3 import checksum_settings, endpoint_name

_CHUNK_HEADER = re.compile(rb"^[0-9a-fA-F]+(;[^\r\n]*)?\r\n")

# Off only for the side-by-side benchmark of its cost (benchmarks/bench_readback.py).
ENABLED = True


def check_written(uri: str, data: bytes, etag: str | None = None) -> None:
    """Reads ``uri`` back and compares it with ``data``; deletes it and raises when they differ.

    Args:
        uri: the ``s3://`` object just written.
        data: the bytes sent.
        etag: the ETag the PUT returned. When given, an object replaced since by another writer
            (a later alias move) is not read and counts as written. Defaults to None.

    Raises:
        StorageError: the object is missing or holds other bytes.
    """
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
    """For a large object (a shard): one HEAD comparing the stored size with ``len(data)``, which catches a
    store keeping upload framing without reading the object back; deletes it and raises when they differ."""
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
