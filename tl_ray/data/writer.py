"""Shard writing for ingest: Parquet or TFRecord shards ``part-00000.<ext>``, each written atomically and
recorded (sha256, rows, the input position it ends at) in ``_ingest_progress.json``. A re-run of the same
plan (inputs, order, format, sizes) keeps the recorded shards that still match their sha256 and resumes
after them. The caller writes the manifest last."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from tl_ray import store
from tl_ray.data.manifest import SHARD_SUFFIX, Manifest, Shard
from tl_ray.data.tfrecord import encode_example, frame
from tl_ray.errors import DataError, StorageError

PROGRESS_NAME = "_ingest_progress.json"
ROW_GROUP_ROWS = 1024


def ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` on ``workers`` threads, in input order (so shards do not depend on ``workers``),
    holding at most ``4 * workers`` in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="tlray-ingest")
    window: collections.deque = collections.deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 4 * workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Progress:
    """A tqdm bar of images on stderr; ``n`` counts the updates even when the bar is not shown."""

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True):
        self.total, self.n = total, initial
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="img", file=sys.stderr, disable=not enabled)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class ShardWriter:
    """Writes shards of one dataset, resuming a matching earlier, unfinished run from input position
    ``resume_from`` (0 for a fresh run), with ``resumed`` shards kept. ``plan`` is what decides the shards'
    contents: another plan's progress file is discarded with its shards."""

    def __init__(self, to: str, fmt: str, rows_per_shard: int, target_shard_mb: float, plan: dict):
        self.to, self.fmt, self.progress_uri = to, fmt, store.join(to, PROGRESS_NAME)
        self.rows_per_shard = rows_per_shard
        self.target_bytes = int(target_shard_mb * 2**20)
        self.plan = store.sha256_bytes(json.dumps(plan, sort_keys=True, default=str).encode())
        self.entries: list[dict] = []  # one per finished shard, as in the progress file
        self._reset_open()
        self.resumed = self._load_progress()
        self.resume_from = self.entries[-1]["end"] if self.entries else 0

    def _reset_open(self) -> None:
        self._rows: list[bytes] = []  # encoded images (Parquet) or framed records (TFRecord)
        self._labels: list[int] = []
        self._size = 0
        self._counts: dict[int, int] = {}
        self._shapes: set[tuple] = set()
        self._skipped: list[str] = []

    def _load_progress(self) -> int:
        """Keeps the recorded shards that still match their sha256, up to the first that does not."""
        if not store.exists(self.progress_uri):
            return 0
        try:
            old = json.loads(store.read_text(self.progress_uri))
            matches = old["plan"] == self.plan and old["format"] == self.fmt
            entries = list(old["shards"])
        except (ValueError, KeyError, TypeError):
            matches, entries = False, []
        if not matches:  # another ingest's leftovers: remove them and start afresh
            for entry in entries:
                if isinstance(entry, dict) and entry.get("path"):
                    store.delete(store.join(self.to, str(entry["path"])))
            store.delete(self.progress_uri)
            return 0
        for entry in entries:
            uri = store.join(self.to, entry["path"])
            if not store.exists(uri) or store.sha256_bytes(store.read_bytes(uri)) != entry["sha256"]:
                break
            self.entries.append(entry)
        return len(self.entries)

    def add(self, image: bytes, label: int, shape: list[int], position: int) -> None:
        """Adds one image; ``position`` is its index in the plan's input order."""
        self._rows.append(frame(encode_example(image, label, shape)) if self.fmt == "tfrecord" else image)
        self._labels.append(int(label))
        self._size += len(image)
        self._counts[int(label)] = self._counts.get(int(label), 0) + 1
        self._shapes.add(tuple(shape))
        if len(self._labels) >= self.rows_per_shard or self._size >= self.target_bytes:
            self.flush(position + 1)

    def skip(self, uri: str) -> None:
        """Records an input left out (undecodable, with skip_bad)."""
        self._skipped.append(uri)

    def flush(self, end: int) -> None:
        """Writes the open shard (if it has rows) and records it; ``end`` is the next input position."""
        if not self._labels:
            return
        name = f"part-{len(self.entries):05d}{SHARD_SUFFIX[self.fmt]}"
        data = self._encode()
        uri = store.join(self.to, name)
        store.write_bytes(uri, data)
        store.check_size(uri, data)
        self.entries.append(dict(
            path=name, rows=len(self._labels), sha256=store.sha256_bytes(data), bytes=len(data), end=end,
            class_counts={str(k): v for k, v in sorted(self._counts.items())},
            shapes=sorted(list(s) for s in self._shapes), skipped=self._skipped,
        ))
        self._reset_open()
        progress = {"plan": self.plan, "format": self.fmt, "shards": self.entries}
        store.write_text(self.progress_uri, json.dumps(progress, indent=1) + "\n")

    def _encode(self) -> bytes:
        if self.fmt == "tfrecord":
            return b"".join(self._rows)
        table = pa.table({"image": pa.array(self._rows, type=pa.binary()),
                          "label": pa.array(self._labels, type=pa.int32())})
        buf = io.BytesIO()
        # Images are already compressed; Parquet compression would only cost CPU on every read.
        # Page checksums let the reader name a corrupt page instead of decoding garbage.
        pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, compression="none", write_page_checksum=True)
        return buf.getvalue()

    @property
    def skipped(self) -> list[str]:
        return [uri for e in self.entries for uri in e["skipped"]] + self._skipped

    @property
    def class_counts(self) -> dict[int, int]:
        counts: collections.Counter = collections.Counter()
        for entry in self.entries:
            counts.update({int(k): v for k, v in entry["class_counts"].items()})
        return counts

    def finish(self, end: int, class_names: list[str], source: dict) -> Manifest:
        """Writes the last shard and returns the manifest (the caller writes it, after every dataset)."""
        self.flush(end)
        shards = [Shard(e["path"], e["rows"], e["sha256"], e["bytes"]) for e in self.entries]
        rows = sum(s.rows for s in shards)
        if rows == 0:
            raise DataError(f"ingest to {self.to!r} selected no images (all were skipped or none matched).")
        shapes = {tuple(s) for e in self.entries for s in e["shapes"]}
        shape = list(next(iter(shapes))) if len(shapes) == 1 else None
        return Manifest(self.fmt, rows, list(class_names), shape, shards, source)

    def remove_progress(self) -> None:
        with contextlib.suppress(StorageError):  # harmless if left: datasets with a manifest never resume
            store.delete(self.progress_uri)
