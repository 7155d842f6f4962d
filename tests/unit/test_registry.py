"""The registry on a local folder: race-free versions and aliases, the promotion gate, tamper
checks and the `tl-ray models` commands. No Ray. (S3: tests/integration/test_registry.py.)"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tl_ray.errors import RegistryError
from tl_ray.registry.store import AliasConflict, Registry

from synthetic_data import make_image_folder

SIZE = (8, 8)


def model_file(folder: Path, good: bool) -> Path:
    """A model.keras that classifies make_image_folder's images by brightness (good) or always says 'cat'."""
    import keras

    inputs = keras.Input((*SIZE, 3), dtype="float32")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, dense(x))
    # cat < 0.3 < dog < 0.6 < emu in mean brightness; logits 0, 20x-6, 40x-18 split them there.
    kernel = np.tile(np.array([[0.0, 20 / 3, 40 / 3]]), (3, 1)) if good else np.zeros((3, 3))
    bias = np.array([0.0, -6.0, -18.0]) if good else np.array([1.0, 0.0, 0.0])
    dense.set_weights([kernel.astype("float32"), bias.astype("float32")])
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tl_ray.data.ingest import ingest_folder

    root = tmp_path_factory.mktemp("store")
    images = tmp_path_factory.mktemp("images")
    make_image_folder(images, per_class=10)
    ingest_folder(str(images), str(root / "datasets/train"), validation_to=str(root / "datasets/val"),
                  validation_fraction=0.3, seed=0)
    ingest_folder(str(images), str(root / "datasets/holdout"), seed=1)
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"good": model_file(root / "good", True), "bad": model_file(root / "bad", False)}


def spec_for(store: Path, name: str, **promote):
    from tl_ray.spec import validate

    return validate({
        "name": name,
        "storage": str(store),
        "data": {"train": "datasets/train", "validation": "datasets/val", "image_size": list(SIZE)},
        "model": {"backbone": "mobilenet_v2", "weights": "none"},
        "promote": {"name": name, **promote},
    })


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))


def publish_dummy(registry: Registry, name: str, tmp: Path, text: str = "x") -> int:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.keras").write_text(text)
    return registry.publish(name, tmp, {"metrics": {"acc": len(text)}})


# -- versions and aliases -----------------------------------------------------------
def test_concurrent_publications_get_distinct_versions(tmp_path):
    registry = Registry(str(tmp_path / "store"))
    with ThreadPoolExecutor(8) as pool:
        versions = list(pool.map(lambda i: publish_dummy(registry, "m", tmp_path / f"src{i}", "x" * (i + 1)), range(8)))
    assert sorted(versions) == list(range(1, 9))
    assert registry.versions("m") == list(range(1, 9))


def test_only_one_of_two_first_promotions_creates_the_alias(tmp_path):
    registry = Registry(str(tmp_path / "store"))
    v1, v2 = publish_dummy(registry, "m", tmp_path / "a"), publish_dummy(registry, "m", tmp_path / "b")
    start = threading.Barrier(2)

    def first(version):
        start.wait()
        try:
            registry.set_alias("m", "production", version, expect=None)
            return version
        except AliasConflict:
            return None

    with ThreadPoolExecutor(2) as pool:
        winners = [w for w in pool.map(first, (v1, v2)) if w is not None]
    assert len(winners) == 1
    assert registry.aliases("m") == {"production": winners[0]}
    assert registry.alias_history("m", "production") == []


def test_concurrent_alias_moves_lose_no_update(tmp_path):
    registry = Registry(str(tmp_path / "store"))
    versions = [publish_dummy(registry, "m", tmp_path / f"s{i}") for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda v: registry.set_alias("m", "staging", v), versions))
    history = registry.alias_history("m", "staging") + [registry.aliases("m")["staging"]]
    assert sorted(history) == versions  # every move is in the history exactly once


def test_rollback_and_other_aliases(tmp_path):
    registry = Registry(str(tmp_path / "store"))
    v1, v2 = publish_dummy(registry, "m", tmp_path / "a"), publish_dummy(registry, "m", tmp_path / "b")
    registry.set_alias("m", "production", v1)
    registry.set_alias("m", "production", v2)
    registry.set_alias("m", "canary", v2)
    assert registry.rollback("m", "production") == v1
    assert registry.aliases("m") == {"production": v1, "canary": v2}
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback("m", "canary")
    assert registry.delete_alias("m", "canary", expect=v2)
    assert registry.aliases("m") == {"production": v1}


def test_tampered_file_is_refused_and_named(tmp_path):
    registry = Registry(str(tmp_path / "store"))
    src = tmp_path / "src"
    (src / "saved_model").mkdir(parents=True)
    (src / "saved_model" / "weights.bin").write_bytes(b"abc")
    (src / "model.keras").write_bytes(b"model")
    registry.publish("m", src, {})
    (tmp_path / "store/registry/m/v1/saved_model/weights.bin").write_bytes(b"abd")
    with pytest.raises(RegistryError, match=r"refusing to load m:v1: file 'saved_model/weights.bin' does not match"):
        registry.fetch("m:v1")


# -- the gate -------------------------------------------------------------------------
def test_gate_accepts_a_better_model_and_refuses_a_worse_one(store, checkpoints):
    from tl_ray.promote import promote_checkpoint

    spec = spec_for(store, "gated", holdout="datasets/holdout", min_delta=0.05)
    first = promote_checkpoint(spec, checkpoints["bad"])
    assert first.accepted and first.champion is None
    better = promote_checkpoint(spec, checkpoints["good"])
    assert better.accepted and better.challenger > better.champion + 0.05, better.message()
    worse = promote_checkpoint(spec, checkpoints["bad"])
    assert not worse.accepted and "NOT promoted" in worse.message() and "min_delta" in worse.reason
    registry = Registry(str(store))
    assert registry.aliases("gated") == {"production": better.version}
    gate = registry.metadata("gated", worse.version)["gate"]
    assert gate["accepted"] is False and gate["champion_version"] == better.version
    assert gate["dataset"].endswith("datasets/holdout")
    assert gate["challenger"] == pytest.approx(worse.challenger) and gate["champion"] == pytest.approx(better.challenger)


def test_gate_refuses_a_slower_model(store, checkpoints):
    from tl_ray.promote import promote_checkpoint

    # A ratio no real model can meet: the challenger must be 1.0x the champion's p50 or faster, and equal
    # models measured interleaved land on both sides of 1.0; the check itself is what is under test.
    spec = spec_for(store, "latency", holdout="datasets/holdout", max_latency_ratio=1.0, latency_repeats=5)
    promote_checkpoint(spec, checkpoints["bad"])
    result = promote_checkpoint(spec, checkpoints["good"])
    assert result.latency_ms is not None and result.champion_latency_ms is not None
    assert result.accepted == (result.latency_ms <= result.champion_latency_ms)
    if not result.accepted:
        assert "max_latency_ratio=1.0" in result.reason


def test_gate_falls_back_to_validation_with_a_warning(store, checkpoints):
    from tl_ray.promote import promote_checkpoint

    result = promote_checkpoint(spec_for(store, "fallback"), checkpoints["good"])
    assert result.accepted and "data.validation" in result.message() and "warning:" in result.message()


def test_gate_on_an_empty_dataset_is_a_data_error_and_publishes_nothing(store, checkpoints):
    from tl_ray.data.manifest import Manifest, write_manifest
    from tl_ray.errors import DataError
    from tl_ray.promote import promote_checkpoint

    write_manifest(str(store / "datasets/empty"), Manifest("parquet", 0, ["cat", "dog", "emu"], [8, 8, 3], []))
    spec = spec_for(store, "empty", holdout="datasets/empty")
    with pytest.raises(DataError, match=r"datasets/empty has no examples to evaluate on: ingest a dataset"):
        promote_checkpoint(spec, checkpoints["good"])
    assert Registry(str(store)).versions("empty") == []


def test_two_concurrent_promotions_give_two_versions_and_one_production(store, checkpoints):
    from tl_ray.promote import promote_checkpoint

    spec = spec_for(store, "race", holdout="datasets/holdout")
    start = threading.Barrier(2)

    def promote(_):
        start.wait()
        return promote_checkpoint(spec, checkpoints["good"])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(promote, range(2)))
    registry = Registry(str(store))
    assert sorted(r.version for r in results) == [1, 2] == registry.versions("race")
    # Equal models: whoever moved production first wins; the other is re-gated against it and refused.
    assert sorted(r.accepted for r in results) == [False, True]
    winner = next(r for r in results if r.accepted)
    assert registry.aliases("race") == {"production": winner.version}
    assert registry.alias_history("race", "production") == []


# -- the CLI ----------------------------------------------------------------------------
def test_models_commands(store, checkpoints, capsys):
    from tl_ray.cli import main

    registry = Registry(str(store))
    assert registry.versions("gated"), "runs after the gate test"
    s = ["--storage", str(store)]
    assert main(["models", "promote", "gated:v1", "--alias", "staging", *s]) == 0
    assert main(["models", "list", "gated", *s]) == 0
    out = capsys.readouterr().out
    assert "gated:staging -> v1" in out and "staging=v1" in out and "gate: refused" in out
    assert main(["models", "diff", "gated:v1", "gated:production", "-o", "json", *s]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["a"] == "gated:v1" and diff["b"] == "gated:v2"
    assert diff["gate"]["challenger"][0] < diff["gate"]["challenger"][1]
    assert diff["files_changed"] == ["model.keras"] or "model.keras" in diff["files_changed"]
    assert diff["lineage"] == {"a": ["gated:v1"], "b": ["gated:v2"]}
    assert main(["models", "diff", "gated:v1", "gated:v2", *s]) == 0
    assert "[lineage]" in capsys.readouterr().out
    assert main(["models", "rollback", "gated:staging", *s]) == 5  # no earlier version
    assert "no earlier version" in capsys.readouterr().err
    assert main(["models", "list", "gated", "-o", "json", *s]) == 0
    (listing,) = json.loads(capsys.readouterr().out)
    assert listing["aliases"]["staging"] == 1 and [v["version"] for v in listing["versions"]] == registry.versions("gated")
    assert main(["models", "show", "gated:staging", *s]) == 0
    assert capsys.readouterr().out.startswith("gated:v1  aliases: staging")
    assert main(["models", "promote", "gated", *s]) == 2  # NAME alone: the message names NAME:vN
    assert "models promote takes NAME:vN" in capsys.readouterr().err
