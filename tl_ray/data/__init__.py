"""Data stage: ingest sources into Parquet or TFRecord shards + manifest, and stream them into tf.data.
``images`` and ``reader`` import TensorFlow, so they load on first use (``tl-ray data ingest`` is fast)."""

import importlib

from tl_ray.data.ingest import ingest_fashion_mnist, ingest_folder
from tl_ray.data.manifest import FORMATS, Manifest, Shard, read_manifest, verify, write_manifest

_LAZY = {
    **dict.fromkeys(["decode_image", "prepare_array"], "tl_ray.data.images"),
    **dict.fromkeys(["make_dataset", "batches", "worker_rows"], "tl_ray.data.reader"),
}

__all__ = [
    "FORMATS", "Manifest", "Shard", "read_manifest", "write_manifest", "verify", "ingest_fashion_mnist",
    "ingest_folder", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tl_ray.data' has no attribute {name!r}")
