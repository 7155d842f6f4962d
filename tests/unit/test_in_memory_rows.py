"""Feature-cache rows held in memory stream the same batches as the reader streams from the store."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tl_ray import store
from tl_ray.data.manifest import Manifest, Shard, write_manifest
from tl_ray.data.reader import batches, in_memory_dataset, load_rows, make_dataset

SHAPE = [2, 3]


@pytest.fixture
def entry(tmp_path):
    """A feature-cache style dataset: 3 Parquet shards of 7, 5 and 9 rows of [2, 3] features."""
    rng = np.random.default_rng(0)
    uri = str(tmp_path / "entry")
    shards = []
    for i, rows in enumerate((7, 5, 9)):
        x = rng.normal(size=(rows, *SHAPE)).astype(np.float32)
        y = rng.integers(0, 4, size=rows).astype(np.int32)
        values = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=pa.float32()), int(np.prod(SHAPE)))
        buf = io.BytesIO()
        pq.write_table(pa.table({"features": values, "label": pa.array(y, type=pa.int32())}), buf, row_group_size=4)
        data = buf.getvalue()
        name = f"part-{i:05d}.parquet"
        store.write_bytes(store.join(uri, name), data)
        shards.append(Shard(name, rows, store.sha256_bytes(data), len(data)))
    write_manifest(uri, Manifest("parquet", 21, ["a", "b", "c", "d"], None, shards,
                                 {"kind": "features", "feature_shape": SHAPE}))
    return uri


@pytest.mark.parametrize("options", [
    {},
    {"shuffle": True, "seed": 3, "epoch": 2, "shuffle_buffer": 8},
    {"shuffle": True, "seed": 1, "drop_remainder": True, "repeat": True},
    {"num_workers": 2, "worker_index": 1, "shuffle": True},
])
def test_in_memory_batches_equal_the_readers(entry, options):
    values, labels, manifest = load_rows(entry)
    assert values.shape == (21, *SHAPE) and labels.shape == (21,)
    streamed = make_dataset(entry, image_size=(8, 8), batch_size=4, **options)
    held = in_memory_dataset(values, labels, manifest, batch_size=4, **options)
    take = 12 if options.get("repeat") else None  # a repeated dataset: three passes' worth of batches
    a = list(batches(streamed.take(take) if take else streamed))
    b = list(batches(held.take(take) if take else held))
    assert len(a) == len(b) > 0
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    if options.get("drop_remainder"):
        assert all(len(y) == 4 for _, y in b)


@pytest.fixture
def held():
    """The process's in-memory entries, emptied after the test."""
    from tl_ray.train.cached_inputs import MemoryRows

    yield MemoryRows
    MemoryRows._held.clear()


def test_a_process_reuses_an_entrys_unshuffled_dataset_and_streams_the_same_batches(entry, held):
    from tl_ray.data.manifest import read_manifest

    MemoryRows = held

    manifest = read_manifest(entry)
    first = MemoryRows(entry, manifest).dataset(batch_size=4, image_size=(8, 8))
    later = MemoryRows(entry, manifest)  # the next trial in the same process
    again = later.dataset(batch_size=4, image_size=(8, 8))
    assert again is first
    assert later.dataset(batch_size=8) is not first  # other arguments: a dataset of their own
    shuffled = dict(batch_size=4, shuffle=True, seed=1, epoch=1)
    assert later.dataset(**shuffled) is not later.dataset(**shuffled)  # training data: a new one each epoch
    fresh = make_dataset(entry, image_size=(8, 8), batch_size=4)
    for _ in range(2):  # a second pass over the kept dataset streams the same batches again
        pairs = list(zip(batches(again), batches(fresh), strict=True))
        assert len(pairs) == 6
        for (xa, ya), (xb, yb) in pairs:
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
