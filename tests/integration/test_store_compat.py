"""tl-ray on two S3 API implementations (moto; s3rver, which ignores conditional writes and lists deep folders
only without a delimiter): data round trip, promotion and the models commands, concurrent promotions.
Where a server lacks a feature, tl-ray's refusal is what is asserted. No Ray, no training."""

from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest

from tl_ray import store
from tl_ray.cli import main
from tl_ray.errors import StorageError
from tl_ray.registry.store import Registry

pytestmark = pytest.mark.integration

HONOURS_CONDITIONS = {"moto": True, "s3rver": False}


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.keras").write_bytes(b"weights" * 100)
    return tmp_path / "model"


@pytest.mark.parametrize("fmt", ["parquet", "tfrecord"])
def test_ingest_verify_and_read_back_the_data(any_s3, fashion_dir, capsys, fmt):
    server, root = any_s3
    uri = store.join(root, "datasets", f"fm-{fmt}")
    assert main(["data", "ingest", "fashion-mnist", "--from", str(fashion_dir), "--to", uri, "--classes", "0,1",
                 "--per-class", "20", "--rows-per-shard", "16", "--format", fmt, "--quiet"]) == 0
    assert main(["data", "verify", uri]) == 0
    assert store.read_bytes(store.join(uri, "_manifest.json")).startswith(b"{")  # no upload framing kept
    from tl_ray.data.reader import batches, make_dataset

    rows = sum(len(y) for _, y in batches(make_dataset(uri, image_size=(28, 28), batch_size=16)))
    assert rows == 40
    assert store.list_dir(store.join(root, "datasets")) == ["fm-parquet"] if fmt == "parquet" else ["fm-tfrecord"]
    assert "ok" in capsys.readouterr().out


def test_promotion_and_the_models_commands(any_s3, model_dir, capsys, monkeypatch):
    server, root = any_s3
    registry = Registry(root)
    if not HONOURS_CONDITIONS[server.kind]:
        with pytest.raises(StorageError, match="ignores If-None-Match and If-Match.*TLRAY_STORAGE_LOCKING=lease"):
            registry.publish("fashion", model_dir, {"metrics": {"val_accuracy": 0.9}})
        assert store.list_files(root) == [] and registry.names() == []
        monkeypatch.setenv("TLRAY_STORAGE_LOCKING", "lease")
        registry.publish("fashion", model_dir, {"gate": {"metric": "accuracy", "challenger": 0.9}})
        monkeypatch.delenv("TLRAY_STORAGE_LOCKING")
        capsys.readouterr()
        assert main(["models", "promote", "fashion:v1", "--storage", root]) == 4  # an alias move: refused
        assert "StorageError: the store at" in capsys.readouterr().err and registry.aliases("fashion") == {}
        assert main(["models", "list", "--storage", root]) == 0  # reads need no conditional writes
        assert "fashion  aliases: none" in capsys.readouterr().out
        assert main(["models", "show", "fashion:v1", "--storage", root]) == 0
        return
    for accuracy in (0.8, 0.9):
        version = registry.publish("fashion", model_dir, {"gate": {"metric": "accuracy", "challenger": accuracy}})
    registry.set_alias("fashion", "production", 1)
    capsys.readouterr()
    assert main(["models", "list", "--storage", root]) == 0
    listed = capsys.readouterr().out
    assert "fashion  aliases: production=v1" in listed and "v2" in listed
    assert main(["models", "promote", f"fashion:v{version}", "--storage", root]) == 0
    assert main(["models", "show", "fashion:production", "--storage", root, "-o", "json"]) == 0
    assert '"version": 2' in capsys.readouterr().out
    assert (registry.fetch("fashion:production") / "model.keras").read_bytes() == b"weights" * 100


def test_promotion_under_the_lease_opt_in(any_s3, model_dir, monkeypatch, capsys, tmp_path):
    server, root = any_s3
    monkeypatch.setenv("TLRAY_STORAGE_LOCKING", "lease")
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    registry = Registry(root)
    assert [registry.publish("fashion", model_dir, {}) for _ in range(2)] == [1, 2]
    registry.set_alias("fashion", "production", 2)
    assert (registry.fetch("fashion:production") / "model.keras").read_bytes() == b"weights" * 100
    assert main(["models", "list", "--storage", root]) == 0
    assert "fashion  aliases: production=v2" in capsys.readouterr().out
    lock_used = store.exists(store.join(root, "registry", ".tlray-lock.json"))
    assert not lock_used  # released after each write, whichever way the store was locked


def _promote(env: dict, root: str, src: str, queue) -> None:
    import os

    os.environ.update(env)
    from tl_ray.errors import StorageError
    from tl_ray.registry.store import AliasConflict, Registry

    registry = Registry(root)
    try:
        version = registry.publish("m", src, {"pid": os.getpid()})
    except StorageError as exc:
        queue.put(("refused", str(exc)))
        return
    try:
        registry.set_alias("m", "production", version, expect=None)
        queue.put(("won", version))
    except AliasConflict:
        queue.put(("lost", version))


@pytest.mark.timeout(300)
def test_eight_concurrent_promotions(any_s3, model_dir):
    server, root = any_s3
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_promote, args=(server.env, root, str(model_dir), queue)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    results = [queue.get(timeout=5) for _ in procs]
    registry = Registry(root)
    if HONOURS_CONDITIONS[server.kind]:
        assert sorted(v for _, v in results) == list(range(1, 9)) == registry.versions("m")
        winners = [v for outcome, v in results if outcome == "won"]
        assert len(winners) == 1 and registry.aliases("m") == {"production": winners[0]}
    else:
        assert all(outcome == "refused" and "ignores If-None-Match" in text for outcome, text in results)
        assert registry.versions("m") == [] and store.list_files(root) == []


def test_folders_of_folders_list_on_both_servers(any_s3):
    server, root = any_s3
    for key in ("registry/a/v1/metadata.json", "registry/a/aliases/production.json", "registry/b/v1/x/y.bin",
                "datasets/d/_manifest.json", "top.json"):
        store.write_bytes(store.join(root, key), b"{}")
    assert store.list_dir(root) == ["datasets", "registry", "top.json"]
    assert store.list_dir(store.join(root, "registry")) == ["a", "b"]  # s3rver's delimited answer: nothing
    assert store.list_dir(store.join(root, "registry", "a")) == ["aliases", "v1"]
    assert store.list_files(store.join(root, "registry", "b")) == ["v1/x/y.bin"]


def test_pyarrow_writes_are_plain_bodies(any_s3):
    server, root = any_s3
    fs, path = store.filesystem(store.join(root, "checkpoint", "state.json"))
    with fs.open_output_stream(path) as out:  # as Ray writes checkpoints through store.filesystem
        out.write(b'{"epoch": 3}')
    assert store.read_bytes(store.join(root, "checkpoint", "state.json")) == b'{"epoch": 3}'


def test_a_promotion_is_refused_before_its_evaluation_where_claims_are_unsafe(any_s3, tmp_path):
    from tl_ray.promote import promote_checkpoint
    from tl_ray.spec import Spec

    server, root = any_s3
    spec = Spec.model_validate({"name": "compat", "storage": root, "data": {"train": "datasets/none"},
                                "model": {"backbone": "mobilenet_v2"}, "promote": {"name": "fashion"}})
    if HONOURS_CONDITIONS[server.kind]:
        Registry(root).check_writable()
        return
    with pytest.raises(StorageError, match="ignores If-None-Match"):
        promote_checkpoint(spec, tmp_path / "no-checkpoint")  # refused before it looks at the checkpoint
    assert store.list_files(root) == []


@pytest.mark.timeout(300)
def test_eight_concurrent_promotions_under_the_lease_opt_in(s3rver_server, model_dir):
    env = {**s3rver_server.env, "TLRAY_STORAGE_LOCKING": "lease"}
    root = f"s3://tlray-lease-{uuid.uuid4().hex[:8]}/store"
    with pytest.MonkeyPatch.context() as mp_env:
        for k, v in env.items():
            mp_env.setenv(k, v)
        store.ensure_bucket(root)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_promote, args=(env, root, str(model_dir), queue)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=240)
        results = [queue.get(timeout=5) for _ in procs]
        registry = Registry(root)
        assert sorted(v for _, v in results) == list(range(1, 9)) == registry.versions("m")
        assert [v for outcome, v in results if outcome == "won"] == [registry.aliases("m")["production"]]
