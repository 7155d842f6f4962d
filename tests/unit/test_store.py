"""The store on a local folder: atomic publication, conditional writes, leases, errors, retry policy."""

import json
import os

import pytest

from tl_ray import store
from tl_ray.errors import StorageError
from tl_ray.store import lease as lease_module


def test_local_errors_are_never_retried():
    assert not store.is_transient("/data/x", OSError("AWS Error NETWORK_CONNECTION"))
    assert store.is_transient("s3://b/x", OSError("AWS Error NETWORK_CONNECTION during GetObject"))
    assert store.is_transient("s3://b/x", OSError("AWS Error SLOW_DOWN during GetObject operation"))
    assert not store.is_transient("s3://b/x", OSError("AWS Error ACCESS_DENIED during GetObject operation"))
    assert not store.is_transient("s3://b/x", FileNotFoundError("gone"))


def test_a_failed_publication_leaves_neither_the_object_nor_its_scratch(tmp_path):
    dest = tmp_path / "a" / "object.bin"
    with pytest.raises(RuntimeError), store.staging(dest.parent) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert os.listdir(dest.parent) == []
    store.write_bytes(str(dest), b"whole")
    assert dest.read_bytes() == b"whole" and os.listdir(dest.parent) == ["object.bin"]


def test_upload_dir_publishes_a_folder_whole_and_refuses_to_replace_one(tmp_path):
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "src" / "sub" / "x.txt").write_text("x")
    (tmp_path / "src" / "_marker").write_text("m")
    store.upload_dir(tmp_path / "src", str(tmp_path / "out" / "v1"), marker="_marker")
    assert store.list_files(str(tmp_path / "out" / "v1")) == ["_marker", "sub/x.txt"]
    with pytest.raises(StorageError, match="cannot write"):
        store.upload_dir(tmp_path / "src", str(tmp_path / "out" / "v1"))
    assert store.list_dir(str(tmp_path / "out")) == ["v1"]


def test_missing_objects_and_bad_schemes_are_storage_errors_naming_the_uri(tmp_path):
    with pytest.raises(StorageError, match=r"'.*nothing\.bin' does not exist"):
        store.read_bytes(str(tmp_path / "nothing.bin"))
    with pytest.raises(StorageError, match="unsupported scheme"):
        store.exists("gs://bucket/x")
    assert store.list_dir(str(tmp_path / "nothing")) == [] and not store.exists(str(tmp_path / "nothing"))
    (tmp_path / "file.log").write_text("x")
    assert store.list_dir(str(tmp_path / "file.log")) == []  # as on S3: nothing is under a file's name


def test_conditional_writes_on_a_local_folder(tmp_path):
    uri = store.join(str(tmp_path), "cas/object.json")
    assert store.create_exclusive(uri, b"one")
    assert not store.create_exclusive(uri, b"two")
    data, tag = store.read_tagged(uri)
    assert data == b"one"
    assert store.write_if(uri, b"three", tag)
    assert not store.write_if(uri, b"four", tag)
    assert store.read_tagged(uri)[0] == b"three"
    assert not store.delete_if(uri, tag)
    assert store.delete_if(uri, store.read_tagged(uri)[1])
    assert store.read_tagged(uri) == (None, None)
    assert sorted(os.listdir(tmp_path / "cas")) == [".object.json.lock"]


def test_a_lease_has_one_holder_is_broken_once_stale_and_is_then_lost_to_its_old_holder(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(lease_module.time, "monotonic", lambda: clock[0])
    uri = store.join(str(tmp_path), "entry/_building.json")
    holder, waiter = store.Lease(uri, stale_s=10.0), store.Lease(uri, stale_s=10.0)
    assert holder.acquire({"host": "a", "rows": 0}) and not waiter.acquire({"host": "b", "rows": 0})
    assert not waiter.break_if_stale()  # first sight of the holder's lease starts its clock
    clock[0] += 8
    holder.renew({"host": "a", "rows": 5})
    assert json.loads(store.read_text(uri)) == {"host": "a", "rows": 5}
    clock[0] += 8
    assert not waiter.break_if_stale()  # renewed: 8 s since it changed, not 16
    clock[0] += 11
    assert waiter.break_if_stale() and not store.exists(uri)
    assert waiter.acquire({"host": "b", "rows": 0})
    with pytest.raises(store.LeaseLost, match=r"_building.json: lease lost \(a waiter broke it after 10 s"):
        holder.renew({"host": "a", "rows": 9})  # the old holder stops, and leaves the new one's lease alone
    holder.release()
    assert json.loads(store.read_text(uri)) == {"host": "b", "rows": 0}
    waiter.renew({"host": "b", "rows": 3})
    waiter.release()
    assert not store.exists(uri)
    waiter.release()  # nothing left to release


def test_checksums_are_plain_on_a_custom_endpoint_and_the_aws_variables_override(monkeypatch):
    from tl_ray.store import s3

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REQUEST_CHECKSUM_CALCULATION",
              "AWS_RESPONSE_CHECKSUM_VALIDATION"):
        monkeypatch.delenv(k, raising=False)
    assert set(s3.checksum_settings().values()) == {"when_supported"}  # AWS's own endpoint: the SDK default
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert set(s3.checksum_settings().values()) == {"when_required"}
    config = s3.client().meta.config  # made offline: no request is sent
    assert (config.request_checksum_calculation, config.response_checksum_validation) == ("when_required",) * 2
    assert config.retries["total_max_attempts"] == s3.S3_MAX_ATTEMPTS and config.connect_timeout == s3.S3_CONNECT_TIMEOUT_S
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_SUPPORTED")
    assert s3.client().meta.config.request_checksum_calculation == "when_supported"
    monkeypatch.setenv("AWS_RESPONSE_CHECKSUM_VALIDATION", "always")
    with pytest.raises(StorageError, match=r"AWS_RESPONSE_CHECKSUM_VALIDATION must be one of \['when_supported', "
                                           r"'when_required'\]. Received: 'always'"):
        s3.client()


def test_a_read_back_mismatch_is_explained_with_its_fix(monkeypatch):
    from tl_ray.store.readback import diagnose

    sent = b'{"format": "parquet"}'
    framed = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc64nvme:GXgl9eCR2W0=\r\n\r\n" % (len(sent), sent)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    assert "kept the aws-chunked framing" in diagnose(sent, framed)
    assert "Set AWS_REQUEST_CHECKSUM_CALCULATION=when_required" in diagnose(sent, framed)
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    assert "tl-ray sent a plain body" in diagnose(sent, framed) and "check the proxy" in diagnose(sent, framed)
    assert "has no object there" in diagnose(sent, None)
    assert "holds 3 bytes, 21 were written" in diagnose(sent, b"{}\n")


def test_the_locking_setting_is_checked(monkeypatch):
    monkeypatch.setenv("TLRAY_STORAGE_LOCKING", "lease")
    assert store.locking_setting() == "lease"
    monkeypatch.setenv("TLRAY_STORAGE_LOCKING", "leases")
    with pytest.raises(StorageError, match=r"TLRAY_STORAGE_LOCKING must be one of \['conditional', 'lease'\]. "
                                           r"Received: 'leases'"):
        store.locking_setting()


def test_the_spec_locking_wins_over_the_variable(monkeypatch):
    monkeypatch.setenv("TLRAY_STORAGE_LOCKING", "conditional")
    try:
        store.use_locking("lease")
        assert store.locking_setting() == "lease"
        store.use_locking(None)  # the spec leaves it unset: the variable decides
        assert store.locking_setting() == "conditional"
        with pytest.raises(StorageError, match=r"storage.locking must be one of \['conditional', 'lease'\]"):
            store.use_locking("fenced")
    finally:
        store.use_locking(None)
