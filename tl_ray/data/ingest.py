"""Ingest: a source (Fashion-MNIST IDX files or a folder of images) becomes Parquet shards plus a manifest.

Each shard ``part-00000.parquet``, ... holds the columns ``image`` (encoded PNG
or JPEG bytes) and ``label`` (int32) in row groups of ~1024 rows, so readers
stream. Shards are written one by one (each atomically), their sha256 and row
count recorded, and the manifest goes last. A call is all or nothing: when it
fails, every file it wrote is deleted and no manifest is left behind.

Example:

>>> ingest_fashion_mnist("s3://bucket/store/datasets/fm-train", classes=[0, 1, 7], per_class=500,
...                      validation_to="s3://bucket/store/datasets/fm-val", validation_per_class=100)
{'class_names': ['T-shirt/top', 'Trouser', 'Sneaker'], 'train': {'uri': ..., 'rows': 1500, ...}, ...}
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tl_ray import storage
from tl_ray.data.manifest import Manifest, Shard, has_manifest, manifest_uri, read_manifest, write_manifest
from tl_ray.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    encode_png,
    list_image_folder,
    load_fashion_mnist,
    normalise_image,
)
from tl_ray.errors import ConfigError, DataError, StorageError

ROW_GROUP_ROWS = 1024


class _ShardWriter:
    """Buffers encoded images and writes a Parquet shard every ``rows_per_shard`` rows."""

    def __init__(self, to: str, rows_per_shard: int, written: list[str]):
        self.to = to
        self.rows_per_shard = rows_per_shard
        self.written = written  # every URI this call wrote, for clean-up on failure
        self.shards: list[Shard] = []
        self.shapes: set[tuple[int, ...]] = set()
        self.class_counts: dict[int, int] = {}
        self._images: list[bytes] = []
        self._labels: list[int] = []

    def add(self, image: bytes, label: int, shape: list[int]) -> None:
        self._images.append(image)
        self._labels.append(int(label))
        self.shapes.add(tuple(shape))
        self.class_counts[int(label)] = self.class_counts.get(int(label), 0) + 1
        if len(self._images) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._images:
            return
        table = pa.table(
            {"image": pa.array(self._images, type=pa.binary()), "label": pa.array(self._labels, type=pa.int32())}
        )
        buf = io.BytesIO()
        # Images are already compressed; Parquet compression would only cost CPU on every read.
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="none")
        data = buf.getvalue()
        name = f"part-{len(self.shards):05d}.parquet"
        uri = storage.join(self.to, name)
        self.written.append(uri)
        storage.write_bytes(uri, data)
        self.shards.append(Shard(path=name, rows=len(self._images), sha256=storage.sha256_bytes(data), bytes=len(data)))
        self._images, self._labels = [], []

    def finish(self, class_names: list[str], source: dict) -> Manifest:
        self._flush()
        rows = sum(s.rows for s in self.shards)
        if rows == 0:
            raise DataError(f"ingest to {self.to!r} selected no images (all were skipped or none matched).")
        shape = list(next(iter(self.shapes))) if len(self.shapes) == 1 else None
        return Manifest("parquet", rows, list(class_names), shape, self.shards, source)


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
            raise ConfigError(f"{name} must be a positive integer. Received: {value!r}.")


def _check_targets(targets: list[str], overwrite: bool) -> None:
    """Refuses targets that hold a dataset, unless ``overwrite``; cheap, so it runs before any reading."""
    if len(set(targets)) != len(targets):
        raise ConfigError(f"the training and validation targets must differ. Received: {targets}.")
    for to in targets:
        if has_manifest(to) and not overwrite:
            raise DataError(
                f"{to!r} already holds a dataset ({manifest_uri(to)} exists). Pass overwrite=True "
                "(--overwrite) to replace it, or choose another --to."
            )


def _remove_old(targets: list[str]) -> None:
    """Removes datasets being overwritten: manifest first, so a half-deleted one is never taken for whole."""
    for to in targets:
        if not has_manifest(to):
            continue
        try:
            old = [storage.join(to, s.path) for s in read_manifest(to).shards]
        except DataError:
            old = []  # a malformed manifest: its shards are overwritten by name
        storage.delete(manifest_uri(to))
        for uri in old:
            storage.delete(uri)


@contextlib.contextmanager
def _all_or_nothing(written: list[str]):
    """Deletes every URI in ``written`` when the block fails, then re-raises."""
    try:
        yield
    except BaseException:
        for uri in reversed(written):
            with contextlib.suppress(StorageError):
                storage.delete(uri)
        raise


def _summary(to: str, writer: _ShardWriter, manifest: Manifest) -> dict:
    return {
        "uri": to,
        "rows": manifest.num_rows,
        "shards": len(manifest.shards),
        "class_counts": {manifest.class_names[k]: v for k, v in sorted(writer.class_counts.items())},
        "digest": manifest.digest,
    }


def _publish(datasets: list[tuple[str, _ShardWriter, Manifest]], written: list[str]) -> dict:
    """Writes the manifests (after all shards) and returns the per-dataset report."""
    report = {}
    for role, writer, manifest in datasets:
        written.append(manifest_uri(writer.to))
        write_manifest(writer.to, manifest)
        report[role] = _summary(writer.to, writer, manifest)
    return report


def ingest_fashion_mnist(
    to: str,
    *,
    path: str = FASHION_MNIST_DIR,
    split: str = "train",
    classes: list[int] | None = None,
    per_class: int | None = None,
    validation_to: str | None = None,
    validation_per_class: int | None = None,
    seed: int = 0,
    rows_per_shard: int = 4096,
    overwrite: bool = False,
) -> dict:
    """Ingests Fashion-MNIST from its gzipped IDX files.

    Args:
        to: target dataset folder (local path or ``s3://``).
        path: folder of the IDX files. Defaults to /usr/share/datasets/fashion-mnist.
        split: ``"train"`` or ``"test"``. Defaults to "train".
        classes: Fashion-MNIST class ids to keep; labels become 0..K-1 in this order. Defaults to all 10.
        per_class: images per class, chosen with a seeded RNG. Defaults to all (minus validation).
        validation_to: also write a validation dataset here, from images of the same split that
            training did not take. Defaults to None.
        validation_per_class: validation images per class. Defaults to all images training left.
        seed: seed of the choice and of the row order. Defaults to 0.
        rows_per_shard: rows per Parquet shard. Defaults to 4096.
        overwrite: replace a dataset already at a target (the old one is removed before writing).
            Defaults to False.

    Returns:
        ``{"class_names", "train": {uri, rows, shards, class_counts, digest}, "validation": {...}, "skipped": []}``.

    Raises:
        ConfigError: an unknown class id or an invalid count.
        DataError: the IDX files are missing or corrupt, a class has fewer images than asked,
            or a target already holds a dataset.
        StorageError: the store cannot be reached or written.
    """
    _check_positive(per_class=per_class, validation_per_class=validation_per_class, rows_per_shard=rows_per_shard)
    classes = list(range(len(FASHION_MNIST_CLASSES))) if classes is None else list(classes)
    bad = [
        c for c in classes
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(FASHION_MNIST_CLASSES)
    ]
    if bad or not classes or len(set(classes)) != len(classes):
        raise ConfigError(
            f"classes must be distinct Fashion-MNIST class ids 0..9 "
            f"({', '.join(f'{i}={n}' for i, n in enumerate(FASHION_MNIST_CLASSES))}). Received: {classes!r}."
        )
    classes = [int(c) for c in classes]
    if validation_per_class is not None and validation_to is None:
        raise ConfigError("validation_per_class needs validation_to (where to write the validation dataset).")
    if validation_to is not None and per_class is None and validation_per_class is None:
        raise ConfigError(
            "validation_to needs validation_per_class or per_class: the validation images are the ones "
            "training does not take. Received neither."
        )
    targets = {"train": to} if validation_to is None else {"train": to, "validation": validation_to}
    _check_targets(list(targets.values()), overwrite)
    images, labels = load_fashion_mnist(path, split)

    rng = np.random.default_rng(seed)
    picks: dict[str, list[tuple[int, int]]] = {"train": [], "validation": []}
    for new_label, cid in enumerate(classes):
        order = rng.permutation(np.flatnonzero(labels == cid))
        n_val = 0 if validation_to is None else validation_per_class or len(order) - per_class
        n_train = per_class if per_class is not None else len(order) - n_val
        if n_train + n_val > len(order) or n_train <= 0 or (validation_to is not None and n_val <= 0):
            raise DataError(
                f"Fashion-MNIST {split} class {cid} ({FASHION_MNIST_CLASSES[cid]}) has {len(order)} images; "
                f"asked for per_class={per_class} and validation_per_class={validation_per_class}. "
                "Lower them so that both fit."
            )
        picks["train"] += [(int(i), new_label) for i in order[:n_train]]
        picks["validation"] += [(int(i), new_label) for i in order[n_train : n_train + n_val]]

    names = [FASHION_MNIST_CLASSES[c] for c in classes]
    if overwrite:
        _remove_old(list(targets.values()))
    written: list[str] = []
    datasets = []
    with _all_or_nothing(written):
        for role, target in targets.items():
            writer = _ShardWriter(target, rows_per_shard, written)
            for k in rng.permutation(len(picks[role])):  # mix classes across shards
                index, label = picks[role][k]
                writer.add(encode_png(images[index]), label, [*images.shape[1:], 1])
            source = {
                "kind": "fashion-mnist",
                "path": path,
                "split": split,
                "classes": classes,
                "per_class": per_class,
                "validation_per_class": validation_per_class,
                "role": role,
                "seed": seed,
            }
            datasets.append((role, writer, writer.finish(names, source)))
        report = _publish(datasets, written)
    return {"class_names": names, **report, "skipped": []}


def ingest_folder(
    src: str,
    to: str,
    *,
    validation_to: str | None = None,
    validation_fraction: float | None = None,
    per_class: int | None = None,
    seed: int = 0,
    rows_per_shard: int = 4096,
    skip_bad: bool = False,
    overwrite: bool = False,
) -> dict:
    """Ingests a folder with one sub-folder of images (PNG, JPEG, BMP, GIF) per class.

    Class names are the sorted sub-folder names, as in ``keras.utils.image_dataset_from_directory``.
    Images are read one shard at a time, so the folder need not fit in memory.

    Args:
        src: the image folder (local path or ``s3://``).
        to: target dataset folder.
        validation_to: also write a validation dataset here. Defaults to None.
        validation_fraction: share of each class (0 < f < 1) that goes to validation; needs
            ``validation_to``. Defaults to None.
        per_class: training images per class, chosen with a seeded RNG. Defaults to all.
        seed: seed of the choice and of the row order. Defaults to 0.
        rows_per_shard: rows per Parquet shard. Defaults to 4096.
        skip_bad: leave undecodable images out (listed under "skipped") instead of failing.
            Defaults to False.
        overwrite: replace a dataset already at a target (the old one is removed before writing).
            Defaults to False.

    Returns:
        ``{"class_names", "train": {uri, rows, shards, class_counts, digest}, "validation": {...}, "skipped": [...]}``.

    Raises:
        ConfigError: invalid counts, or only one of validation_to / validation_fraction.
        DataError: no class folders, an undecodable image (unless skip_bad), a class with fewer
            images than per_class, or a target that already holds a dataset.
        StorageError: the store cannot be reached or written.
    """
    _check_positive(per_class=per_class, rows_per_shard=rows_per_shard)
    if (validation_to is None) != (validation_fraction is None):
        raise ConfigError(
            "validation_to and validation_fraction go together. Received: "
            f"validation_to={validation_to!r}, validation_fraction={validation_fraction!r}."
        )
    if validation_fraction is not None and not 0.0 < validation_fraction < 1.0:
        raise ConfigError(
            f"validation_fraction must be between 0 and 1 (exclusive). Received: {validation_fraction!r}."
        )
    targets = {"train": to} if validation_to is None else {"train": to, "validation": validation_to}
    _check_targets(list(targets.values()), overwrite)
    names, files = list_image_folder(src)

    rng = np.random.default_rng(seed)
    picks: dict[str, list[tuple[str, int]]] = {"train": [], "validation": []}
    for label, class_files in enumerate(files):
        order = [class_files[i] for i in rng.permutation(len(class_files))]
        n_val = 0 if validation_fraction is None else max(1, round(validation_fraction * len(order)))
        rest = order[n_val:]
        if not rest or (per_class is not None and per_class > len(rest)):
            raise DataError(
                f"class folder {storage.join(src, names[label])!r} has {len(order)} images; "
                f"{n_val} go to validation, leaving {len(rest)} for training, fewer than "
                f"per_class={per_class or 1}. Lower per_class or validation_fraction."
            )
        picks["train"] += [(f, label) for f in rest[:per_class]]
        picks["validation"] += [(f, label) for f in order[:n_val]]

    if overwrite:
        _remove_old(list(targets.values()))
    written: list[str] = []
    skipped: list[str] = []
    datasets = []
    with _all_or_nothing(written):
        for role, target in targets.items():
            writer = _ShardWriter(target, rows_per_shard, written)
            skipped_before = len(skipped)
            for k in rng.permutation(len(picks[role])):  # mix classes across shards
                uri, label = picks[role][k]
                try:
                    data, shape = normalise_image(storage.read_bytes(uri), uri)
                except DataError:
                    if not skip_bad:
                        raise
                    skipped.append(uri)
                    continue
                writer.add(data, label, shape)
            source = {
                "kind": "folder",
                "path": src,
                "per_class": per_class,
                "validation_fraction": validation_fraction,
                "role": role,
                "seed": seed,
                "skipped": len(skipped) - skipped_before,
            }
            datasets.append((role, writer, writer.finish(names, source)))
        report = _publish(datasets, written)
    return {"class_names": names, **report, "skipped": sorted(skipped)}
