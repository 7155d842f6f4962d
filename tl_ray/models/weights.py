"""Where a backbone's starting weights come from: ``model.weights`` is ``imagenet``, ``none``, a weights file
(``.h5``, ``.weights.h5`` or a tl-ray ``.keras`` model; a path or URI) or ``registry://NAME:ALIAS``.
Models take them as the local file ``tl_ray.registry.weights.resolve_weights`` fetches.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import Literal

from tl_ray import store
from tl_ray.errors import ConfigError, StorageError
from tl_ray.models.backbones import backbone_of, get_backbone

WeightsKind = Literal["imagenet", "none", "file", "registry"]
WEIGHTS_SUFFIXES = (".weights.h5", ".h5", ".keras")
REGISTRY_SCHEME = "registry://"


def weights_kind(weights: str) -> WeightsKind:
    """Classifies a ``model.weights`` value; ConfigError when it is none of the four accepted forms."""
    if weights.lower() in ("imagenet", "none"):
        return weights.lower()  # type: ignore[return-value]
    if weights.startswith(REGISTRY_SCHEME):
        name, _, alias = weights[len(REGISTRY_SCHEME):].partition(":")
        if not name or not alias:
            raise ConfigError(
                f"model.weights must name a registry model as registry://NAME:ALIAS. Received: {weights!r}. "
                "Example: registry://fashion-base:production."
            )
        return "registry"
    if weights.endswith(WEIGHTS_SUFFIXES):
        return "file"
    raise ConfigError(
        "model.weights must be 'imagenet', 'none', a weights file ending in "
        f"{list(WEIGHTS_SUFFIXES)} (path or s3:// URI) or registry://NAME:ALIAS. Received: {weights!r}."
    )


def fetch_weights_file(uri: str) -> Path:
    """Copies the weights file at ``uri`` into the node's cache once; returns its local path.

    The copy is named by its sha256 and renamed into place, so concurrent workers never read a half-written
    file. A pointer keyed by the URI, size and modification time lets later calls skip the download.

    Raises:
        StorageError: the file does not exist or cannot be read.
    """
    cache = store.local_cache_dir("weights")
    fs, path = store.filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise StorageError(f"cannot reach weights file {uri!r}: {exc}. Check model.weights and the store.") from None
    if info.type.name != "File":
        raise StorageError(
            f"model.weights file {uri!r} does not exist. Stage it first (tl-ray weights stage) or fix the path."
        )
    stamp = hashlib.sha256(f"{uri}|{info.size}|{info.mtime_ns}".encode()).hexdigest()
    pointer = cache / "by-source" / stamp
    if pointer.is_file():
        cached = cache / pointer.read_text().strip()
        if cached.is_file():
            return cached
    digest = hashlib.sha256()
    with store.staging(cache) as tmp:
        with open(tmp, "wb") as out, store.open_input_stream(uri) as src:
            for block in iter(lambda: src.read(8 * 2**20), b""):
                digest.update(block)
                out.write(block)
        name = digest.hexdigest() + next(s for s in WEIGHTS_SUFFIXES if uri.endswith(s))
        store.publish_local(tmp, cache / name)
    store.write_text(str(pointer), name)
    return cache / name


def save_backbone_weights(model, uri: str) -> str:
    """Writes the weights of ``model``'s nested ``backbone``, or of a bare backbone, to ``uri``.

    Returns:
        The sha256 of the file written.

    Raises:
        ConfigError: ``uri`` does not end in ``.weights.h5``.
        StorageError: the destination cannot be written.
    """
    if not uri.endswith(".weights.h5"):
        raise ConfigError(f"backbone weights are saved as Keras .weights.h5 files. Received: {uri!r}. "
                          "Name the destination e.g. s3://bucket/weights/mobilenet_v2.weights.h5.")
    backbone = model.get_layer("backbone") if _has_backbone(model) else model
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "backbone.weights.h5"
        backbone.save_weights(str(local))
        data = local.read_bytes()
    store.write_bytes(uri, data)
    return store.sha256_bytes(data)


def load_backbone_weights(backbone, path: str, *, what: str) -> None:
    """Loads a local ``.h5`` / ``.weights.h5`` file into ``backbone``; ``what`` describes it in messages.

    Raises:
        ConfigError: the file's weights do not fit the backbone.
    """
    # Keras only warns when parts of a file match no layer; tl-ray treats a partial load as a mismatch.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(path)
            problem = next((str(w.message) for w in caught if "freshly-initialized" in str(w.message)), None)
        except (ValueError, KeyError) as exc:
            problem = str(exc)
    if problem:
        raise ConfigError(
            f"model.weights file {path!r} does not fit backbone {what}: {' '.join(problem.split())[:400]} "
            "Use weights saved from the same model.backbone and model.backbone_args."
        )


def transfer_backbone_weights(backbones: list, model_path: str, *, source: str, what: str) -> None:
    """Copies the ``backbone`` weights of the tl-ray model at ``model_path`` into one of ``backbones``.

    ``backbones`` share their layers (whole, and cut at ``model.feature_layer``); the first with the saved
    one's layers and variable shapes receives the weights. ``source`` and ``what`` name both in messages.

    Raises:
        ConfigError: the saved model has no backbone, or its architecture differs.
    """
    from tl_ray.models.export import load_model

    saved = load_model(model_path)
    if not _has_backbone(saved):
        raise ConfigError(
            f"model.weights {source!r} ({model_path}) is not a tl-ray model: it has no nested model named "
            "'backbone'. Point model.weights at a model.keras written by tl-ray, or at a backbone "
            ".weights.h5 file."
        )
    src = saved.get_layer("backbone")
    src_name = getattr(backbone_of(saved), "name", "unknown")
    theirs = _signature(src)
    for backbone in backbones:
        if _signature(backbone) == theirs:
            backbone.set_weights(src.get_weights())
            return
    ours = _signature(backbones[-1])
    first = next((f"{a} there, {b} here" for a, b in zip(theirs, ours) if a != b),
                 f"{len(theirs)} layers there, {len(ours)} here")
    raise ConfigError(
        f"model.weights {source!r} holds a {src_name} backbone that does not match the requested {what} "
        f"(first difference: {first}). Set model.backbone, model.backbone_args and model.feature_layer to "
        "those of the registered model, or use weights: imagenet / none."
    )


def _signature(model) -> list[tuple[str, tuple]]:
    """Layer classes and variable shapes, in order: equal signatures mean transferable weights."""
    return [(type(layer).__name__, tuple(tuple(w.shape) for w in layer.weights)) for layer in model.layers]


def _has_backbone(model) -> bool:
    return any(layer.name == "backbone" for layer in getattr(model, "layers", []))


def stage_backbone_weights(backbone: str, uri: str, *, weights: str = "imagenet",
                           backbone_args: dict | None = None) -> dict:
    """Builds a backbone and uploads its weights, so offline clusters can use ``model.weights: URI``.

    Args:
        uri: destination ending in ``.weights.h5`` (local path or ``s3://``).
        weights: ``"imagenet"`` (downloaded, so run where the internet is reachable) or ``"none"``
            (random weights, for tests). Defaults to "imagenet".
        backbone_args: constructor arguments; they must equal the spec's ``model.backbone_args``.

    Returns:
        ``{"uri", "sha256", "backbone", "backbone_args", "weights"}``.

    Raises:
        ConfigError: unknown backbone, bad arguments, or ``uri`` not ending in ``.weights.h5``.
        StorageError: the ImageNet download or the upload failed.
    """
    if weights not in ("imagenet", "none"):
        raise ConfigError(f"weights stage --weights must be 'imagenet' or 'none'. Received: {weights!r}.")
    if not uri.endswith(".weights.h5"):
        raise ConfigError(f"weights stage --to must end in .weights.h5. Received: {uri!r}. "
                          f"Example: s3://bucket/weights/{backbone}.weights.h5.")
    entry, args = get_backbone(backbone), dict(backbone_args or {})
    size = entry.default_size
    try:
        model = entry.build((size, size, 3), "imagenet" if weights == "imagenet" else None, name="backbone", **args)
    except ConfigError:
        raise
    except Exception as exc:  # Keras raises bare Exception for a failed download
        if weights == "imagenet" and not isinstance(exc, (TypeError, ValueError)):
            raise StorageError(f"ImageNet weights for backbone {backbone!r} could not be downloaded ({exc}). "
                               "Run `tl-ray weights stage` on a machine with internet access.") from None
        raise ConfigError(f"{entry.constructor} rejected backbone_args {args}: {exc}") from None
    digest = save_backbone_weights(model, uri)
    return {"uri": uri, "sha256": digest, "backbone": backbone, "backbone_args": args, "weights": weights}
