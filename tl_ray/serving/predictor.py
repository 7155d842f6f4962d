"""A registry model behind a request parser: bytes in, class probabilities out.

No Ray here: the Serve deployment in ``app.py`` wraps a ``Predictor``, and the
same object runs in a notebook or a unit test.

Example:

>>> predictor = Predictor.load("./tlray-store", "fashion-transfer:production")
>>> batch = predictor.parse(open("shirt.png", "rb").read(), "image/png", max_instances=256)
>>> predictor.format(predictor.predict(batch))
[{'class': 'shirt', 'class_id': 3, 'probabilities': [...]}]
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tl_ray.errors import DataError, ServingError

JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
MULTIPART_TYPES = ("multipart/form-data",)
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}


class RequestError(ServingError):
    """A request the server refuses, with the HTTP status to answer it with.

    Args:
        status: a 4xx HTTP status code (400 bad input, 413 too large, 415 wrong type).
        message: what is wrong, what was received and what is expected.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return (type(self), (self.status, self.message))


def configure_threads(cpus: float) -> int:
    """Sizes TensorFlow's thread pools to a CPU allotment; call before TensorFlow runs anything.

    Ray sets ``OMP_NUM_THREADS=1`` in its workers, and TensorFlow would
    otherwise size its pools to every core of the node.

    Returns:
        The intra-op thread count chosen.
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
        metadata: its ``metadata.json`` (needs ``name``, ``version``,
            ``image_size`` and ``class_names``).
        chunk_size: the most images run through the model at once, so a
            large batch of large images does not exhaust memory. Defaults to 256.

    Raises:
        ServingError: the metadata lacks a required key, or the model's input
            or output does not match it.
    """

    def __init__(self, model_dir: Path, metadata: dict, chunk_size: int = 256):
        missing = [k for k in ("name", "version", "image_size", "class_names") if k not in metadata]
        if missing:
            raise ServingError(
                f"metadata.json of {model_dir} lacks {missing}; republish the model with tl-ray's export."
            )
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1. Received: {chunk_size}.")
        self.model_dir = Path(model_dir)
        self.metadata = metadata
        self.chunk_size = chunk_size
        self.image_size = tuple(int(s) for s in metadata["image_size"])
        self.class_names = list(metadata["class_names"])
        self.ref = f"{metadata['name']}:v{metadata['version']}"
        self._model, self._forward = self._load_model()

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
            raise ServingError(
                f"{self.ref}: the model's input shape {tuple(model.input_shape)} does not match "
                f"image_size {[h, w]} in metadata.json; expected {expected_in}."
            )
        k = len(self.class_names)
        expected_out = (None, 1) if k == 2 else (None, k)
        if tuple(model.output_shape) not in {(None, k), expected_out}:
            raise ServingError(
                f"{self.ref}: the model's output shape {tuple(model.output_shape)} does not match "
                f"{k} class_names in metadata.json; expected {expected_out}."
            )
        # One traced graph for every batch size, instead of eager layer-by-layer calls.
        forward = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)],
        )
        return model, forward

    # -- requests -----------------------------------------------------------
    def parse(
        self, body: bytes, content_type: str | None, max_instances: int, max_body_bytes: int | None = None
    ) -> np.ndarray:
        """Turns a request body into a float32 batch ``[N, H, W, 3]`` of pixels 0..255.

        Accepts ``application/json`` ``{"instances": [...]}`` where each
        instance is a nested list of shape H×W, H×W×1 or H×W×3 (any size; it
        is resized), the raw bytes of one PNG or JPEG image
        (``image/png``, ``image/jpeg``, ``application/octet-stream``), or a
        ``multipart/form-data`` batch with one PNG or JPEG file per part.

        Args:
            body: the request body.
            content_type: the Content-Type header (parameters such as charset are ignored).
            max_instances: the most instances one JSON request may carry.
            max_body_bytes: the largest body accepted. Defaults to no limit.

        Raises:
            RequestError: 400 malformed body, 413 too large, 415 unsupported content type.
        """
        if max_body_bytes is not None and len(body) > max_body_bytes:
            raise RequestError(
                413,
                f"request body is {len(body)} bytes; the limit is {max_body_bytes}. "
                "Send fewer instances per request.",
            )
        media = (content_type or "").split(";")[0].strip().lower()
        if media not in JSON_TYPES + IMAGE_TYPES + MULTIPART_TYPES:
            raise RequestError(
                415,
                f"unsupported Content-Type {content_type!r}. Send {JSON_TYPES[0]} "
                f'{{"instances": [...]}}, the bytes of one image as one of {list(IMAGE_TYPES)}, '
                "or several images as multipart/form-data.",
            )
        if not body:
            raise RequestError(400, f"request body is empty; expected {_expected(media)}.")
        if media in JSON_TYPES:
            return self._parse_json(body, max_instances)
        if media in MULTIPART_TYPES:
            return self._parse_multipart(body, content_type, max_instances)
        return self._parse_image(body)

    def _parse_multipart(self, body: bytes, content_type: str, max_instances: int) -> np.ndarray:
        import email.parser
        import email.policy

        if "boundary=" not in content_type.lower():
            raise RequestError(
                400, f"multipart/form-data needs a boundary parameter. Received Content-Type: {content_type!r}."
            )
        header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        if not parts:
            raise RequestError(400, "multipart/form-data body holds no parts; expected one image file per part.")
        if len(parts) > max_instances:
            raise RequestError(
                413, f"request has {len(parts)} images; the limit is {max_instances}. Split it into smaller requests."
            )
        images = []
        for i, part in enumerate(parts):
            label = part.get_param("name", header="content-disposition") or f"part {i}"
            data = part.get_payload(decode=True) or b""
            try:
                images.append(self._parse_image(data))
            except RequestError as exc:
                raise RequestError(exc.status, f"multipart part {i} ({label!r}): {exc.message}") from None
        return np.concatenate(images)

    def _parse_json(self, body: bytes, max_instances: int) -> np.ndarray:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(
                400, f"request body is not valid JSON ({exc}); expected {_expected('application/json')}."
            ) from None
        if not isinstance(doc, dict) or "instances" not in doc:
            got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
            raise RequestError(400, f"JSON body must be an object with key 'instances'. Received: {got}.")
        instances = doc["instances"]
        if not isinstance(instances, list) or not instances:
            raise RequestError(
                400, f"'instances' must be a non-empty list of images. Received: {_short(instances)}."
            )
        if len(instances) > max_instances:
            raise RequestError(
                413,
                f"request has {len(instances)} instances; the limit is {max_instances}. "
                "Split it into smaller requests.",
            )
        arrays = [self._instance(i, x) for i, x in enumerate(instances)]
        if len({a.shape for a in arrays}) == 1:  # the usual case: resize them all in one call
            return self._prepare(np.stack(arrays), "instances")
        return np.concatenate([self._prepare(a[np.newaxis], f"instances[{i}]") for i, a in enumerate(arrays)])

    def _prepare(self, array: np.ndarray, where: str) -> np.ndarray:
        from tl_ray.data.images import prepare_array

        try:  # also checks the 0..255 range
            return prepare_array(array, self.image_size)
        except DataError as exc:
            raise RequestError(400, f"{where}: {exc}") from None

    def _instance(self, index: int, value) -> np.ndarray:
        """One instance as an array, checked for raggedness, type and shape."""
        where = f"instances[{index}]"
        try:
            array = np.array(value)
        except ValueError:
            raise RequestError(400, f"{where} is ragged: every row must have the same length.") from None
        if array.dtype.kind not in "iuf":
            raise RequestError(
                400,
                f"{where} must hold only numbers (pixel values 0..255). Received values of type {array.dtype}.",
            )
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))) or 0 in array.shape[:2]:
            raise RequestError(
                400,
                f"{where} has shape {list(array.shape)}; expected [H, W], [H, W, 1] or [H, W, 3] "
                "pixel values with H, W >= 1.",
            )
        return array

    def _parse_image(self, body: bytes) -> np.ndarray:
        import tensorflow as tf

        from tl_ray.data.images import decode_image

        if not any(body.startswith(magic) for magic in _MAGIC):
            raise RequestError(
                400,
                f"request body is not a PNG or JPEG image (it starts with {body[:8]!r}); send the file's bytes.",
            )
        try:
            image = decode_image(tf.constant(body), self.image_size)
        except (DataError, tf.errors.InvalidArgumentError) as exc:
            raise RequestError(
                400, f"request body is not a decodable PNG or JPEG image: {_first_line(exc)}"
            ) from None
        return np.asarray(image, dtype=np.float32)[np.newaxis]

    # -- prediction ---------------------------------------------------------
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a batch ``[N, H, W, 3]``: ``[N, K]`` (softmax) or ``[N, 1]`` (sigmoid).

        Raises:
            ServingError: the model answered NaN or infinite probabilities (a broken
                model, not a bad request: the server answers 500).
        """
        batch = np.asarray(batch, dtype=np.float32)
        chunks = [
            self._forward(batch[start : start + self.chunk_size]).numpy()
            for start in range(0, len(batch), self.chunk_size)
        ]
        probs = np.concatenate(chunks)
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
        out = []
        for row in probs:
            class_id = int(np.argmax(row))
            out.append(
                {"class": self.class_names[class_id], "class_id": class_id, "probabilities": row.tolist()}
            )
        return out


def _expected(media: str) -> str:
    if media in JSON_TYPES:
        return '{"instances": [image, ...]} with each image a nested list of pixel values 0..255'
    if media in MULTIPART_TYPES:
        return "one PNG or JPEG file per form part"
    return "the bytes of one PNG or JPEG image"


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
