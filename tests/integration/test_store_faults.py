"""The storage layer's bad inputs, each one clear StorageError (CLI exit 4) naming the URI and the fix, within
bounded time, nothing half-published. The table of cases and messages is in cluster/README.md (Storage).

The faulty stores are an HTTP proxy in front of moto (``faulty_s3``) and s3rver, which checks signatures."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from faulty_s3 import FaultyS3
from tl_ray import store
from tl_ray.cli import main
from tl_ray.data.manifest import has_manifest
from tl_ray.errors import StorageError
from tl_ray.registry.store import Registry

pytestmark = pytest.mark.integration

BOUND_S = 30.0  # every case fails within this, retries included


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def faulty(s3_server, monkeypatch):
    """The proxy in front of the session's moto, with the environment pointing at it, and a fresh store root."""
    proxy = FaultyS3(s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    root = f"s3://tlray-faults-{uuid.uuid4().hex[:8]}/store"
    store.ensure_bucket(root)
    yield proxy, root
    proxy.close()


def run_cli(argv, capsys) -> tuple[int, str, float]:
    """Exit code, stderr and seconds of one ``tl-ray`` command."""
    capsys.readouterr()
    start = time.monotonic()
    code = main(argv)
    return code, capsys.readouterr().err, time.monotonic() - start


def ingest_args(fashion_dir, uri) -> list[str]:
    return ["data", "ingest", "fashion-mnist", "--from", str(fashion_dir), "--to", uri, "--classes", "0,1",
            "--per-class", "8", "--rows-per-shard", "8", "--quiet"]


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.keras").write_bytes(b"weights")
    return tmp_path / "model"


def test_unreachable_endpoint(s3_server, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    code, err, seconds = run_cli(["models", "list", "--storage", "s3://tlray-nowhere/store"], capsys)
    assert code == 4 and seconds < BOUND_S
    assert "cannot list 's3://tlray-nowhere/store/registry' on http://127.0.0.1:" in err
    assert "the endpoint does not answer" in err and "Check AWS_ENDPOINT_URL" in err


def test_wrong_credentials(s3rver_server, monkeypatch, capsys):
    for k, v in s3rver_server.env.items():
        monkeypatch.setenv(k, v)
    root = f"s3://tlray-creds-{uuid.uuid4().hex[:8]}/store"
    store.ensure_bucket(root)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOT-A-KEY")  # s3rver checks the key id (not a v4 signature)
    code, err, seconds = run_cli(["models", "list", "--storage", root], capsys)
    assert code == 4 and seconds < BOUND_S
    assert f"cannot list '{root}/registry'" in err and "the credentials were refused" in err


def test_missing_bucket(s3_server, capsys):
    code, err, _ = run_cli(["models", "list", "--storage", "s3://tlray-no-such-bucket/store"], capsys)
    assert code == 4
    assert "bucket 'tlray-no-such-bucket' does not exist. Create it, or fix the bucket in the storage URI" in err


def test_bucket_without_write_permission(faulty, fashion_dir, capsys):
    proxy, root = faulty
    proxy.deny_writes = True
    uri = store.join(root, "datasets", "fm")
    code, err, seconds = run_cli(ingest_args(fashion_dir, uri), capsys)
    assert code == 4 and seconds < BOUND_S
    assert f"cannot write '{uri}/part-00000.parquet'" in err and "access denied. Grant these credentials" in err
    proxy.deny_writes = False
    assert not has_manifest(uri)


def test_a_folder_marker_where_a_file_belongs(s3_server, s3_store, capsys):
    uri = store.join(s3_store, "datasets", "fm")
    from tl_ray.store import s3

    bucket, key = s3.bucket_key(uri)
    s3.client().put_object(Bucket=bucket, Key=f"{key}/_manifest.json/", Body=b"")  # as a console's "new folder"
    s3.client().put_object(Bucket=bucket, Key=f"{s3.bucket_key(s3_store)[1]}/registry/", Body=b"")
    code, err, _ = run_cli(["data", "verify", uri], capsys)
    assert code == 4 and f"'{uri}/_manifest.json' is a folder" in err and "delete the folder-marker object" in err
    assert Registry(s3_store).names() == [] and store.list_files(uri) == []  # markers are no files


def test_intermittent_503s_are_retried_and_persistent_ones_fail_in_bounded_time(faulty, model_dir, capsys):
    proxy, root = faulty
    registry = Registry(root)
    proxy.fail_next = [503, 500, 503]
    assert registry.publish("m", model_dir, {}) == 1  # retried with backoff, within the client's attempts
    proxy.fail_next = [503] * 100
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"kept failing \(SlowDown\) through 4 attempts with backoff"):
        registry.versions("m")
    assert time.monotonic() - start < BOUND_S
    proxy.fail_next = []
    assert registry.versions("m") == [1]


def test_an_object_changed_between_listing_and_reading(faulty, model_dir, tmp_path, monkeypatch):
    proxy, root = faulty
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    registry = Registry(root)
    registry.publish("m", model_dir, {})
    proxy.replace_before_get = {"/v1/model.keras": b"a concurrent writer's bytes"}
    with pytest.raises(StorageError, match=r"cannot read '.*/registry/m/v1/model.keras'.*the object changed while "
                                           r"it was being read"):
        registry.fetch("m:v1")
    assert not list((tmp_path / "cache").rglob("model.keras"))


def test_a_store_keeping_upload_framing_publishes_no_dataset(faulty, fashion_dir, capsys, monkeypatch):
    proxy, root = faulty
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")  # the SDKs' own default
    proxy.frame_puts_to = "_manifest.json"
    uri = store.join(root, "datasets", "fm")
    code, err, _ = run_cli(ingest_args(fashion_dir, uri), capsys)
    assert code == 4 and f"'{uri}/_manifest.json' did not read back as written" in err
    assert "kept the aws-chunked framing" in err and "Set AWS_REQUEST_CHECKSUM_CALCULATION=when_required" in err
    assert "nothing was published" in err and not has_manifest(uri)


def test_a_store_keeping_upload_framing_publishes_no_version(faulty, model_dir):
    proxy, root = faulty
    proxy.frame_puts_to = "metadata.json"
    registry = Registry(root)
    with pytest.raises(StorageError, match="metadata.json' did not read back as written.*aws-chunked framing"):
        registry.publish("m", model_dir, {})
    proxy.frame_puts_to = None
    assert registry.versions("m") == [] and store.list_files(registry.version_uri("m", 1)) == []
