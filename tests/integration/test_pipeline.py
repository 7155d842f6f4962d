"""The end-to-end job on a real local Ray and the S3 API server: ingest → upstream source
model → sweep → promotion → test accuracy → Serve, with the accuracy measured over HTTP."""

from __future__ import annotations

import socket
import uuid

import pytest
import yaml

from tl_ray import store as storage
from tl_ray.spec import load_spec

pytestmark = pytest.mark.integration

SMALL_TRAIN = {"epochs": 2, "batch_size": 30, "steps_per_epoch": 3, "learning_rate": 3e-3}


def write_specs(tmp_path, store: str, port: int):
    common_model = {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "head": {"dropout": 0.0}}
    source = {
        "name": "tiny-source",
        "storage": store,
        "data": {
            "train": "datasets/src/train",
            "validation": "datasets/src/val",
            "source": {"kind": "fashion-mnist", "classes": [0, 1, 2], "train_per_class": 60, "validation_per_class": 20},
        },
        "model": {**common_model, "weights": "none", "freeze": {"mode": "full"}, "batchnorm_momentum": 0.9},
        "train": SMALL_TRAIN,
        "tune": {"num_samples": 1, "scheduler": "fifo"},
        "promote": {"name": "tiny-source"},
        "run": {"serve": False},
    }
    target = {
        "name": "tiny-target",
        "storage": store,
        "data": {
            "train": "datasets/tgt/train",
            "validation": "datasets/tgt/val",
            "test": "datasets/tgt/test",
            "source": {"kind": "fashion-mnist", "classes": [7, 8, 9], "train_per_class": 30, "validation_per_class": 20},
        },
        "model": {**common_model, "weights": "registry://tiny-source:production"},
        "train": SMALL_TRAIN,
        "tune": {"num_samples": 1, "scheduler": "fifo", "space": {"model.freeze.mode": "grid([feature_extraction, fine_tune])"}},
        "promote": {"name": "tiny-target"},
        "serve": {"port": port, "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
        "run": {"upstream": "source.yaml", "serve": True},
    }
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(source))
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    return tmp_path / "target.yaml"


def test_run_pipeline_end_to_end_then_reuses_what_it_built(ray_cluster, s3_server, tmp_path):
    from ray import serve

    from tl_ray.pipeline import ensure_data, ensure_upstream, run_pipeline
    from tl_ray.registry.store import Registry

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"s3://tlray-e2e-{uuid.uuid4().hex[:8]}/store"
    spec = load_spec(write_specs(tmp_path, store, port))
    lines: list[str] = []
    try:
        figures = run_pipeline(spec, out=lines.append)
    finally:
        serve.shutdown()
    log = "\n".join(lines)

    registry = Registry(store)
    assert registry.aliases("tiny-source") == {"production": 1}  # the upstream was trained and registered
    assert registry.aliases("tiny-target") == {"production": 1}
    assert figures["promoted"] == "tiny-target:v1"
    meta = registry.metadata("tiny-target", 1)
    assert meta["parent"] == "tiny-source:v1"
    assert meta["class_names"] == ["Sneaker", "Bag", "Ankle boot"]
    # Fashion-MNIST's test split holds 1,000 images per class; the endpoint saw all of them
    # and predicts exactly what the model predicts in process.
    assert storage.exists(storage.join(store, "datasets/tgt/test/_manifest.json"))
    assert 0.0 <= figures["test_accuracy"] <= 1.0
    assert figures["http_test_accuracy"] == pytest.approx(figures["test_accuracy"], abs=1 / 3000)
    assert "[upstream] registry://tiny-source:production is not registered" in log

    again: list[str] = []
    ensure_data(spec, out=again.append)
    ensure_upstream(spec, out=again.append)
    assert again[0].startswith("[data] reusing") and again[1].startswith("[upstream] reusing tiny-source:v1")
