"""Promotion: export a trained checkpoint, register it, and move an alias only if it beats the alias holder.

The version is registered either way, with the verdict in its metadata. The alias moves by compare-and-swap
against the champion measured; if another promotion moved it first, the gate runs again, so two promotions
never both win on stale evidence.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_ray.errors import ConfigError, DataError
from tl_ray.registry.store import AliasConflict, Registry
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
    reason: str = ""
    latency_ms: float | None = None
    champion_latency_ms: float | None = None
    warnings: list[str] = field(default_factory=list)

    def message(self) -> str:
        who = f"{self.name}:v{self.version}"
        notes = "".join(f"\n  warning: {w}" for w in self.warnings)
        if self.champion is None:
            return (f"{who} is the first version; {self.alias} -> v{self.version} "
                    f"({self.metric}={self.challenger:.4f}).{notes}")
        vs = f"{self.metric} {self.challenger:.4f} vs {self.champion:.4f} of v{self.champion_version}"
        if self.latency_ms is not None and self.champion_latency_ms is not None:
            vs += f"; p50 {self.latency_ms:.1f} ms vs {self.champion_latency_ms:.1f} ms per batch"
        if self.accepted:
            return f"{who} promoted: {self.alias} -> v{self.version} ({vs}).{notes}"
        return (f"{who} registered but NOT promoted: {self.reason} ({vs}); "
                f"{self.alias} stays at v{self.champion_version}.{notes}")


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
    if not total:
        raise DataError(f"{uri} has no examples to evaluate on: ingest a dataset with rows there.")
    return {"loss": loss_sum / total, "accuracy": correct / total, "examples": int(total)}


def gate_metric(spec: Spec) -> tuple[str, str]:
    """(key of evaluate()'s result, mode) for the spec's tune metric."""
    key = spec.tune.metric.removeprefix("val_")
    if key not in ("accuracy", "loss"):
        raise ConfigError("tune.metric must be one of val_accuracy, val_loss, accuracy, loss for promotion. "
                          f"Received: {spec.tune.metric!r}.")
    return key, spec.tune.mode


def better(a: float, b: float, mode: str, margin: float) -> bool:
    return a > b + margin if mode == "max" else a < b - margin


def holdout_uri(spec: Spec) -> tuple[str, list[str]]:
    """The gate's dataset and any warning about it: promote.holdout, else data.test, else data.validation."""
    if spec.promote is not None and spec.promote.holdout:
        return spec.resolve(spec.promote.holdout), []
    if spec.data.test:
        return spec.resolve(spec.data.test), []
    if spec.data.validation:
        return spec.resolve(spec.data.validation), [
            "promote.holdout and data.test are not set: the gate scores on data.validation, the set the "
            "sweep selected on, so the challenger's score is optimistic. Set promote.holdout to a held-out dataset."
        ]
    raise ConfigError(
        "promotion needs a held-out dataset: set promote.holdout (or data.test, or data.validation). Received: none."
    )


def p50_latency_ms(models: list, uri: str, image_size, batch_size: int, repeats: int) -> list[float]:
    """Median milliseconds per ``predict`` of one batch of ``batch_size`` holdout images, per model.

    The models run interleaved after a warm-up, so a noisy neighbour slows all alike.
    """
    import tensorflow as tf

    from tl_ray.data.reader import make_dataset

    images, _ = next(iter(make_dataset(uri, image_size=tuple(image_size), batch_size=batch_size)))
    reps = int(np.ceil(batch_size / len(images)))
    batch = tf.constant(np.concatenate([images.numpy()] * reps)[:batch_size])
    forwards = [tf.function(lambda x, m=m: m(x, training=False), reduce_retracing=True) for m in models]
    for f in forwards:
        f(batch).numpy()  # trace and warm up
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, f in enumerate(forwards):
            t0 = time.perf_counter()
            f(batch).numpy()
            times[i].append((time.perf_counter() - t0) * 1000)
    return [float(np.median(t)) for t in times]


@dataclass
class _Gate:
    """How one challenger is judged against the version the spec's alias points at."""

    registry: Registry
    spec: Spec
    challenger: Any  # the Keras model
    metric: str  # a key of evaluate()'s result
    mode: str
    dataset: str
    score: float  # the challenger's metric on the dataset

    def judge(self, current: int | None) -> dict:
        """The gate's verdict against version ``current`` of the model (None: there is none yet)."""
        from tl_ray.models.export import load_model

        cfg, key, image_size = self.spec.promote, self.metric, tuple(self.spec.data.image_size)
        gate = {
            "metric": key, "mode": self.mode, "dataset": self.dataset, "challenger": self.score, "champion": None,
            "champion_version": current, "min_delta": cfg.min_delta, "max_latency_ratio": cfg.max_latency_ratio,
            "latency_ms": None, "champion_latency_ms": None, "accepted": True, "reason": "first version",
        }
        if current is None:
            return gate
        champion = load_model(self.registry.fetch(f"{cfg.name}:v{current}") / "model.keras")  # sha256-checked
        gate["champion"] = evaluate(champion, self.dataset, image_size)[key]
        if not better(self.score, gate["champion"], self.mode, cfg.min_delta):
            word = "higher" if self.mode == "max" else "lower"
            gate.update(accepted=False, reason=f"{key} is not {word} than the champion's by at least min_delta={cfg.min_delta}")
            return gate
        gate["reason"] = f"{key} beats the champion's by more than min_delta={cfg.min_delta}"
        if cfg.max_latency_ratio is not None:
            ours, theirs = p50_latency_ms([self.challenger, champion], self.dataset, image_size,
                                          cfg.latency_batch_size, cfg.latency_repeats)
            gate.update(latency_ms=ours, champion_latency_ms=theirs)
            if ours > theirs * cfg.max_latency_ratio:
                gate.update(
                    accepted=False,
                    reason=f"p50 latency per batch of {cfg.latency_batch_size} is {ours / theirs:.2f}x the "
                    f"champion's, above max_latency_ratio={cfg.max_latency_ratio}",
                )
        return gate

    def move_alias(self, version: int, current: int | None, gate: dict) -> dict:
        """Points the alias at ``version`` if ``gate`` accepts it, by compare-and-swap against ``current``;
        returns the final verdict."""
        name, alias = self.spec.promote.name, self.spec.promote.alias
        for attempt in range(5):
            if not gate["accepted"]:
                return gate
            try:
                self.registry.set_alias(name, alias, version, expect=current,
                                        note=f"promoted by the gate: {gate['reason']}")
                return gate
            except AliasConflict:
                current = self.registry.aliases(name).get(alias)
                gate = self.judge(current)
                gate["attempts"] = attempt + 2
                self.registry.update_metadata(name, version, {"gate": gate})
        raise AliasConflict(f"{name}:{alias} kept moving while v{version} was gated; promote it by hand if wanted.")


def promote_checkpoint(spec: Spec, checkpoint_dir: str | Path, trial_metrics: dict | None = None,
                       parent: str | None = None) -> Promotion:
    """Registers the model in ``checkpoint_dir`` under ``promote.name``; moves the alias if it wins.

    Raises:
        ConfigError: the spec has no ``promote`` section or no dataset to gate on.
        RegistryError: the registry cannot be read or written.
        StorageError: the store ignores conditional writes, or does not read what was published back as written
            (nothing is then published).
    """
    from tl_ray.data.manifest import read_manifest
    from tl_ray.models.export import export_model
    from tl_ray.train.checkpoint import checkpoint_model

    if spec.promote is None:
        raise ConfigError("promote is missing from the spec: add `promote: {name: MODEL_NAME}` to register models.")
    registry = Registry(spec.storage)
    registry.check_writable()  # before the gate's evaluation, not after it
    name, alias = spec.promote.name, spec.promote.alias
    key, mode = gate_metric(spec)
    uri, warnings = holdout_uri(spec)  # said once, in the promotion's message
    challenger = checkpoint_model(checkpoint_dir, spec.storage)  # a head-only checkpoint is rebuilt in full
    score = evaluate(challenger, uri, tuple(spec.data.image_size))[key]
    gatekeeper = _Gate(registry, spec, challenger, key, mode, uri, score)

    current = registry.aliases(name).get(alias) if registry.versions(name) else None
    gate = gatekeeper.judge(current)
    manifest = read_manifest(spec.resolve(spec.data.train))
    metadata = {
        "metrics": dict(trial_metrics or {}), "gate": gate, "spec": spec.to_dict(),
        "image_size": list(spec.data.image_size), "class_names": manifest.class_names,
        "backbone": spec.model.backbone, "backbone_args": spec.model.backbone_args,
        "feature_layer": spec.model.feature_layer, "data_manifest": manifest.digest, "parent": parent,
    }
    with tempfile.TemporaryDirectory(prefix="tlray-export-") as tmp:
        export_model(challenger, Path(tmp))
        version = registry.publish(name, tmp, metadata)
    gate = gatekeeper.move_alias(version, current, gate)
    return Promotion(name, version, alias, gate["accepted"], key, score, gate["champion"],
                     gate["champion_version"], reason=gate["reason"], latency_ms=gate["latency_ms"],
                     champion_latency_ms=gate["champion_latency_ms"], warnings=warnings)
