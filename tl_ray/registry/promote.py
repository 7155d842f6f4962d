"""Promotion: export a trained checkpoint, register it, and move an alias only if it wins.

The gate scores the challenger and the current alias holder on the same
dataset (the spec's validation set) with the spec's metric; the alias moves
only when the challenger is better by at least ``promote.min_delta``. Either
way the version is registered, with the decision and both scores in its
metadata, so a refused challenger can still be inspected or promoted by hand.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tl_ray.errors import ConfigError
from tl_ray.registry.store import Registry
from tl_ray.spec import Spec


@dataclass
class Promotion:
    name: str
    version: int
    alias: str
    accepted: bool
    metric: str
    challenger: float
    champion: float | None
    champion_version: int | None

    def message(self) -> str:
        who = f"{self.name}:v{self.version}"
        if self.champion is None:
            return f"{who} is the first version; {self.alias} -> v{self.version} ({self.metric}={self.challenger:.4f})."
        vs = f"{self.metric} {self.challenger:.4f} vs {self.champion:.4f} of v{self.champion_version}"
        if self.accepted:
            return f"{who} promoted: {self.alias} -> v{self.version} ({vs})."
        return (
            f"{who} registered but NOT promoted: it does not beat {self.alias} ({vs}); "
            f"{self.alias} stays at v{self.champion_version}."
        )


def evaluate(model, uri: str, image_size, batch_size: int = 256) -> dict[str, float]:
    """Loss and accuracy of ``model`` over the whole dataset at ``uri`` (streamed)."""
    import tensorflow as tf

    from tl_ray.data.reader import make_dataset

    binary = model.output_shape[-1] == 1
    total = correct = loss_sum = 0.0

    @tf.function(reduce_retracing=True)
    def probs_of(x):
        return tf.cast(model(x, training=False), tf.float32)

    for images, labels in make_dataset(uri, image_size=tuple(image_size), batch_size=batch_size):
        probs = probs_of(images).numpy()
        y = labels.numpy().astype(np.int64)
        if binary:
            p1 = np.clip(probs[:, 0], 1e-7, 1 - 1e-7)
            loss_sum += float(-(y * np.log(p1) + (1 - y) * np.log(1 - p1)).sum())
            correct += float(((p1 > 0.5).astype(np.int64) == y).sum())
        else:
            loss_sum += float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0)).sum())
            correct += float((probs.argmax(axis=1) == y).sum())
        total += len(y)
    total = max(total, 1.0)
    return {"loss": loss_sum / total, "accuracy": correct / total, "examples": int(total)}


def gate_metric(spec: Spec) -> tuple[str, str]:
    """(key of evaluate()'s result, mode) for the spec's tune metric."""
    key = spec.tune.metric.removeprefix("val_")
    if key not in ("accuracy", "loss"):
        raise ConfigError(
            f"tune.metric must be one of val_accuracy, val_loss, accuracy, loss for promotion. "
            f"Received: {spec.tune.metric!r}."
        )
    return key, spec.tune.mode


def better(a: float, b: float, mode: str, margin: float) -> bool:
    return a > b + margin if mode == "max" else a < b - margin


def promote_checkpoint(
    spec: Spec,
    checkpoint_dir: str | Path,
    trial_metrics: dict | None = None,
    parent: str | None = None,
) -> Promotion:
    """Registers the model in ``checkpoint_dir`` under ``promote.name``; moves the alias if it wins.

    Raises:
        ConfigError: the spec has no ``promote`` or ``data.validation`` section.
        RegistryError: the registry cannot be read or written.
    """
    from tl_ray.data.manifest import read_manifest
    from tl_ray.models.export import export_model, load_model

    if spec.promote is None:
        raise ConfigError("promote is missing from the spec: add `promote: {name: MODEL_NAME}` to register models.")
    if not spec.data.validation:
        raise ConfigError("data.validation is missing: promotion scores challenger and champion on it.")
    registry = Registry(spec.storage)
    name, alias = spec.promote.name, spec.promote.alias
    key, mode = gate_metric(spec)
    val_uri = spec.resolve(spec.data.validation)
    image_size = tuple(spec.data.image_size)

    challenger = load_model(Path(checkpoint_dir) / "model.keras")
    score = evaluate(challenger, val_uri, image_size)[key]

    champion_score = champion_version = None
    current = registry.aliases(name).get(alias) if registry.versions(name) else None
    if current is not None:
        champion_version = current
        champion = load_model(registry.fetch(f"{name}:v{current}") / "model.keras")
        champion_score = evaluate(champion, val_uri, image_size)[key]
    accepted = champion_score is None or better(score, champion_score, mode, spec.promote.min_delta)

    manifest = read_manifest(spec.resolve(spec.data.train))
    metadata = {
        "metrics": dict(trial_metrics or {}),
        "gate": {
            "metric": key,
            "dataset": val_uri,
            "challenger": score,
            "champion": champion_score,
            "champion_version": champion_version,
            "min_delta": spec.promote.min_delta,
            "accepted": accepted,
        },
        "spec": spec.to_dict(),
        "image_size": list(image_size),
        "class_names": manifest.class_names,
        "backbone": spec.model.backbone,
        "backbone_args": spec.model.backbone_args,
        "data_manifest": manifest.digest,
        "parent": parent,
    }
    with tempfile.TemporaryDirectory(prefix="tlray-export-") as tmp:
        export_model(challenger, Path(tmp))
        version = registry.publish(name, tmp, metadata)
    if accepted:
        registry.set_alias(name, alias, version)
    return Promotion(name, version, alias, accepted, key, score, champion_score, champion_version)
