"""The data stage against the S3 API on loopback, in both formats: Fashion-MNIST in, every row back out."""

import hashlib
import socket
from collections import Counter

import numpy as np
import pytest

from tl_ray import store
from tl_ray.data import ingest_fashion_mnist, read_manifest, verify
from tl_ray.data.reader import batches, make_dataset
from tl_ray.data.sources import load_fashion_mnist
from tl_ray.errors import DataError, StorageError
from tl_ray.store import s3

pytestmark = pytest.mark.integration

CLASSES = [0, 1, 9]


def fingerprint(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def read_rows(uri: str, **kwargs) -> list[tuple[str, int]]:
    rows = []
    for x, y in batches(make_dataset(uri, image_size=(28, 28), batch_size=32, **kwargs)):
        x = x.numpy()
        assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()  # grey -> RGB
        rows += [(fingerprint(img[..., 0]), int(label)) for img, label in zip(x, y.numpy())]
    return rows


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_fashion_mnist_round_trip_through_s3(s3_store, fashion_dir, fmt):
    train, val = store.join(s3_store, "datasets/fm-train"), store.join(s3_store, "datasets/fm-val")
    report = ingest_fashion_mnist(
        train, path=str(fashion_dir), classes=CLASSES, per_class=40,
        validation_to=val, validation_per_class=10, rows_per_shard=50, format=fmt, workers=4,
    )
    assert report["class_names"] == ["T-shirt/top", "Trouser", "Ankle boot"] and report["format"] == fmt
    assert read_manifest(train).format == fmt
    assert report["train"]["rows"] == 120 and report["train"]["shards"] == 3
    assert report["validation"]["rows"] == 30
    assert verify(train) == [] and verify(val) == []
    assert read_manifest(train).image_shape == [28, 28, 1]
    assert read_manifest(train).digest == report["train"]["digest"]

    images, labels = load_fashion_mnist(str(fashion_dir), "train")
    available = Counter(
        (fingerprint(img), CLASSES.index(int(lab))) for img, lab in zip(images, labels) if lab in CLASSES
    )
    train_rows, val_rows = read_rows(train), read_rows(val)
    assert Counter(label for _, label in train_rows) == {0: 40, 1: 40, 2: 40}
    assert Counter(label for _, label in val_rows) == {0: 10, 1: 10, 2: 10}
    # Every row is a Fashion-MNIST image of its class, pixel for pixel; train and validation never share one.
    used = Counter(train_rows) + Counter(val_rows)
    assert all(available[row] >= n for row, n in used.items())

    for workers in (2, 3, 4):  # fewer, as many and more workers than the 3 shards
        union = sum((read_rows(train, worker_index=i, num_workers=workers, shuffle=True) for i in range(workers)), [])
        assert Counter(union) == Counter(train_rows)


def test_existing_s3_dataset_is_refused(s3_store, fashion_dir):
    to = store.join(s3_store, "datasets/small")
    ingest_fashion_mnist(to, path=str(fashion_dir), classes=[2], per_class=5)
    with pytest.raises(DataError, match="already holds a dataset"):
        ingest_fashion_mnist(to, path=str(fashion_dir), classes=[2], per_class=5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def test_unreachable_bucket_raises_storage_error(monkeypatch, s3_server):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    s3.arrow_filesystem.cache_clear()
    try:
        uri = "s3://tlray-unreachable/store/datasets/x"
        with pytest.raises(StorageError, match="tlray-unreachable"):
            ingest_fashion_mnist(uri, classes=[0], per_class=5)
        with pytest.raises(StorageError, match="tlray-unreachable"):
            make_dataset(uri, image_size=(28, 28), batch_size=4)
    finally:
        s3.arrow_filesystem.cache_clear()
