"""Data stage: ingest sources into Parquet or TFRecord shards + manifest, and stream them into tf.data.

``manifest``, ``ingest``, ``writer``, ``tfrecord`` and ``shards`` need no TensorFlow;
``images`` and ``reader`` import it, so they load lazily on first use
(``tl-ray data ingest`` starts fast).
"""

from tl_ray.data.ingest import ingest_fashion_mnist, ingest_folder
from tl_ray.data.manifest import FORMATS, Manifest, Shard, read_manifest, verify, write_manifest

_LAZY = {
    "decode_image": "tl_ray.data.images",
    "prepare_array": "tl_ray.data.images",
    "make_dataset": "tl_ray.data.reader",
    "batches": "tl_ray.data.reader",
    "dataset_info": "tl_ray.data.reader",
    "worker_rows": "tl_ray.data.reader",
}

__all__ = [
    "FORMATS",
    "Manifest",
    "Shard",
    "read_manifest",
    "write_manifest",
    "verify",
    "ingest_fashion_mnist",
    "ingest_folder",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tl_ray.data' has no attribute {name!r}")
