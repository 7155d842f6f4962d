"""A real S3 API server process stopped in the middle of an epoch: restarted, the epoch is still exact; gone, StorageError.

moto keeps objects in memory, so a restarted moto would come back empty, which is not
what a restarted object store does. The server here is moto started by a small wrapper
that first loads the bucket contents from a snapshot on disk (taken from the live
server before it is killed) and then serves on the same port: a store whose data
survives a restart, as MinIO's or S3's does. Nothing is uploaded while the reader runs.
"""

import logging
import os
import socket
import subprocess
import sys
import threading
from collections import Counter

import boto3
import numpy as np
import pytest

from tl_ray import store as storage
from tl_ray.data import shards as shard_io
from tl_ray.data.ingest import ingest_fashion_mnist
from tl_ray.data.reader import batches, make_dataset
from tl_ray.errors import StorageError
from tl_ray.store import files

pytestmark = pytest.mark.integration

SEEDED_MOTO = r"""
import sys
from pathlib import Path

from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import main

snapshot, port = Path(sys.argv[1]), sys.argv[2]
backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
for bucket in sorted(p for p in snapshot.iterdir() if p.is_dir()):
    backend.create_bucket(bucket.name, "us-east-1")
    for f in sorted(q for q in bucket.rglob("*") if q.is_file()):
        backend.put_object(bucket.name, f.relative_to(bucket).as_posix(), f.read_bytes())
main(["-H", "127.0.0.1", "-p", port])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PersistentS3Server:
    """moto on a fixed loopback port whose buckets survive ``stop()`` / ``start()`` through a disk snapshot."""

    def __init__(self, snapshot_dir):
        self.port = free_port()
        self.snapshot_dir = snapshot_dir
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SEEDED_MOTO, str(self.snapshot_dir), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        while True:  # until the port accepts connections, or the process died
            if self.proc.poll() is not None:
                raise RuntimeError(f"seeded moto exited with code {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                threading.Event().wait(0.05)  # poll interval of the condition above

    def snapshot(self) -> None:
        """Copies every bucket to the snapshot folder (the store's 'disk')."""
        client = boto3.client("s3", endpoint_url=self.endpoint)
        for bucket in client.list_buckets()["Buckets"]:
            storage.download_dir(f"s3://{bucket['Name']}", self.snapshot_dir / bucket["Name"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def store(s3_server, tmp_path_factory):
    """A persistent S3 server of this module's own (the session's server is never stopped here)."""
    snapshot = tmp_path_factory.mktemp("s3-disk")
    server = PersistentS3Server(snapshot)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", server.endpoint)
        storage.ensure_bucket("s3://tlray-faults/x")
        yield server
    server.stop()


@pytest.fixture(scope="module")
def datasets(store, fashion_dir):
    out = {}
    for fmt in ("parquet", "tfrecord"):
        out[fmt] = f"s3://tlray-faults/datasets/fm-{fmt}"
        ingest_fashion_mnist(out[fmt], path=str(fashion_dir), classes=[0, 1, 7], per_class=200,
                             rows_per_shard=50, format=fmt)
    return out


def fingerprints(x, y) -> list[tuple[bytes, int]]:
    return [(img.astype(np.uint8).tobytes(), int(label)) for img, label in zip(x.numpy(), y.numpy())]


def dataset(uri):
    return make_dataset(uri, image_size=(28, 28), batch_size=16, shuffle=True, shuffle_buffer=16, seed=1)


class RetrySeen(logging.Handler):
    """Sets ``event`` when the reader logs that it is retrying a read."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.event = threading.Event()

    def emit(self, record):
        if "retrying read" in record.getMessage():
            self.event.set()


@pytest.fixture
def retry_seen():
    handler = RetrySeen()
    logging.getLogger("tl_ray.store").addHandler(handler)
    yield handler.event
    logging.getLogger("tl_ray.store").removeHandler(handler)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_server_restarted_mid_epoch_still_gives_an_exact_epoch(store, datasets, retry_seen, monkeypatch, fmt):
    monkeypatch.setattr(shard_io, "READ_CHUNK_BYTES", 8 << 10)  # many ranged reads per shard
    expected = Counter(row for x, y in batches(dataset(datasets[fmt])) for row in fingerprints(x, y))
    assert sum(expected.values()) == 600

    rows, it = [], batches(dataset(datasets[fmt]))
    for _ in range(3):
        rows += fingerprints(*next(it))
    store.snapshot()
    store.stop()
    restarted = threading.Event()

    def restart_once_the_reader_noticed():
        retry_seen.wait(timeout=120)  # the reader hit the dead server and is backing off
        store.start()
        restarted.set()

    helper = threading.Thread(target=restart_once_the_reader_noticed, daemon=True)
    helper.start()
    try:
        for x, y in it:
            rows += fingerprints(x, y)
    finally:
        helper.join()
    assert retry_seen.is_set() and restarted.is_set()
    assert len(rows) == 600 and Counter(rows) == expected  # nothing lost, nothing twice


@pytest.mark.timeout(300)
@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_server_gone_for_good_is_a_storage_error_naming_the_shard(store, datasets, monkeypatch, fmt):
    monkeypatch.setattr(shard_io, "READ_CHUNK_BYTES", 8 << 10)
    monkeypatch.setattr(files, "READ_RETRY_TIMEOUT_S", 2.0)
    it = batches(dataset(datasets[fmt]))
    next(it)
    store.snapshot()
    store.stop()
    try:
        with pytest.raises(StorageError, match=rf"cannot read 's3://tlray-faults/datasets/fm-{fmt}/part-000\d\d\.{fmt}'"):
            for _ in it:
                pass
    finally:
        store.start()  # back, with its data, for the next test
