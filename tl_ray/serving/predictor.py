"""A registry model behind a request parser: bytes in, class probabilities out.

No Ray here: ``server.py`` wraps a ``Predictor``, and the same object runs in a notebook or a unit test.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tl_ray.errors import ServingError
from tl_ray.serving.parsing import RequestError, parse_body

__all__ = ["Predictor", "RequestError", "configure_threads"]


def configure_threads(cpus: float) -> int:
    """Sizes TensorFlow's thread pools to a CPU allotment; returns the intra-op thread count.

    Call it before TensorFlow runs anything: Ray sets ``OMP_NUM_THREADS=1`` in its workers, and TensorFlow
    would otherwise size its pools to every core of the node.
    """
    threads = max(1, int(round(cpus)))
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    return threads


class Predictor:
    """A loaded registry version: parses requests, predicts and formats answers.

    Args:
        model_dir: a registry version folder holding ``model.keras``.
        metadata: its ``metadata.json`` (needs ``name``, ``version``, ``image_size`` and ``class_names``).
        chunk_size: the most images run through the model at once, so a large batch does not exhaust memory.

    Raises:
        ServingError: the metadata lacks a required key, or the model's input or output does not match it.
    """

    def __init__(self, model_dir: Path, metadata: dict, chunk_size: int = 256):
        missing = [k for k in ("name", "version", "image_size", "class_names") if k not in metadata]
        if missing:
            raise ServingError(f"metadata.json of {model_dir} lacks {missing}; "
                               "republish the model with tl-ray's export.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1. Received: {chunk_size}.")
        self.model_dir = Path(model_dir)
        self.metadata = metadata
        self.chunk_size = chunk_size
        self.image_size = tuple(int(s) for s in metadata["image_size"])
        self.class_names = list(metadata["class_names"])
        self.ref = f"{metadata['name']}:v{metadata['version']}"
        self._forward = self._load_model()

    @classmethod
    def load(cls, storage_root: str, ref: str, **kwargs) -> "Predictor":
        """Fetches ``ref`` (e.g. ``fashion:production``) from the registry, sha256-verified, and loads it."""
        from tl_ray.registry.store import Registry

        registry = Registry(storage_root)
        name, version = registry.resolve(ref)
        return cls(registry.fetch(f"{name}:v{version}"), registry.metadata(name, version), **kwargs)

    def _load_model(self):
        import tensorflow as tf

        from tl_ray.models.export import load_model

        path = self.model_dir / "model.keras"
        if not path.is_file():
            raise ServingError(f"{self.ref}: {path} is missing; the registry version is incomplete.")
        model = load_model(path)
        h, w = self.image_size
        expected_in = (None, h, w, 3)
        if tuple(model.input_shape) != expected_in:
            raise ServingError(f"{self.ref}: the model's input shape {tuple(model.input_shape)} does not "
                               f"match image_size {[h, w]} in metadata.json; expected {expected_in}.")
        k = len(self.class_names)
        expected_out = (None, 1) if k == 2 else (None, k)
        if tuple(model.output_shape) not in {(None, k), expected_out}:
            raise ServingError(f"{self.ref}: the model's output shape {tuple(model.output_shape)} does not "
                               f"match {k} class_names in metadata.json; expected {expected_out}.")
        # One traced graph for every batch size, instead of eager layer-by-layer calls.
        signature = [tf.TensorSpec([None, h, w, 3], tf.float32)]
        return tf.function(lambda x: model(x, training=False), input_signature=signature)

    def parse(
        self, body: bytes, content_type: str | None, max_instances: int, max_body_bytes: int | None = None
    ) -> np.ndarray:
        """A float32 batch ``[N, H, W, 3]`` of pixels 0..255 at the model's size; see ``parse_body``."""
        return parse_body(body, content_type, self.image_size, max_instances, max_body_bytes)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch ``[N, H, W, 3]``: ``[N, K]`` (softmax) or ``[N, 1]`` (sigmoid).

        Raises:
            ServingError: NaN or infinite probabilities (a broken model, not a bad request: answered 500).
        """
        batch = np.asarray(batch, dtype=np.float32)
        starts = range(0, len(batch), self.chunk_size)
        probs = np.concatenate([self._forward(batch[i : i + self.chunk_size]).numpy() for i in starts])
        if not np.isfinite(probs).all():
            raise ServingError(f"{self.ref} produced non-finite probabilities; the model is broken.")
        return probs

    def warm_up(self) -> None:
        """Runs one blank image through the model, so the first request does not pay for tracing."""
        h, w = self.image_size
        self._forward(np.zeros((1, h, w, 3), np.float32)).numpy()

    def format(self, probs: np.ndarray) -> list[dict]:
        """One ``{"class", "class_id", "probabilities"}`` per row; a sigmoid column becomes two."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim == 2 and probs.shape[1] == 1:
            probs = np.concatenate([1.0 - probs, probs], axis=1)
        ids = probs.argmax(axis=1).tolist()
        return [{"class": self.class_names[i], "class_id": i, "probabilities": p.tolist()} for i, p in zip(ids, probs)]

