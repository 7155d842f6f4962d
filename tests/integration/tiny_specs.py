"""A tiny spec file for tests that run `tl-ray` commands: two Fashion-MNIST classes ingested into a local store,
a narrow MobileNet (alpha 0.25) from random weights, one short epoch."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_tiny_spec(root: Path, fashion_dir: Path, name: str, per_class: int = 40, **train) -> tuple[Path, Path]:
    """Ingests 2 classes (``per_class`` training images each) into ``root/store`` and writes ``root/spec.yaml``;
    ``train`` sets more ``train`` fields. Returns (spec path, store)."""
    from tl_ray.data.ingest import ingest_fashion_mnist

    store = root / "store"
    ingest_fashion_mnist(str(store / "datasets/t/train"), path=str(fashion_dir), classes=[0, 1], per_class=per_class,
                         validation_to=str(store / "datasets/t/val"), validation_per_class=per_class // 2)
    spec = {
        "name": name,
        "storage": str(store),
        "data": {"train": "datasets/t/train", "validation": "datasets/t/val"},
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "freeze": {"mode": "full"}, "head": {"dropout": 0.0}},
        "train": {"epochs": 1, "batch_size": 20, "steps_per_epoch": 2, **train},
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, store
