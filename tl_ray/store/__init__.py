"""The store: local paths, ``file://`` and ``s3://bucket/prefix`` behind one set of calls (``files``, over ``s3``),
with conditional writes and leases that let processes sharing a store agree on who writes what."""

from tl_ray.store.conditional import create_exclusive, delete_if, read_tagged, write_if
from tl_ray.store.files import (
    delete, download_dir, ensure_bucket, exists, filesystem, is_absolute, is_transient, join, list_dir, list_files,
    local_cache_dir, open_input_stream, publish_local, read_bytes, read_text, reported, retry_read, sha256_bytes,
    sha256_file, staging, upload_dir, write_bytes, write_text,
)
from tl_ray.store.lease import Lease
from tl_ray.store.s3 import is_s3

__all__ = [
    "Lease", "create_exclusive", "delete", "delete_if", "download_dir", "ensure_bucket", "exists", "filesystem",
    "is_absolute", "is_s3", "is_transient", "join", "list_dir", "list_files", "local_cache_dir", "open_input_stream",
    "publish_local", "read_bytes", "read_tagged", "read_text", "reported", "retry_read", "sha256_bytes",
    "sha256_file", "staging", "upload_dir", "write_bytes", "write_text", "write_if",
]
