"""The rows of one Parquet or TFRecord shard, read in chunks and checked as they go (size, CRCs, row count).
A transient store error re-opens the file and re-reads from the same byte offset (TFRecord) or row group
(Parquet), so each row is yielded exactly once. No TensorFlow here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tl_ray import store
from tl_ray.data.manifest import Shard
from tl_ray.data.tfrecord import RecordParser
from tl_ray.errors import DataError, StorageError, first_line

READ_CHUNK_BYTES = 4 << 20  # one ranged GET per chunk: large enough for S3 throughput, small enough to stream
RECORDS_PER_YIELD = 1024

Keep = Callable[[np.ndarray], np.ndarray]


class ShardFile:
    """A random-access shard file of the dataset ``dataset_uri`` that re-opens itself after transient errors.
    DataError when the shard is missing or its size differs from the manifest (truncated or changed)."""

    def __init__(self, dataset_uri: str, shard: Shard):
        self.shard = shard
        self.uri = store.join(dataset_uri, shard.path)
        self._file = self._parquet = None
        self.hint = f"Check it with `tl-ray data verify {dataset_uri}` and re-ingest the dataset."
        self.size = self._retry(lambda: self.handle().size(), "size")
        if self.size != shard.bytes:
            state = "truncated" if self.size < shard.bytes else "larger than ingest wrote"
            raise DataError(f"shard {self.uri!r} is {state}: it holds {self.size} bytes, the manifest says "
                            f"{shard.bytes} (data ends at byte offset {self.size}). {self.hint}")

    def handle(self):
        """The open pyarrow file, opened on first use and after a reset."""
        if self._file is None:
            fs, path = store.filesystem(self.uri)
            try:
                self._file = fs.open_input_file(path)
            except FileNotFoundError:
                raise DataError(f"shard {self.uri!r} is missing (the manifest lists it with "
                                f"{self.shard.rows} rows). {self.hint}") from None
        return self._file

    def parquet(self) -> pq.ParquetFile:
        """The file as Parquet (page checksums verified), opened on first use and after a reset."""
        if self._parquet is None:
            self._parquet = pq.ParquetFile(self.handle(), page_checksum_verification=True)
        return self._parquet

    def reset(self, _exc: BaseException | None = None) -> None:
        """Closes the handle; the next read opens a fresh one (a new connection)."""
        if self._file is not None:
            with contextlib.suppress(OSError, pa.ArrowException):
                self._file.close()
        self._file = self._parquet = None

    def _retry(self, attempt, what: str):
        with store.reported(self.uri, "read"):
            return store.retry_read(self.uri, attempt, what=what, on_retry=self.reset)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        return self._retry(lambda: self.handle().read_at(length, offset), f"bytes {offset}..{offset + length}")


def parquet_batches(dataset_uri: str, shard: Shard, first_row: int, keep: Keep,
                    value_column: str = "image") -> Iterator[tuple]:
    """Yields ``(values[n], labels int32[n])`` per row group of a Parquet shard.

    Args:
        first_row: the dataset-wide index of the shard's first row (``keep`` sees global indices).
        keep: ``keep(global_rows) -> bool mask`` of the rows this worker reads.
        value_column: ``"image"`` (encoded images, as an object array) or ``"features"`` (a feature
            cache's float32 vectors, as ``[n, d]``).

    DataError when the shard is missing, truncated, fails a page CRC, or its row count differs from the
    manifest; it names the shard, the row and the byte offset.
    """
    file = ShardFile(dataset_uri, shard)
    done, group, offset = 0, 0, 0
    try:
        meta = store.retry_read(file.uri, lambda: file.parquet().metadata, what="footer", on_retry=file.reset)
        if meta.num_rows != shard.rows:
            raise DataError(f"shard {file.uri!r} holds {meta.num_rows} rows but the manifest says "
                            f"{shard.rows}. The dataset changed after ingest; re-ingest it.")
        for group in range(meta.num_row_groups):
            column = meta.row_group(group).column(0)
            offset = column.dictionary_page_offset or column.data_page_offset
            # A whole row group per attempt: after an outage it is re-read from its start, and
            # nothing of it was yielded yet, so no row repeats or goes missing.
            table = store.retry_read(
                file.uri, lambda: file.parquet().read_row_group(group, columns=[value_column, "label"]),
                what=f"row group {group}", on_retry=file.reset,
            )
            labels = table.column("label").to_numpy().astype(np.int32)
            mask = keep(np.arange(first_row + done, first_row + done + len(labels)))
            done += len(labels)
            if mask.any():
                yield _values(table.column(value_column), len(labels))[mask], labels[mask]
    except StorageError:
        raise
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise DataError(f"shard {file.uri!r} is unreadable at row {done} (row group {group}, byte offset "
                        f"{offset}): {type(exc).__name__}: {first_line(exc)}. {file.hint}") from None
    finally:
        file.reset()
    if done != shard.rows:
        raise DataError(f"shard {file.uri!r} ended at row {done}; the manifest says {shard.rows} rows. {file.hint}")


def _values(chunked: pa.ChunkedArray, rows: int) -> np.ndarray:
    """Encoded images as an object array, or fixed-size float vectors as float32 ``[rows, d]``."""
    if pa.types.is_fixed_size_list(chunked.type):
        flat = chunked.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return flat.astype(np.float32, copy=False).reshape(rows, chunked.type.list_size)
    return np.asarray(chunked.to_pylist(), dtype=object)


def tfrecord_batches(dataset_uri: str, shard: Shard, first_row: int, keep: Keep) -> Iterator[np.ndarray]:
    """Yields serialized ``tf.train.Example`` records (object arrays) of a TFRecord shard, fetched in
    ``READ_CHUNK_BYTES`` ranged reads with the next one in flight; arguments and errors as for
    ``parquet_batches``."""
    file = ShardFile(dataset_uri, shard)
    parser = RecordParser(file.uri)
    pending: list[bytes] = []

    def flush() -> Iterator[np.ndarray]:
        mask = keep(np.arange(first_row + parser.records - len(pending), first_row + parser.records))
        out = np.asarray(pending, dtype=object)[mask] if mask.any() else None
        pending.clear()
        if out is not None:
            yield out

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tlray-readahead")
    ahead = None
    try:
        ahead = pool.submit(file.read_at, 0, READ_CHUNK_BYTES) if file.size else None
        for start in range(0, file.size, READ_CHUNK_BYTES):
            chunk = ahead.result()
            nxt = start + READ_CHUNK_BYTES
            ahead = pool.submit(file.read_at, nxt, READ_CHUNK_BYTES) if nxt < file.size else None
            if len(chunk) != min(READ_CHUNK_BYTES, file.size - start):
                raise DataError(f"shard {file.uri!r} is truncated: reading bytes {start}.. returned "
                                f"{len(chunk)} bytes of a {file.size}-byte file (data ends at byte offset "
                                f"{start + len(chunk)}). {file.hint}")
            pending += parser.feed(chunk)
            if len(pending) >= RECORDS_PER_YIELD:
                yield from flush()
        parser.finish()
        yield from flush()
    finally:
        if ahead is not None:
            ahead.cancel()
        pool.shutdown(wait=True)  # a read in flight ends (bounded by the store's timeouts) before the file closes
        file.reset()
    if parser.records != shard.rows:
        raise DataError(f"shard {file.uri!r} holds {parser.records} records (to byte offset "
                        f"{parser.offset}) but the manifest says {shard.rows}. The dataset changed after "
                        "ingest; re-ingest it.")
