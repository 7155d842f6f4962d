"""The store: local paths, ``file://`` and ``s3://bucket/prefix`` behind one set of calls, with read-back of
published objects, conditional writes (proven to be honoured) and leases."""

from tl_ray.store.conditional import create_exclusive, delete_if, read_tagged, write_if
from tl_ray.store.files import (
    delete, download_dir, exists, filesystem, is_absolute, is_transient, join, list_dir, list_files, local_cache_dir,
    open_input_stream, publish_bytes, publish_local, publish_text, read_bytes, read_text, reported, retry_read,
    sha256_bytes, sha256_file, staging, upload_dir, write_bytes, write_text,
)
from tl_ray.store.lease import Lease, LeaseLost
from tl_ray.store.locking import locking_setting, mode as conditional_mode, use_locking
from tl_ray.store.objects import ensure_bucket
from tl_ray.store.readback import check_size
from tl_ray.store.s3 import checksum_settings, endpoint_name, is_s3

__all__ = [
    "Lease", "LeaseLost", "check_size", "checksum_settings", "conditional_mode", "create_exclusive", "delete",
    "delete_if", "download_dir", "endpoint_name", "ensure_bucket", "exists", "filesystem", "is_absolute",
    "is_s3", "is_transient", "join", "list_dir", "list_files", "local_cache_dir", "locking_setting",
    "open_input_stream", "publish_bytes", "publish_local", "publish_text", "read_bytes", "read_tagged",
    "read_text", "reported", "retry_read", "sha256_bytes", "sha256_file", "staging", "upload_dir",
    "use_locking", "write_bytes", "write_text", "write_if",
]
