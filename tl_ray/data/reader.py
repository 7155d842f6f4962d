"""The one dataset reader: Parquet or TFRecord shards streamed into ``tf.data``. A Python generator only
moves bytes (``shards``); parsing, decoding and augmentation run in TensorFlow's parallel pipeline. Errors
raised in the generator reach the caller wrapped in ``tf.errors.UnknownError``: iterate with ``batches(ds)``.
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import tensorflow as tf

from tl_ray.data import shards as shard_io
from tl_ray.data.images import decode_image
from tl_ray.data.manifest import Manifest, read_manifest
from tl_ray.data.tfrecord import IMAGE_KEY, LABEL_KEY
from tl_ray.errors import ConfigError, DataError, StorageError

_EXAMPLE_FEATURES = {
    IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}


def _plan(manifest: Manifest, worker_index: int, num_workers: int, shuffle: bool = False,
          seed: int = 0) -> tuple[list[int], bool]:
    """Shard indices this worker reads (permuted with ``seed`` when shuffling), and whether it must also
    filter rows by global index."""
    n = len(manifest.shards)
    by_row = num_workers > max(n, 1)  # fewer shards than workers: each reads every shard, keeps its rows
    shard_ids = list(range(n)) if by_row else list(range(worker_index, n, num_workers))
    if shuffle:
        shard_ids = [shard_ids[i] for i in np.random.default_rng(seed).permutation(len(shard_ids))]
    return shard_ids, by_row


def _offsets(manifest: Manifest) -> np.ndarray:
    """The global index of each shard's first row, then the row count."""
    return np.concatenate([[0], np.cumsum([s.rows for s in manifest.shards])]).astype(np.int64)


def worker_rows(manifest: Manifest, worker_index: int = 0, num_workers: int = 1) -> int:
    """Rows one worker sees per pass under ``make_dataset``'s sharding (for steps per epoch)."""
    return len(read_order(manifest, worker_index=worker_index, num_workers=num_workers))


def read_order(manifest: Manifest, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
               worker_index: int = 0, num_workers: int = 1) -> np.ndarray:
    """Global row indices one worker reads, in the order ``make_dataset`` streams them before its
    shuffle buffer."""
    shard_ids, by_row = _plan(manifest, worker_index, num_workers, shuffle, seed + epoch)
    start = _offsets(manifest)
    rows = np.concatenate([np.zeros(0, np.int64), *(np.arange(start[i], start[i + 1]) for i in shard_ids)])
    return rows[rows % num_workers == worker_index] if by_row else rows


def in_memory_dataset(
    values: np.ndarray, labels: np.ndarray, manifest: Manifest, *, batch_size: int, shuffle: bool = False,
    seed: int = 0, epoch: int = 0, shuffle_buffer: int = 2048, worker_index: int = 0, num_workers: int = 1,
    drop_remainder: bool = False, repeat: bool = False,
) -> tf.data.Dataset:
    """``make_dataset`` over rows already in memory (a small feature-cache entry): the same batches, in the
    same order, without reading or decoding."""
    _check_args((1, 1), batch_size, worker_index, num_workers, shuffle_buffer)
    order = read_order(manifest, shuffle=shuffle, seed=seed, epoch=epoch, worker_index=worker_index,
                       num_workers=num_workers)
    ds = tf.data.Dataset.from_tensor_slices(order)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + epoch, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    x, y = tf.convert_to_tensor(values), tf.convert_to_tensor(labels)

    # Gathered a batch at a time (the same batches as per row); autograph would cost more than the function.
    @tf.autograph.experimental.do_not_convert
    def gather(i):
        return tf.gather(x, i), tf.gather(y, i)

    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    # A gather in memory has nothing to tune, and the autotuner makes tearing down each epoch's iterator
    # slow: a large share of a short head-only trial.
    return _prefetched(ds, autotune=False)


def _prefetched(ds: tf.data.Dataset, autotune: bool = True) -> tf.data.Dataset:
    """Prefetched, with tf.distribute's auto-sharding off (each worker already reads its own part)."""
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if not autotune:
        options.autotune.enabled = False
    return ds.with_options(options)


def load_rows(uri: str) -> tuple[np.ndarray, np.ndarray, Manifest]:
    """Every row of a feature-cache dataset as ``(features float32 [N, *shape], labels int32 [N], manifest)``;
    DataError when a shard is missing, truncated or corrupt."""
    manifest = read_manifest(uri)
    shape = feature_shape(manifest)
    if shape is None:
        raise ConfigError(f"{uri} holds images, not cached features; load_rows reads feature-cache entries only.")
    keep = lambda rows: np.ones(len(rows), dtype=bool)  # noqa: E731 - every row (first_row only feeds keep)
    parts = [part for shard in manifest.shards for part in shard_io.parquet_batches(uri, shard, 0, keep, "features")]
    x = np.concatenate([v for v, _ in parts]).reshape(-1, *shape) if parts else np.zeros((0, *shape), np.float32)
    return x, (np.concatenate([y for _, y in parts]) if parts else np.zeros(0, np.int32)), manifest


def _check_args(image_size, batch_size, worker_index, num_workers, shuffle_buffer) -> None:
    if len(tuple(image_size)) != 2 or any(int(v) <= 0 for v in image_size):
        raise ConfigError(f"image_size must be (height, width) of positive ints. Received: {image_size!r}.")
    for name, value in (("batch_size", batch_size), ("num_workers", num_workers), ("shuffle_buffer", shuffle_buffer)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer. Received: {value!r}.")
    if not 0 <= worker_index < num_workers:
        raise ConfigError(f"worker_index must be in 0..{num_workers - 1} (num_workers={num_workers}). "
                          f"Received: {worker_index!r}.")


def _parse_examples(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A vector of serialized ``tf.train.Example`` -> ``(image bytes [n], labels int32 [n])``."""
    parsed = tf.io.parse_example(serialized, _EXAMPLE_FEATURES)
    return parsed[IMAGE_KEY], tf.cast(parsed[LABEL_KEY], tf.int32)


def _encoded_rows(uri: str, manifest: Manifest, shard_ids: list[int], keep) -> tf.data.Dataset:
    """``(image bytes, label)`` per example, read shard by shard in ``shard_ids`` order."""
    offsets, shape = _offsets(manifest), feature_shape(manifest)
    images, labels = tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32)
    if manifest.format == "tfrecord":
        read, signature = shard_io.tfrecord_batches, images
    elif shape is None:
        read, signature = shard_io.parquet_batches, (images, labels)
    else:
        read = functools.partial(shard_io.parquet_batches, value_column="features")
        signature = (tf.TensorSpec([None, math.prod(shape)], tf.float32), labels)

    def rows():
        for i in shard_ids:
            yield from read(uri, manifest.shards[i], int(offsets[i]), keep)

    ds = tf.data.Dataset.from_generator(rows, output_signature=signature)
    if manifest.format == "tfrecord":
        ds = ds.map(_parse_examples, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.unbatch()


def feature_shape(manifest: Manifest) -> list[int] | None:
    """The per-example feature shape of a feature-cache dataset (``tl_ray.feature_cache``); None for images."""
    shape = (manifest.source or {}).get("feature_shape")
    return [int(v) for v in shape] if shape and manifest.source.get("kind") == "features" else None


def _augment(image: tf.Tensor, seed: tf.Tensor, augment, image_size) -> tf.Tensor:
    """Stateless (so reproducible and parallel-safe) flip, crop, rotation and contrast of one image."""
    height, width = int(image_size[0]), int(image_size[1])
    seeds = tf.random.experimental.stateless_split(seed, num=4)
    if augment.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    if augment.crop > 0:
        size = [max(1, round(height * (1 - augment.crop))), max(1, round(width * (1 - augment.crop))), 3]
        image = tf.image.stateless_random_crop(image, size, seeds[1])
        image = tf.image.resize(image, (height, width), method="bilinear")
    if augment.rotation > 0:
        image = _rotate(image, seeds[3], augment.rotation, height, width)
    if augment.contrast > 0:
        image = tf.image.stateless_random_contrast(image, 1 - augment.contrast, 1 + augment.contrast, seeds[2])
        image = tf.clip_by_value(image, 0.0, 255.0)
    return image


def _rotate(image: tf.Tensor, seed: tf.Tensor, max_degrees: float, height: int, width: int) -> tf.Tensor:
    """Rotates about the centre by a uniform angle in [-max_degrees, max_degrees] (reflect fill)."""
    angle = tf.random.stateless_uniform([], seed, -max_degrees, max_degrees) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # Maps each output pixel back to the input pixel it samples.
    transform = tf.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy, 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None, :], output_shape=tf.constant([height, width]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )[0]


def augmentation_on(augment) -> bool:
    return augment is not None and any((augment.flip, augment.crop > 0, augment.contrast > 0, augment.rotation > 0))


def make_dataset(
    uri: str, *, image_size: tuple[int, int], batch_size: int, shuffle: bool = False, seed: int = 0,
    epoch: int = 0, shuffle_buffer: int = 2048, worker_index: int = 0, num_workers: int = 1,
    drop_remainder: bool = False, repeat: bool = False, augment=None,
) -> tf.data.Dataset:
    """Streams a dataset as batches of ``(images float32 [B, H, W, 3] 0..255, labels int32 [B])``; a
    feature-cache dataset as ``(features float32 [B, *feature_shape], labels)``, in its images' order.

    With at least as many shards as workers, worker ``i`` reads shards ``i, i+n, ...``; otherwise every
    worker reads every shard and keeps the rows whose global index ``% n == i``. Either way each example
    is seen by exactly one worker once per pass.

    Args:
        batch_size: examples per batch (per worker).
        shuffle: shuffle shard order and examples (``seed`` also seeds augmentation).
        epoch: added to the seed, so each epoch has its own reproducible order.
        repeat: repeat forever (the same shard order; the buffer reshuffles).
        augment: an ``AugmentSpec``, applied when any augmentation is on.

    Raises:
        ConfigError: invalid sizes or worker index.
        DataError: no dataset at ``uri``; or, while iterating (see ``batches``), a missing, truncated or
            corrupt shard.
        StorageError: the store is unreachable, or stays so for ``READ_RETRY_TIMEOUT_S`` while streaming.
    """
    _check_args(image_size, batch_size, worker_index, num_workers, shuffle_buffer)
    manifest = read_manifest(uri)
    shard_ids, by_row = _plan(manifest, worker_index, num_workers, shuffle, seed + epoch)

    def keep(rows: np.ndarray) -> np.ndarray:
        return rows % num_workers == worker_index if by_row else np.ones(len(rows), dtype=bool)

    ds = _encoded_rows(uri, manifest, shard_ids, keep)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed + epoch, reshuffle_each_iteration=True)
    size = (int(image_size[0]), int(image_size[1]))
    shape = feature_shape(manifest)
    if shape is not None:
        if augmentation_on(augment):
            raise ConfigError(f"{uri} holds cached backbone features, which cannot be augmented; turn data.augment off.")
        ds = ds.map(lambda values, label: (tf.reshape(values, shape), label), num_parallel_calls=tf.data.AUTOTUNE)
    elif augmentation_on(augment):

        def augmented(i, example):  # each example's own seed: the pass's seed and its position
            image_seed = tf.stack([tf.cast(seed + epoch, tf.int64), i])
            return _augment(decode_image(example[0], size), image_seed, augment, size), example[1]

        ds = ds.enumerate().map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda image, label: (decode_image(image, size), label), num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        ds = ds.repeat()
    return _prefetched(ds.batch(batch_size, drop_remainder=drop_remainder))


_WRAPPED = re.compile(r"\b(DataError|StorageError): (.*?)(?:\nTraceback|\n\n|$)", re.S)


def batches(ds: tf.data.Dataset):
    """Iterates ``ds``, re-raising errors from the reader's generator as ``DataError``/``StorageError``."""
    try:
        yield from ds
    except tf.errors.OpError as exc:
        match = _WRAPPED.search(exc.message or "")
        if match is None:
            raise
        raise (DataError if match.group(1) == "DataError" else StorageError)(match.group(2).strip()) from None
