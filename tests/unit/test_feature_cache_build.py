"""The feature cache's build: batches sized by a memory budget, rows written batch by batch, a progress bar."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

keras = pytest.importorskip("keras")

from tl_ray import feature_cache as features  # noqa: E402
from tl_ray import store as storage  # noqa: E402
from tl_ray.data import writer  # noqa: E402
from tl_ray.data.manifest import read_manifest  # noqa: E402
from tl_ray.data.reader import load_rows  # noqa: E402
from tl_ray.errors import ConfigError  # noqa: E402
from tl_ray.spec import validate  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_session():
    yield
    keras.backend.clear_session()


def tiny_model(nested: bool = False):
    """Widest output: the conv's 8 x 8 x 4 floats = 1 KiB per image."""
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    if nested:
        inner_in = keras.Input((8, 8, 3))
        conv = keras.Model(inner_in, conv(inner_in))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv(inputs)))


@pytest.mark.parametrize("nested", [False, True])
def test_batch_size_follows_the_budget(nested):
    model = tiny_model(nested)
    per_image_mib = features.ACTIVATION_FACTOR * 4 * 8 * 8 * 4 / 2**20
    assert features.build_batch_size(model, 10 * per_image_mib, limit=256) == 10
    assert features.build_batch_size(model, 10.9 * per_image_mib, limit=256) == 10
    assert features.build_batch_size(model, 1024, limit=256) == 256  # the limit caps it
    assert features.build_batch_size(model, 1e-9) == 1  # at least one image


def test_batch_size_of_a_nested_layer_built_for_any_image_size():
    """A nested model on inputs of any size (as the preprocessing of caffe-mode backbones is) counts as wide as
    the model's input; the rest is measured as before."""
    inputs = keras.Input((8, 8, 3))
    any_size = keras.Input((None, None, 3))
    shift = keras.Model(any_size, keras.layers.Rescaling(1.0, offset=-1.0)(any_size))
    conv = keras.layers.Conv2D(4, 3, padding="same")(shift(inputs))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv))
    per_image_mib = features.ACTIVATION_FACTOR * 4 * 8 * 8 * 4 / 2**20
    assert features.build_batch_size(model, 10 * per_image_mib, limit=256) == 10


@pytest.mark.parametrize("budget", [0, -1, True, "1024"])
def test_batch_size_refuses_a_bad_budget(budget):
    with pytest.raises(ConfigError, match=f"positive number of MiB. Received: {budget!r}"):
        features.build_batch_size(tiny_model(), budget)


@pytest.fixture(scope="module")
def spec(tmp_path_factory, fashion_dir):
    from tl_ray.data.ingest import ingest_fashion_mnist

    root = tmp_path_factory.mktemp("store")
    ingest_fashion_mnist(str(root / "datasets/train"), path=str(fashion_dir), classes=[0, 1, 7], per_class=7,
                         rows_per_shard=8)  # 21 rows in shards of 8, 8 and 5
    return validate({
        "name": "cache-build", "storage": str(root),
        "data": {"train": "datasets/train", "image_size": [32, 32]},
        "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "none",
                  "freeze": {"mode": "feature_extraction"}},
    })


def build(spec, monkeypatch, batch: int):
    """Builds the entry anew with ``batch`` images per batch; returns its rows and its manifest."""
    monkeypatch.setattr(features, "build_batch_size", lambda model, budget_mib: batch)
    features.purge(spec.storage)
    entry = features.ensure_features(spec, spec.resolve(spec.data.train), None, log=lambda *a: None)
    assert entry.status == "built"
    return load_rows(entry.uri)


def test_rows_written_batch_by_batch_equal_one_batch(spec, monkeypatch):
    x_one, y_one, one = build(spec, monkeypatch, 256)
    x_three, y_three, three = build(spec, monkeypatch, 3)  # batches straddle the shards' ends
    source = read_manifest(spec.resolve(spec.data.train))
    assert [s.rows for s in three.shards] == [s.rows for s in one.shards] == [s.rows for s in source.shards]
    np.testing.assert_array_equal(y_three, y_one)
    np.testing.assert_allclose(x_three, x_one, rtol=1e-4, atol=1e-5)
    first = storage.join(spec.storage, features.CACHE_DIR)
    entry = storage.join(first, storage.list_dir(first)[0], three.shards[0].path)
    assert pq.ParquetFile(entry).metadata.num_row_groups == 3  # 3 + 3 + 2 rows: one row group per write


def test_progress_bar_counts_every_image(spec, monkeypatch):
    bars = []

    class Recorder(writer.Progress):
        def __init__(self, total, desc, initial=0, enabled=True):
            super().__init__(total, desc, initial, enabled=False)
            bars.append(self)

    monkeypatch.setattr(writer, "Progress", Recorder)
    build(spec, monkeypatch, 4)
    assert [(bar.total, bar.n) for bar in bars] == [(21, 21)]


def test_a_cut_backbone_has_its_own_entry_of_its_own_width(spec, monkeypatch):
    monkeypatch.setattr(features, "build_batch_size", lambda model, budget_mib: 256)
    data = spec.resolve(spec.data.train)
    cut = validate({**spec.to_dict(), "model": {**spec.to_dict()["model"], "feature_layer": "block_13_expand_relu"}})
    assert "feature_layer" not in features.feature_key(spec, data, None)  # older entries keep their key
    assert features.key_id(features.feature_key(cut, data, None)) != features.key_id(features.feature_key(spec, data, None))
    x, _, _ = load_rows(features.ensure_features(cut, data, None, log=lambda *a: None).uri)
    assert x.shape[1] == 192  # block_13_expand_relu's channels at alpha 0.35, pooled


def test_a_builder_whose_lease_was_taken_over_stops_and_leaves_the_new_holders_lease(spec, monkeypatch):
    """A builder too slow to renew its lease finds it taken over at its next shard: it stops rather than build
    beside the new holder, waits for that holder, and takes over in turn once the holder goes stale."""
    monkeypatch.setattr(features, "STALE_S", 0.0)
    monkeypatch.setattr(features, "build_batch_size", lambda model, budget_mib: 256)
    renew, taken = storage.Lease.renew, []

    def renew_after_a_takeover(lease, info):
        if not taken:  # a waiter broke the lease and took it
            taken.append(lease.uri)
            storage.write_text(lease.uri, '{"host": "other", "pid": 1, "rows": 0}')
        renew(lease, info)

    monkeypatch.setattr(storage.Lease, "renew", renew_after_a_takeover)
    features.purge(spec.storage)
    lines = []
    entry = features.ensure_features(spec, spec.resolve(spec.data.train), None, log=lines.append)
    assert entry.status == "built" and len(taken) == 1
    assert any("_building.json: lease lost" in line and "waiting for its new builder" in line for line in lines)
    assert any("stopped refreshing its lock; taking over" in line for line in lines)
    assert read_manifest(entry.uri).num_rows == 21
    assert not storage.exists(storage.join(entry.uri, features.LOCK_NAME))
