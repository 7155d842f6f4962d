"""The registry on the S3 API (moto's server on loopback): concurrent promotions from separate processes,
and tamper checks. No Ray."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tl_ray.errors import RegistryError

pytestmark = pytest.mark.integration


def _promote_in_process(store: str, src: str, queue) -> None:
    """A separate interpreter: publish, then try to create production (a first promotion)."""
    from tl_ray.registry.store import AliasConflict, Registry

    registry = Registry(store)
    version = registry.publish("m", src, {"metrics": {"pid": os.getpid()}})
    try:
        registry.set_alias("m", "production", version, expect=None)
        queue.put((version, True))
    except AliasConflict:
        queue.put((version, False))


def test_two_processes_promoting_at_once_get_two_versions_and_one_production(s3_store, tmp_path):
    from tl_ray.registry.store import Registry

    srcs = []
    for i in range(2):
        (tmp_path / f"src{i}").mkdir()
        (tmp_path / f"src{i}" / "model.keras").write_text(f"model {i}")
        srcs.append(str(tmp_path / f"src{i}"))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_promote_in_process, args=(s3_store, src, queue)) for src in srcs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in procs)
    registry = Registry(s3_store)
    assert [v for v, _ in results] == [1, 2] == registry.versions("m")
    winners = [v for v, won in results if won]
    assert len(winners) == 1 and registry.aliases("m") == {"production": winners[0]}


def test_concurrent_alias_moves_on_s3_lose_no_update(s3_store, tmp_path):
    from tl_ray.registry.store import Registry

    registry = Registry(s3_store)
    (tmp_path / "model.keras").write_text("x")
    versions = [registry.publish("m", tmp_path, {}) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda v: registry.set_alias("m", "staging", v), versions))
    history = registry.alias_history("m", "staging") + [registry.aliases("m")["staging"]]
    assert sorted(history) == versions


def test_tampered_object_on_s3_is_refused(s3_store, tmp_path, monkeypatch):
    from tl_ray import store
    from tl_ray.registry.store import Registry

    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    registry = Registry(s3_store)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.keras").write_text("weights")
    registry.publish("m", tmp_path / "src", {})
    store.write_bytes(store.join(registry.version_uri("m", 1), "model.keras"), b"swapped")
    with pytest.raises(RegistryError, match="file 'model.keras' does not match its sha256"):
        registry.fetch("m:v1")
    assert not any(Path(tmp_path / "cache").rglob("model.keras"))  # nothing left to load by mistake
