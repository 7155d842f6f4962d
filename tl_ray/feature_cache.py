"""The feature cache: a frozen backbone's pooled outputs, computed once per ``feature_key`` and shared by
every trial. An entry, ``<store>/cache/features/<key id>/``, is a dataset laid out shard for shard and row
for row as its image dataset, so the reader streams it with the same sharding and shuffle. Anything that
changes the features changes the key, so an entry is never stale."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from tl_ray import store as storage  # `store` names a store root in this module
from tl_ray.data.manifest import Manifest, Shard, has_manifest, manifest_uri, read_manifest, write_manifest
from tl_ray.errors import ConfigError, DataError, StorageError, did_you_mean
from tl_ray.spec import FreezeSpec, Spec

CACHE_DIR = "cache/features"
LOCK_NAME = "_building.json"
FORMAT_VERSION = 1
STALE_S = 180.0  # a builder refreshes its lock after every shard; an older lock is a dead builder's
WAIT_S = 3600.0
BATCH = 256  # the most images per build batch
MEMORY_MIB = 1024  # activations a build batch may take (build_batch_size)
# Per image, a build holds about this many times its widest layer's output: that layer's input and output,
# the next layer's output and the allocator's slack (fitted to MobileNetV2's measured peaks).
ACTIVATION_FACTOR = 4


@dataclass
class CacheEntry:
    """A cache entry as ``ensure_features`` found or made it: ``status`` is ``"built"`` (here), ``"waited"``
    (for another builder) or ``"read"``; ``seconds`` is the time spent building or waiting."""

    uri: str
    key: dict
    status: str
    seconds: float = 0.0


def cache_root(store: str) -> str:
    return storage.join(store, CACHE_DIR)


def usable(spec: Spec, freeze: FreezeSpec, augment: bool = True) -> tuple[bool, str]:
    """Whether a phase with ``freeze`` (applying data.augment if ``augment``) trains on cached features, and
    why not."""
    if spec.train.feature_cache == "off":
        return False, "train.feature_cache is off"
    if freeze.mode != "feature_extraction":
        return False, f"the base trains (model.freeze.mode {freeze.mode})"
    from tl_ray.data.reader import augmentation_on

    if augment and augmentation_on(spec.data.augment):
        return False, "data.augment is on (augmented images have no fixed features)"
    return True, ""


def backbone_digest(spec: Spec, weights_file: str | None) -> str:
    """What identifies the backbone's starting weights."""
    return backbone_weights_digest(spec.model.weights, weights_file, spec.train.seed)


def backbone_weights_digest(weights: str, weights_file: str | None, seed: int | None) -> str:
    """``sha256:...`` of a weights file, ``imagenet:keras-VERSION``, or ``none:seed-N`` for seeded random weights."""
    from tl_ray.models.weights import weights_kind

    kind = weights_kind(weights)
    if kind in ("file", "registry"):
        return "sha256:" + _file_digest(weights_file)
    if kind == "imagenet":
        import keras

        return f"imagenet:keras-{keras.__version__}"
    return f"none:seed-{seed}"  # random initial weights depend on the seed


_digests: dict[tuple, str] = {}


def _file_digest(path: str) -> str:
    """sha256 of a local weights file, once per (path, size, mtime) in this process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = storage.sha256_file(path)
    return _digests[key]


def feature_key(spec: Spec, dataset_uri: str, weights_file: str | None) -> dict:
    """The fields a cache entry is keyed by: whatever changes the features."""
    from tl_ray.models.backbones import get_backbone

    backbone = get_backbone(spec.model.backbone)
    return {
        "format": FORMAT_VERSION,
        "backbone": backbone.name,
        "backbone_args": spec.model.backbone_args,
        "weights": backbone_digest(spec, weights_file),
        "preprocess": backbone.preprocess,
        "pooling": spec.model.head.pooling,
        "image_size": list(spec.data.image_size),
        "dataset": read_manifest(dataset_uri).digest,
        "augment": "off",
        "dtype": "float32",
        # Only when set, so entries cached before the field existed keep their key.
        **({"feature_layer": spec.model.feature_layer} if spec.model.feature_layer else {}),
    }


def key_id(key: dict) -> str:
    return storage.sha256_bytes(json.dumps(key, sort_keys=True).encode())[:24]


def ensure_features(spec: Spec, dataset_uri: str, weights_file: str | None, *, log=print, events=None,
                    budget_mib: float = MEMORY_MIB) -> CacheEntry:
    """The cache entry of ``dataset_uri`` under the spec's backbone, built here if nobody has.

    One builder per key: the first to create ``_building.json`` (a conditional write) builds; others wait for
    its manifest, written last, and take over once the lock has not changed for ``STALE_S`` (the builder
    then stops at its next shard and waits in turn). ``events`` is told ``on_cache_build_begin`` /
    ``on_cache_wait_begin``; ``budget_mib`` goes to ``build_batch_size``.
    DataError when the dataset is missing or corrupt; StorageError when another builder holds the lock for
    longer than ``WAIT_S``.
    """
    key = feature_key(spec, dataset_uri, weights_file)
    uri = storage.join(cache_root(spec.storage), key_id(key))
    lease = storage.Lease(storage.join(uri, LOCK_NAME), stale_s=STALE_S, scope=cache_root(spec.storage))
    start = time.monotonic()
    waited = False
    while time.monotonic() - start < WAIT_S:
        if has_manifest(uri):
            return CacheEntry(uri, key, "waited" if waited else "read", time.monotonic() - start)
        if lease.acquire({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "rows": 0}):
            try:
                if events:
                    events.on_cache_build_begin()
                log(f"feature cache: building {uri} for {dataset_uri}")
                _build(spec, dataset_uri, weights_file, key, uri, lease, budget_mib)
            except storage.LeaseLost as e:
                log(f"feature cache: {e}; waiting for its new builder")
                continue
            finally:
                lease.release()
            return CacheEntry(uri, key, "built", time.monotonic() - start)
        if lease.break_if_stale():
            log(f"feature cache: the builder of {uri} stopped refreshing its lock; taking over")
            continue
        if not waited:
            log(f"feature cache: waiting for another trial to build {uri}")
            if events:
                events.on_cache_wait_begin()
        waited = True
        time.sleep(1.0)  # polling the store for the builder's manifest
    raise StorageError(f"feature cache {uri}: another builder held {LOCK_NAME} for over {WAIT_S:.0f} s. If "
                       f"no trial is building it, remove the entry with `tl-ray cache purge {key_id(key)}` "
                       "and retry.")


def _extractor(spec: Spec, num_classes: int, weights_file: str | None):
    """preprocess + backbone + the head's pooling layer of the spec's model, in inference mode."""
    import keras

    from tl_ray.models.build import build_model

    model = build_model(spec.model.model_copy(update={"freeze": FreezeSpec()}), num_classes,
                        tuple(spec.data.image_size), weights_file=weights_file, seed=spec.train.seed)
    return keras.Model(model.inputs, model.get_layer("pool").output, name="feature_extractor")


def _layers(model):
    """Every layer of ``model``, nested models' layers in their place."""
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _layers(layer)
        else:
            yield layer


def build_batch_size(model, budget_mib: float = MEMORY_MIB, *, limit: int = BATCH) -> int:
    """Images per batch (1 to ``limit``) of a cache build, so that ``model``'s activations fit ``budget_mib``
    (ConfigError unless a positive number). The estimate per image is ``ACTIVATION_FACTOR`` times the largest
    float32 layer output: in inference, TensorFlow frees a tensor once its last consumer has run, so the peak
    follows the widest layer."""
    if isinstance(budget_mib, bool) or not isinstance(budget_mib, (int, float)) or not budget_mib > 0:
        raise ConfigError(f"the feature cache's build budget must be a positive number of MiB. "
                          f"Received: {budget_mib!r}.")
    # A layer of a nested model built for any image size (the preprocessing's) has no sizes: it is as wide as
    # the image, which the model's input gives.
    widest = math.prod(int(d) for d in model.inputs[0].shape[1:])
    for layer in _layers(model):
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for out in outputs:
            if None not in out.shape[1:]:
                widest = max(widest, math.prod(int(d) for d in out.shape[1:]))
    per_image = ACTIVATION_FACTOR * 4 * max(widest, 1)
    return max(1, min(limit, int(budget_mib * 2**20 // per_image)))


class _ShardSink:
    """Writes feature rows as they come, one Parquet row group per batch, into shards that mirror the image
    shards; a shard is uploaded as soon as it is full and then dropped."""

    def __init__(self, uri: str, rows: list[int], width: int, on_shard):
        self.uri, self.rows, self.width, self.on_shard = uri, rows, width, on_shard
        self.shards: list[Shard] = []
        self.schema = pa.schema([("features", pa.list_(pa.float32(), width)), ("label", pa.int32())])
        self._out = self._writer = None
        self._held = 0

    def add(self, x, y) -> None:
        """Appends feature rows ``x`` ``[n, width]`` and their labels ``y`` ``[n]``."""
        while len(y):
            if len(self.shards) == len(self.rows):
                raise DataError(f"feature cache {self.uri}: the dataset yielded more rows than its manifest holds.")
            room = self.rows[len(self.shards)] - self._held
            self._write(x[:room], y[:room])
            x, y = x[room:], y[room:]
            if self._held == self.rows[len(self.shards)]:
                self._close()

    def _write(self, x, y) -> None:
        if self._writer is None:
            self._out = pa.BufferOutputStream()
            self._writer = pq.ParquetWriter(self._out, self.schema, compression="none", write_page_checksum=True)
        values = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), self.width)
        self._writer.write_table(pa.table({"features": values, "label": pa.array(y, type=pa.int32())},
                                          schema=self.schema))
        self._held += len(y)

    def _close(self) -> None:
        self._writer.close()
        data = self._out.getvalue().to_pybytes()
        self._out = self._writer = None
        name = f"part-{len(self.shards):05d}.parquet"
        storage.write_bytes(storage.join(self.uri, name), data)
        storage.check_size(storage.join(self.uri, name), data)
        self.shards.append(Shard(name, self._held, storage.sha256_bytes(data), len(data)))
        self._held = 0
        self.on_shard(sum(s.rows for s in self.shards))

    def finish(self) -> list[Shard]:
        """The shards written; DataError if the rows yielded do not fill the manifest's shards."""
        if len(self.shards) != len(self.rows) or self._held:
            raise DataError(f"feature cache {self.uri}: the dataset yielded rows that do not match its manifest's "
                            "shards.")
        return self.shards


def _build(spec: Spec, dataset_uri: str, weights_file: str | None, key: dict, uri: str, lease: storage.Lease,
           budget_mib: float = MEMORY_MIB) -> None:
    import numpy as np
    import tensorflow as tf

    from tl_ray.data.reader import batches, make_dataset
    from tl_ray.data.writer import Progress

    source = read_manifest(dataset_uri)
    started = time.perf_counter()
    # A stale entry folder (a dead builder's shards) is overwritten shard by shard; the manifest comes last.
    extractor = _extractor(spec, len(source.class_names), weights_file)
    feature_shape = [int(v) for v in extractor.output_shape[1:]]
    infer = tf.function(lambda images: extractor(images, training=False), reduce_retracing=True)
    ds = make_dataset(dataset_uri, image_size=tuple(spec.data.image_size),
                      batch_size=build_batch_size(extractor, budget_mib))
    sink = _ShardSink(uri, [s.rows for s in source.shards], int(np.prod(feature_shape)),
                      lambda rows: lease.renew({"host": socket.gethostname(), "pid": os.getpid(), "rows": rows}))
    # A bar only where a person watches: a trial's stderr is a file.
    bar = Progress(source.num_rows, f"feature cache {key_id(key)}", enabled=sys.stderr.isatty())
    try:
        for images, labels in batches(ds):
            sink.add(infer(images).numpy().astype(np.float32, copy=False).reshape(len(labels), -1), labels.numpy())
            bar.update(len(labels))
    finally:
        bar.close()
    manifest = Manifest(
        "parquet", source.num_rows, list(source.class_names), None, sink.finish(),
        {"kind": "features", "feature_shape": feature_shape, "key": key, "dataset_uri": dataset_uri,
         "built_by": f"{socket.gethostname()}:{os.getpid()}", "build_seconds": round(time.perf_counter() - started, 2),
         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    write_manifest(uri, manifest)


def head_model(model):
    """The layers after the pooling layer, as a model on its output (weights shared with ``model``)."""
    import keras

    pool = model.get_layer("pool")
    x = inputs = keras.Input(shape=pool.output.shape[1:], name="features")
    for layer in model.layers[model.layers.index(pool) + 1:]:
        x = layer(x)
    return keras.Model(inputs, x, name=f"{model.name}_head")


@dataclass
class EntryInfo:
    key_id: str
    uri: str
    complete: bool
    rows: int
    bytes: int
    key: dict
    created: str
    dataset_uri: str


def list_entries(store: str) -> list[EntryInfo]:
    """Every entry under the store's cache; one without a manifest is partial."""
    root = cache_root(store)
    out = []
    for name in storage.list_dir(root):
        uri = storage.join(root, name)
        if name.startswith(".") or not storage.list_files(uri):
            continue
        if has_manifest(uri):
            m = read_manifest(uri)
            src = m.source or {}
            out.append(EntryInfo(name, uri, True, m.num_rows, sum(s.bytes for s in m.shards), src.get("key", {}),
                                 str(src.get("created", "")), str(src.get("dataset_uri", ""))))
        else:
            out.append(EntryInfo(name, uri, False, 0, 0, {}, "", ""))
    return out


def purge(store: str, keys: list[str] | None = None) -> list[str]:
    """Deletes cache entries (all when ``keys`` is None); returns the ids deleted. ConfigError when a key
    names no entry."""
    entries = {e.key_id: e for e in list_entries(store)}
    wanted = list(entries) if keys is None else keys
    unknown = [k for k in wanted if k not in entries]
    if unknown:
        raise ConfigError(f"no feature-cache entry {unknown[0]!r} in {cache_root(store)}."
                          f"{did_you_mean(unknown[0], list(entries))} See `tl-ray cache list`.")
    for k in wanted:
        storage.delete(manifest_uri(entries[k].uri))  # first: no trial reads half an entry
        storage.delete(entries[k].uri)
    return wanted
