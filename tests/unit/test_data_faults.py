"""Transient store errors mid-shard: the read resumes at the same offset, so an epoch stays exact."""

import pyarrow.parquet as pq
import pytest

from tl_ray import store
from tl_ray.data import shards as shard_io
from tl_ray.data.ingest import ingest_folder
from tl_ray.data.reader import batches, make_dataset
from tl_ray.errors import ConfigError, StorageError
from tl_ray.store import files

from synthetic_data import make_image_folder, row_ids

N = 60


class Outage(OSError):
    """Stands in for pyarrow's 'AWS Error NETWORK_CONNECTION ...' once the client's own retries gave up."""


@pytest.fixture
def flaky_store(monkeypatch):
    """Treats ``Outage`` as transient (as an S3 network error is) and retries without pausing."""
    monkeypatch.setattr(files, "is_transient", lambda uri, exc: isinstance(exc, Outage))
    monkeypatch.setattr(files, "READ_RETRY_BACKOFF_S", (0.0, 0.0))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    make_image_folder(root / "src", per_class=N // 3)
    out = {}
    for fmt in ("parquet", "tfrecord"):
        out[fmt] = str(root / fmt)
        ingest_folder(str(root / "src"), out[fmt], rows_per_shard=25, format=fmt)
    return out


def epoch(uri, **kwargs):
    ids = []
    for x, _ in batches(make_dataset(uri, image_size=(6, 5), batch_size=7, **kwargs)):
        ids += row_ids(x.numpy())
    return ids


def test_tfrecord_resumes_at_the_byte_offset(datasets, flaky_store, monkeypatch):
    monkeypatch.setattr(shard_io, "READ_CHUNK_BYTES", 1000)  # many chunks per shard
    calls, failed = [], set()

    def read_at(self, offset, length):
        def attempt():
            calls.append((self.shard.path, offset))
            if (self.shard.path, offset) not in failed and offset in (0, 2000, 3000):
                failed.add((self.shard.path, offset))
                self.reset()
                raise Outage("connection reset")
            return self.handle().read_at(length, offset)

        return store.retry_read(self.uri, attempt, what=f"bytes {offset}", on_retry=self.reset)

    monkeypatch.setattr(shard_io.ShardFile, "read_at", read_at)
    ids = epoch(datasets["tfrecord"], shuffle=True, shuffle_buffer=8)
    assert sorted(ids) == list(range(N))
    assert len(failed) >= 6  # three outages in each of at least two shards
    for key in failed:  # each failed range was read again from the same offset, once
        assert calls.count(key) == 2


def test_parquet_resumes_at_the_row_group(datasets, flaky_store, monkeypatch):
    real = pq.ParquetFile.read_row_group
    failures = {"left": 4}

    def read_row_group(self, i, *args, **kwargs):
        if failures["left"] and i == 1:
            failures["left"] -= 1
            raise Outage("connection reset")
        return real(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    monkeypatch.setattr("tl_ray.data.writer.ROW_GROUP_ROWS", 10)
    uri = datasets["parquet"] + "-small-groups"
    ingest_folder(datasets["parquet"].rsplit("/", 1)[0] + "/src", uri, rows_per_shard=25)
    ids = epoch(uri, shuffle=True, shuffle_buffer=8)
    assert sorted(ids) == list(range(N)) and failures["left"] == 0


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_an_outage_that_lasts_is_a_storage_error_naming_the_shard(datasets, flaky_store, monkeypatch, fmt):
    monkeypatch.setattr(files, "READ_RETRY_TIMEOUT_S", 0.0)

    def down(self, *args, **kwargs):
        raise Outage("AWS Error NETWORK_CONNECTION: could not connect")

    if fmt == "parquet":
        monkeypatch.setattr(pq.ParquetFile, "read_row_group", down)
    else:
        monkeypatch.setattr(shard_io.ShardFile, "read_at", lambda self, offset, length: store.retry_read(
            self.uri, lambda: down(self), what=f"bytes {offset}..{offset + length}"))
    with pytest.raises(StorageError, match=rf"cannot read '.*part-0000\d\.{fmt}' .*stayed unreachable"):
        epoch(datasets[fmt])



@pytest.mark.parametrize("name, value", [("batch_size", True), ("batch_size", 2.5), ("batch_size", 0),
                                         ("shuffle_buffer", "8"), ("num_workers", -1)])
def test_the_reader_refuses_a_count_that_is_not_a_positive_integer(datasets, name, value):
    with pytest.raises(ConfigError, match=rf"^{name} must be a positive integer. Received: {value!r}.$"):
        make_dataset(datasets["parquet"], image_size=(6, 5), **{"batch_size": 7, name: value})
