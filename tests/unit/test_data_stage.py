"""Ingest to a local folder and stream it back, in both formats: every row, every worker split, every failure named."""

import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tl_ray import store
from tl_ray.data import ingest as ingest_module
from tl_ray.data.ingest import ingest_fashion_mnist, ingest_folder
from tl_ray.data.manifest import has_manifest, read_manifest, write_manifest
from tl_ray.data.reader import batches, make_dataset, worker_rows
from tl_ray.errors import ConfigError, DataError
from tl_ray.spec import AugmentSpec

from synthetic_data import CLASSES, make_image_folder, row_ids

SIZE = (6, 5)
N = 30
FORMATS = ["parquet", "tfrecord"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return str(root), make_image_folder(root, per_class=N // len(CLASSES), size=SIZE)


@pytest.fixture(scope="module")
def dataset_of(folder, tmp_path_factory):
    """``dataset_of(rows_per_shard, fmt)``: the synthetic folder ingested with that shard size (cached)."""
    made = {}

    def make(rows_per_shard: int, fmt: str = "parquet") -> str:
        if (rows_per_shard, fmt) not in made:
            to = str(tmp_path_factory.mktemp("ds") / f"r{rows_per_shard}-{fmt}")
            ingest_folder(folder[0], to, rows_per_shard=rows_per_shard, format=fmt)
            made[rows_per_shard, fmt] = to
        return made[rows_per_shard, fmt]

    return make


def read_all(uri, **kwargs):
    kwargs.setdefault("image_size", SIZE)
    kwargs.setdefault("batch_size", 4)
    images, labels = [], []
    for x, y in batches(make_dataset(uri, **kwargs)):
        images.append(x.numpy())
        labels.append(y.numpy())
    if not images:
        return [], np.zeros(0, np.int32), np.zeros((0, *SIZE, 3), np.float32)
    images, labels = np.concatenate(images), np.concatenate(labels)
    return row_ids(images), labels, images


@pytest.mark.parametrize("fmt", FORMATS)
def test_folder_round_trip_every_row(folder, dataset_of, fmt):
    _, expected = folder
    uri = dataset_of(7, fmt)
    manifest = read_manifest(uri)
    assert manifest.format == fmt and manifest.shards[0].path == f"part-00000.{fmt}"
    assert manifest.class_names == CLASSES
    assert manifest.image_shape == [SIZE[0], SIZE[1], 1]
    assert manifest.num_rows == N and len(manifest.shards) == 5
    ids, labels, images = read_all(uri)
    assert sorted(ids) == list(range(N))
    assert labels.dtype == np.int32 and images.dtype == np.float32 and images.shape == (N, *SIZE, 3)
    for row_id, label, image in zip(ids, labels, images):
        assert label == expected[row_id][0]
        for c in range(3):
            np.testing.assert_array_equal(image[..., c], expected[row_id][1].astype(np.float32))


def test_shards_mix_classes_and_report_counts(folder, tmp_path):
    report = ingest_folder(folder[0], str(tmp_path / "ds"), rows_per_shard=10)
    assert report["train"]["rows"] == N and report["train"]["shards"] == 3
    assert report["train"]["class_counts"] == {c: 10 for c in CLASSES}
    _, labels, _ = read_all(str(tmp_path / "ds"))
    assert len(set(labels[:10].tolist())) > 1


def test_validation_split_is_disjoint_and_reproducible(folder, tmp_path):
    kwargs = dict(validation_fraction=0.2, per_class=5, seed=3)
    first = ingest_folder(folder[0], str(tmp_path / "a"), validation_to=str(tmp_path / "av"), **kwargs)
    again = ingest_folder(folder[0], str(tmp_path / "b"), validation_to=str(tmp_path / "bv"), **kwargs)
    assert first["train"]["class_counts"] == {c: 5 for c in CLASSES}
    assert first["validation"]["class_counts"] == {c: 2 for c in CLASSES}
    assert first["train"]["digest"] == again["train"]["digest"]
    train_ids, _, _ = read_all(str(tmp_path / "a"))
    val_ids, _, _ = read_all(str(tmp_path / "av"))
    assert len(train_ids) == 15 and len(val_ids) == 6 and not set(train_ids) & set(val_ids)


def test_mixed_formats_are_stored_decodable(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "b").mkdir()
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "src" / "a" / "x.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "src" / "a" / "x.bmp")
    Image.fromarray(rgb).convert("P").save(tmp_path / "src" / "b" / "x.gif")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "src" / "b" / "x.png")
    Image.fromarray(rgb[:8]).convert("L").save(tmp_path / "src" / "b" / "small.JPEG")
    (tmp_path / "src" / "b" / "notes.txt").write_text("not an image; ignored")
    report = ingest_folder(str(tmp_path / "src"), str(tmp_path / "ds"))
    assert report["train"]["class_counts"] == {"a": 2, "b": 3}
    assert read_manifest(str(tmp_path / "ds")).image_shape is None  # sizes differ
    x, y = next(iter(make_dataset(str(tmp_path / "ds"), image_size=(16, 16), batch_size=8)))
    assert x.shape == (5, 16, 16, 3) and sorted(y.numpy().tolist()) == [0, 0, 1, 1, 1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_image_fails_naming_it_and_a_rerun_resumes(tmp_path, monkeypatch, fmt):
    src = tmp_path / "src"
    make_image_folder(src, per_class=4)
    (src / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    written = []
    real_write = store.write_bytes
    monkeypatch.setattr(store, "write_bytes", lambda uri, data: (written.append(uri), real_write(uri, data)))
    to = tmp_path / "ds"
    with pytest.raises(DataError, match=r"broken\.png.*cannot be decoded.*skip_bad"):
        ingest_folder(str(src), str(to), rows_per_shard=1, seed=1, format=fmt)
    first_shards = [u for u in written if u.endswith(fmt)]
    assert first_shards, "the failure should come after some shards were written"
    assert not has_manifest(str(to))  # no dataset, but the finished shards stay for a re-run

    written.clear()
    report = ingest_folder(str(src), str(to), rows_per_shard=1, seed=1, format=fmt, skip_bad=True)
    assert report["skipped"] == [str(src / "dog" / "broken.png")] and report["train"]["rows"] == 12
    assert report["train"]["resumed_shards"] == len(first_shards)
    assert not set(first_shards) & set(written)  # finished shards were verified, not rewritten
    assert "_ingest_progress.json" not in store.list_files(str(to))
    assert len(read_all(str(to))[0]) == 12


def test_existing_dataset_is_refused_unless_overwrite(folder, tmp_path):
    to = str(tmp_path / "ds")
    ingest_folder(folder[0], to, rows_per_shard=4)
    with pytest.raises(DataError, match=r"already holds a dataset.*overwrite=True"):
        ingest_folder(folder[0], to)
    report = ingest_folder(folder[0], to, per_class=2, overwrite=True)
    assert report["train"]["rows"] == 6
    assert store.list_files(to) == ["_manifest.json", "part-00000.parquet"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(per_class=11), DataError, r"class folder .*cat.* has 10 images.*per_class=11"),
        (dict(validation_to="elsewhere"), ConfigError, "validation_to and validation_fraction go together"),
        (dict(validation_to="v", validation_fraction=1.5), ConfigError, "between 0 and 1"),
        (dict(rows_per_shard=0), ConfigError, "rows_per_shard must be a positive integer"),
    ],
)
def test_folder_argument_errors(folder, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        ingest_folder(folder[0], str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists()


def test_missing_source_folder(tmp_path):
    with pytest.raises(DataError, match="holds no class sub-folders"):
        ingest_folder(str(tmp_path / "nope"), str(tmp_path / "ds"))


def copy_of(dataset_of, tmp_path, fmt):
    uri = str(tmp_path / "ds")
    store.upload_dir(dataset_of(7, fmt), uri)
    return uri, tmp_path / "ds" / f"part-00002.{fmt}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_shard_is_named_with_its_offset(dataset_of, tmp_path, fmt):
    uri, shard = copy_of(dataset_of, tmp_path, fmt)
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(DataError, match=rf"part-00002\.{fmt}' is truncated.*holds 50 bytes.*byte offset 50"):
        read_all(uri)


@pytest.mark.parametrize("fmt", FORMATS)
def test_flipped_byte_is_named_with_its_offset(dataset_of, tmp_path, fmt):
    uri, shard = copy_of(dataset_of, tmp_path, fmt)
    data = bytearray(shard.read_bytes())
    if fmt == "tfrecord":
        data[len(data) // 2] ^= 0x01
        message = r"part-00002\.tfrecord': record \d+ at byte offset \d+ fails its (data|length) CRC32C"
    else:
        data[200] ^= 0x01  # inside the first data page of the image column
        message = r"part-00002\.parquet' is unreadable at row 0 \(row group 0, byte offset \d+\).*(CRC|checksum)"
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=message):
        read_all(uri)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_shard_is_named(dataset_of, tmp_path, fmt):
    uri, _ = copy_of(dataset_of, tmp_path, fmt)
    (tmp_path / "ds" / f"part-00003.{fmt}").unlink()
    with pytest.raises(DataError, match=rf"shard .*part-00003\.{fmt}' is missing"):
        read_all(uri)


@pytest.mark.parametrize(
    "fmt, message",
    [
        ("parquet", r"part-00001\.parquet' holds 7 rows but the manifest says 8"),
        ("tfrecord", r"part-00001\.tfrecord' holds 7 records \(to byte offset \d+\) but the manifest says 8"),
    ],
)
def test_row_count_mismatch_is_named(dataset_of, tmp_path, fmt, message):
    uri, _ = copy_of(dataset_of, tmp_path, fmt)
    manifest = read_manifest(uri)
    manifest.shards[1].rows += 1
    manifest.num_rows += 1
    write_manifest(uri, manifest)
    with pytest.raises(DataError, match=message):
        read_all(uri)


@pytest.mark.parametrize("rows_per_shard, num_workers", [(4, 2), (4, 3), (15, 3), (30, 2), (30, 3)])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
def test_workers_split_every_row_exactly_once(dataset_of, rows_per_shard, num_workers, shuffle, fmt):
    uri = dataset_of(rows_per_shard, fmt)
    seen = []
    for worker in range(num_workers):
        ids, _, _ = read_all(uri, worker_index=worker, num_workers=num_workers, shuffle=shuffle, epoch=1)
        assert len(ids) == worker_rows(read_manifest(uri), worker, num_workers)
        seen += ids
    assert sorted(seen) == list(range(N))


@pytest.mark.parametrize("fmt", FORMATS)
def test_shuffle_is_reproducible_per_epoch(dataset_of, fmt):
    uri = dataset_of(4, fmt)
    order = lambda **kw: read_all(uri, shuffle=True, seed=5, shuffle_buffer=8, **kw)[0]  # noqa: E731
    assert order(epoch=0) == order(epoch=0)
    assert order(epoch=0) != order(epoch=1)
    assert sorted(order(epoch=2)) == list(range(N))
    assert read_all(uri)[0] == read_all(uri)[0]


def test_augment_keeps_shape_and_range_and_is_reproducible(dataset_of):
    uri = dataset_of(7)
    aug = AugmentSpec(flip=True, crop=0.2, contrast=0.3)
    _, _, first = read_all(uri, image_size=(8, 8), augment=aug, seed=1)
    _, _, again = read_all(uri, image_size=(8, 8), augment=aug, seed=1)
    assert first.shape == (N, 8, 8, 3) and first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, again)


def test_options_and_batch_shapes(dataset_of):
    ds = make_dataset(dataset_of(7), image_size=SIZE, batch_size=8, drop_remainder=True, repeat=True)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    assert ds.element_spec[0].shape.as_list() == [8, *SIZE, 3]
    assert ds.element_spec[1].dtype == tf.int32
    with pytest.raises(ConfigError, match="worker_index must be in 0..1"):
        make_dataset(dataset_of(7), image_size=SIZE, batch_size=8, worker_index=2, num_workers=2)
    with pytest.raises(DataError, match="no dataset at"):
        make_dataset("/nonexistent/ds", image_size=SIZE, batch_size=8)


# --- Fashion-MNIST IDX parsing, on a tiny synthetic copy --------------------------------------


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


@pytest.fixture
def tiny_fashion(tmp_path):
    labels = np.repeat(np.arange(10), 4)
    images = np.stack([np.full((28, 28), i, np.uint8) for i in range(len(labels))])
    root = tmp_path / "fm"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte.gz", images, 0x803)
    write_idx(root / "train-labels-idx1-ubyte.gz", labels, 0x801)
    return root, images, labels


def test_fashion_mnist_relabels_and_splits(tiny_fashion, tmp_path):
    root, images, labels = tiny_fashion
    report = ingest_fashion_mnist(
        str(tmp_path / "tr"), path=str(root), classes=[3, 1], per_class=2,
        validation_to=str(tmp_path / "va"), validation_per_class=1, rows_per_shard=3,
    )
    assert report["class_names"] == ["Dress", "Trouser"]
    assert report["train"]["class_counts"] == {"Dress": 2, "Trouser": 2} and report["train"]["shards"] == 2
    train_ids, train_labels, _ = read_all(str(tmp_path / "tr"), image_size=(28, 28))
    val_ids, val_labels, _ = read_all(str(tmp_path / "va"), image_size=(28, 28))
    assert not set(train_ids) & set(val_ids)
    for ids, new_labels in ((train_ids, train_labels), (val_ids, val_labels)):
        assert [[3, 1][k] for k in new_labels] == [int(labels[i]) for i in ids]


def test_fashion_mnist_errors(tiny_fashion, tmp_path):
    root, images, labels = tiny_fashion
    to = str(tmp_path / "ds")
    with pytest.raises(ConfigError, match=r"class ids 0\.\.9.*Received: \[1, 12\]"):
        ingest_fashion_mnist(to, path=str(root), classes=[1, 12])
    with pytest.raises(DataError, match=r"class 1 \(Trouser\) has 4 images.*per_class=5"):
        ingest_fashion_mnist(to, path=str(root), classes=[1], per_class=5)
    with pytest.raises(DataError, match=r"does not exist.*apt-get install dataset-fashion-mnist.*--from PATH"):
        ingest_fashion_mnist(to, path=str(tmp_path / "missing"))
    write_idx(root / "train-labels-idx1-ubyte.gz", labels, 0x803)
    with pytest.raises(DataError, match=r"labels-idx1-ubyte\.gz' has IDX magic number 0x00000803; expected 0x00000801"):
        ingest_fashion_mnist(to, path=str(root))
    assert store.list_files(to) == []


def test_failed_second_dataset_publishes_neither_and_resumes(tiny_fashion, tmp_path, monkeypatch):
    root, _, _ = tiny_fashion
    real_finish = ingest_module.ShardWriter.finish

    def finish(self, end, class_names, source):
        if source["role"] == "validation":
            raise DataError("simulated failure while writing validation")
        return real_finish(self, end, class_names, source)

    kwargs = dict(path=str(root), per_class=2, validation_to=str(tmp_path / "va"), validation_per_class=1,
                  rows_per_shard=4)
    monkeypatch.setattr(ingest_module.ShardWriter, "finish", finish)
    with pytest.raises(DataError, match="simulated"):
        ingest_fashion_mnist(str(tmp_path / "tr"), **kwargs)
    assert not has_manifest(str(tmp_path / "tr")) and not has_manifest(str(tmp_path / "va"))
    monkeypatch.setattr(ingest_module.ShardWriter, "finish", real_finish)
    report = ingest_fashion_mnist(str(tmp_path / "tr"), **kwargs)
    assert report["train"]["resumed_shards"] == report["train"]["shards"] == 5
    assert report["validation"]["resumed_shards"] == 2 and report["validation"]["rows"] == 10


def test_rotation_augment_is_seeded_and_keeps_shape():
    import numpy as np
    import tensorflow as tf

    from tl_ray.data.reader import _augment
    from tl_ray.spec import AugmentSpec

    image = tf.constant(np.arange(32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3) % 255)
    seed = tf.constant([3, 7], tf.int64)
    spec = AugmentSpec(rotation=30.0)
    a = _augment(image, seed, spec, (32, 32)).numpy()
    b = _augment(image, seed, spec, (32, 32)).numpy()
    c = _augment(image, tf.constant([4, 7], tf.int64), spec, (32, 32)).numpy()
    assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    assert not np.allclose(a, image.numpy()) and not np.allclose(a, c)
    assert a.min() >= 0.0 and a.max() <= 255.0
    still = _augment(image, seed, AugmentSpec(rotation=0.0, flip=False), (32, 32)).numpy()
    assert np.array_equal(still, image.numpy())
