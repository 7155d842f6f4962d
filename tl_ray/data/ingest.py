"""Ingest: a source (Fashion-MNIST IDX files or a folder of images) becomes Parquet or TFRecord shards plus a
manifest, written last (``writer`` has the shard layout and how a re-run resumes). Each ingest returns its
report: ``{"class_names", "format", "train": {uri, rows, shards, resumed_shards, class_counts, digest},
"validation": {...}, "skipped": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable

import numpy as np

from tl_ray import store
from tl_ray.data.manifest import FORMATS, Manifest, has_manifest, manifest_uri, read_manifest, write_manifest
from tl_ray.data.sources import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, encode_png, list_image_folder, load_fashion_mnist, normalise_image,
)
from tl_ray.data.writer import Progress, ShardWriter, ordered_map
from tl_ray.errors import ConfigError, DataError, StorageError

DEFAULT_TARGET_SHARD_MB = 64.0


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
            raise ConfigError(f"{name} must be a positive integer. Received: {value!r}.")


def _targets(to: str, validation_to: str | None, overwrite: bool) -> dict[str, str]:
    """Each role's target; refuses targets that hold a dataset, unless ``overwrite``."""
    targets = {"train": to} if validation_to is None else {"train": to, "validation": validation_to}
    if validation_to == to:
        raise ConfigError(f"the training and validation targets must differ. Received: {[to, validation_to]}.")
    for uri in targets.values():
        if has_manifest(uri) and not overwrite:
            raise DataError(f"{uri!r} already holds a dataset ({manifest_uri(uri)} exists). Pass "
                            "overwrite=True (--overwrite) to replace it, or choose another --to.")
    return targets


def _remove_old(targets: list[str]) -> None:
    """Removes datasets being overwritten: manifest first, so a half-deleted one is never taken for whole."""
    for to in targets:
        if not has_manifest(to):
            continue
        try:
            old = [store.join(to, s.path) for s in read_manifest(to).shards]
        except DataError:
            old = []  # a malformed manifest: its shards are overwritten by name
        store.delete(manifest_uri(to))
        for uri in old:
            store.delete(uri)


def _options(fmt: str, rows_per_shard, target_shard_mb, workers, progress: bool) -> dict:
    """The options every ingest takes, checked, as ``_write_shards`` takes them."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {list(FORMATS)}. Received: {fmt!r}.")
    if isinstance(target_shard_mb, bool) or not isinstance(target_shard_mb, (int, float)) or not target_shard_mb > 0:
        raise ConfigError(f"target_shard_mb must be a positive number of MiB. Received: {target_shard_mb!r}.")
    _check_positive(rows_per_shard=rows_per_shard, workers=workers)
    return dict(fmt=fmt, rows_per_shard=rows_per_shard, target_shard_mb=target_shard_mb,
                workers=workers or min(8, (os.cpu_count() or 1) + 2), progress=progress)


def _safe(load: Callable, key):
    """``load(key)``, with a DataError returned instead of raised (the caller decides: skip or stop)."""
    try:
        return load(key)
    except DataError as exc:
        return exc


def _write_shards(role: str, to: str, items: list[tuple], load: Callable, names: list[str], source: dict, *,
                  fmt: str, rows_per_shard: int, target_shard_mb: float, workers: int, skip_bad: bool,
                  progress: bool) -> tuple[ShardWriter, Manifest]:
    """Writes one target's shards, resuming a matching unfinished run; returns its writer and its manifest
    (not yet written)."""
    plan = dict(format=fmt, rows_per_shard=rows_per_shard, target_shard_mb=target_shard_mb, source=source,
                items=store.sha256_bytes(json.dumps(items).encode()))
    writer = ShardWriter(to, fmt, rows_per_shard, target_shard_mb, plan)
    bar = Progress(len(items), f"ingest {role} -> {to}", initial=writer.resume_from, enabled=progress)
    todo = range(writer.resume_from, len(items))
    try:
        with contextlib.closing(ordered_map(lambda k: _safe(load, items[k][0]), todo, workers)) as results:
            for k, result in zip(todo, results):
                if isinstance(result, DataError):
                    if not skip_bad:
                        raise result
                    writer.skip(str(items[k][0]))
                else:
                    writer.add(result[0], items[k][1], result[1], k)
                bar.update()
    finally:
        bar.close()
    return writer, writer.finish(len(items), names, {**source, "skipped": len(writer.skipped)})


def _write_datasets(targets: dict[str, str], picks: dict[str, list[tuple]], rng: np.random.Generator,
                    load: Callable, names: list[str], source: dict, *, overwrite: bool, **options) -> dict:
    """Writes every target's picks (each role's ``(key, label)`` pairs; ``load(key)`` gives ``(encoded image,
    shape)``), then every manifest; returns the ingest's report. ``options`` go to ``_write_shards``."""
    if overwrite:
        _remove_old(list(targets.values()))
    # Rows in a seeded random order, so classes mix across shards.
    ordered = {role: [picks[role][k] for k in rng.permutation(len(picks[role]))] for role in targets}
    datasets = [_write_shards(role, to, ordered[role], load, names, {**source, "role": role}, **options)
                for role, to in targets.items()]
    report: dict = {"class_names": names, "format": options["fmt"]}
    published: list[str] = []
    for role, (writer, manifest) in zip(targets, datasets):  # manifests last: each folder becomes a dataset whole
        try:
            write_manifest(writer.to, manifest)
        except StorageError:
            for uri in published:  # all or nothing: a train set without its validation set is not published
                store.delete(manifest_uri(uri))
            raise
        published.append(writer.to)
        writer.remove_progress()
        report[role] = dict(
            uri=writer.to, rows=manifest.num_rows, shards=len(manifest.shards), resumed_shards=writer.resumed,
            class_counts={manifest.class_names[k]: v for k, v in sorted(writer.class_counts.items())},
            digest=manifest.digest,
        )
    report["skipped"] = sorted(uri for writer, _ in datasets for uri in writer.skipped)
    return report


def _fashion_classes(classes: list[int] | None) -> list[int]:
    """The class ids to keep, checked: distinct Fashion-MNIST ids; all 10 when None."""
    n = len(FASHION_MNIST_CLASSES)
    classes = list(range(n)) if classes is None else list(classes)
    bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < n]
    if bad or not classes or len(set(classes)) != len(classes):
        raise ConfigError("classes must be distinct Fashion-MNIST class ids 0..9 "
                          f"({', '.join(f'{i}={n}' for i, n in enumerate(FASHION_MNIST_CLASSES))}). "
                          f"Received: {classes!r}.")
    return [int(c) for c in classes]


def _pick_fashion(labels: np.ndarray, classes: list[int], split: str, per_class: int | None,
                  validation_per_class: int | None, validation: bool, rng: np.random.Generator) -> dict[str, list]:
    """Each role's ``(image index, new label)`` pairs, chosen per class with ``rng``."""
    picks: dict[str, list[tuple[int, int]]] = {"train": [], "validation": []}
    for new_label, cid in enumerate(classes):
        order = rng.permutation(np.flatnonzero(labels == cid))
        n_val = 0 if not validation else validation_per_class or len(order) - per_class
        n_train = per_class if per_class is not None else len(order) - n_val
        if n_train + n_val > len(order) or n_train <= 0 or (validation and n_val <= 0):
            raise DataError(f"Fashion-MNIST {split} class {cid} ({FASHION_MNIST_CLASSES[cid]}) has "
                            f"{len(order)} images; asked for per_class={per_class} and "
                            f"validation_per_class={validation_per_class}. Lower them so that both fit.")
        picks["train"] += [(int(i), new_label) for i in order[:n_train]]
        picks["validation"] += [(int(i), new_label) for i in order[n_train : n_train + n_val]]
    return picks


def ingest_fashion_mnist(
    to: str, *, path: str = FASHION_MNIST_DIR, split: str = "train", classes: list[int] | None = None,
    per_class: int | None = None, validation_to: str | None = None, validation_per_class: int | None = None,
    seed: int = 0, rows_per_shard: int = 4096, overwrite: bool = False,
    format: str = "parquet",  # noqa: A002 - the CLI's --format
    target_shard_mb: float = DEFAULT_TARGET_SHARD_MB, workers: int | None = None, progress: bool = False,
) -> dict:
    """Ingests Fashion-MNIST from its gzipped IDX files; returns the report (module docstring).

    Args:
        to: target dataset folder (local path or ``s3://``).
        path: folder of the IDX files.
        split: ``"train"`` or ``"test"``.
        classes: Fashion-MNIST class ids to keep; labels become 0..K-1 in this order. Defaults to all 10.
        per_class: images per class. Defaults to all (minus validation).
        validation_to: also write a validation dataset here, from images of the same split that
            training did not take.
        validation_per_class: validation images per class. Defaults to all images training left.
        seed: seed of the choice and of the row order.
        rows_per_shard, target_shard_mb: a shard closes at this many rows, or when its images reach this
            many MiB.
        overwrite: replace a dataset already at a target (the old one is removed first).
        format: shard format, ``"parquet"`` or ``"tfrecord"``.
        workers: threads that read, check and encode images. Defaults to min(8, CPUs + 2).
        progress: show a progress bar on stderr.

    Raises:
        ConfigError: an unknown class id or an invalid count.
        DataError: the IDX files are missing or corrupt, a class has fewer images than asked,
            or a target already holds a dataset.
    """
    _check_positive(per_class=per_class, validation_per_class=validation_per_class)
    options = _options(format, rows_per_shard, target_shard_mb, workers, progress)
    classes = _fashion_classes(classes)
    if validation_per_class is not None and validation_to is None:
        raise ConfigError("validation_per_class needs validation_to (where to write the validation dataset).")
    if validation_to is not None and per_class is None and validation_per_class is None:
        raise ConfigError("validation_to needs validation_per_class or per_class: the validation images are "
                          "the ones training does not take. Received neither.")
    targets = _targets(to, validation_to, overwrite)
    images, labels = load_fashion_mnist(path, split)
    rng = np.random.default_rng(seed)
    picks = _pick_fashion(labels, classes, split, per_class, validation_per_class, validation_to is not None, rng)
    source = {"kind": "fashion-mnist", "path": path, "split": split, "classes": classes, "per_class": per_class,
              "validation_per_class": validation_per_class, "seed": seed}
    return _write_datasets(targets, picks, rng, lambda i: (encode_png(images[i]), [*images.shape[1:], 1]),
                           [FASHION_MNIST_CLASSES[c] for c in classes], source, overwrite=overwrite, skip_bad=False,
                           **options)


def _pick_folder(src: str, names: list[str], files: list[list[str]], per_class: int | None,
                 validation_fraction: float | None, rng: np.random.Generator) -> dict[str, list]:
    """Each role's ``(image URI, label)`` pairs, chosen per class folder with ``rng``."""
    picks: dict[str, list[tuple[str, int]]] = {"train": [], "validation": []}
    for label, class_files in enumerate(files):
        order = [class_files[i] for i in rng.permutation(len(class_files))]
        n_val = 0 if validation_fraction is None else max(1, round(validation_fraction * len(order)))
        rest = order[n_val:]
        if not rest or (per_class is not None and per_class > len(rest)):
            raise DataError(f"class folder {store.join(src, names[label])!r} has {len(order)} images; "
                            f"{n_val} go to validation, leaving {len(rest)} for training, fewer than "
                            f"per_class={per_class or 1}. Lower per_class or validation_fraction.")
        picks["train"] += [(f, label) for f in rest[:per_class]]
        picks["validation"] += [(f, label) for f in order[:n_val]]
    return picks


def ingest_folder(
    src: str, to: str, *, validation_to: str | None = None, validation_fraction: float | None = None,
    per_class: int | None = None, seed: int = 0, rows_per_shard: int = 4096, skip_bad: bool = False,
    overwrite: bool = False, format: str = "parquet",  # noqa: A002 - the CLI's --format
    target_shard_mb: float = DEFAULT_TARGET_SHARD_MB, workers: int | None = None, progress: bool = False,
) -> dict:
    """Ingests a folder with one sub-folder of images (PNG, JPEG, BMP, GIF) per class, named as sub-folders
    sort; returns the report (module docstring). The folder need not fit in memory.

    Args:
        src: the image folder (local path or ``s3://``).
        to: target dataset folder.
        validation_to: also write a validation dataset here.
        validation_fraction: share of each class (0 < f < 1) that goes to validation; needs
            ``validation_to``.
        per_class: training images per class. Defaults to all.
        skip_bad: leave undecodable images out (listed under "skipped") instead of failing.
        Other options: as for ``ingest_fashion_mnist``.

    Raises:
        ConfigError: invalid counts, or only one of validation_to / validation_fraction.
        DataError: no class folders, an undecodable image (unless skip_bad), a class with fewer
            images than per_class, or a target that already holds a dataset.
    """
    _check_positive(per_class=per_class)
    options = _options(format, rows_per_shard, target_shard_mb, workers, progress)
    if (validation_to is None) != (validation_fraction is None):
        raise ConfigError("validation_to and validation_fraction go together. Received: "
                          f"validation_to={validation_to!r}, validation_fraction={validation_fraction!r}.")
    if validation_fraction is not None and not 0.0 < validation_fraction < 1.0:
        raise ConfigError("validation_fraction must be between 0 and 1 (exclusive). Received: "
                          f"{validation_fraction!r}.")
    targets = _targets(to, validation_to, overwrite)
    names, files = list_image_folder(src)
    rng = np.random.default_rng(seed)
    picks = _pick_folder(src, names, files, per_class, validation_fraction, rng)
    source = {"kind": "folder", "path": src, "per_class": per_class, "validation_fraction": validation_fraction,
              "seed": seed}
    return _write_datasets(targets, picks, rng, lambda uri: normalise_image(store.read_bytes(uri), uri), names,
                           source, overwrite=overwrite, skip_bad=skip_bad, **options)
