"""export_model, export_as and load_model: the one way tl-ray writes and reads a trained model.

``model.keras`` holds stock Keras layers only, so it loads (safe mode) where tl-ray is not installed; both
``SIGNATURES`` of ``saved_model/`` run the preprocessing inside, and ``serving_bytes`` decodes and resizes
images as the training reader does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tl_ray import store
from tl_ray.data.images import decode_image
from tl_ray.errors import ConfigError, ServingError, StorageError
from tl_ray.models.preprocess import replace_legacy_preprocess  # also registers BackbonePreprocess for old files

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
EXPORT_FILE = "export.json"
FORMATS = ("keras", "saved_model", "tf_serving")
SIGNATURES = {
    "serving_default": {"inputs": {"image": "float32 [batch, H, W, 3], RGB pixel values 0..255"},
                        "outputs": {"probabilities": "float32 [batch, num_classes] ([batch, 1] = P(class 1) "
                                                     "for 2 classes)"}},
    "serving_bytes": {"inputs": {"image_bytes": "string [batch], encoded PNG/JPEG/BMP/GIF files"},
                      "outputs": {"probabilities": "as serving_default"}},
}
TOLERANCE = 1e-4  # largest |difference| in probabilities export_as accepts between the model and its export


def export_model(model: keras.Model, out_dir: Path) -> dict[str, str]:
    """Writes ``model.keras`` and ``saved_model/`` into the local folder ``out_dir``, replacing an older one.

    Returns:
        ``{path relative to out_dir: sha256}`` for every file written.

    Raises:
        StorageError: the folder cannot be written.
        ServingError: the model holds objects that are not Keras' own.
    """
    out_dir = Path(out_dir)
    model = portable_model(model)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir / MODEL_FILE)
        saved = out_dir / SAVED_MODEL_DIR
        if saved.exists():
            shutil.rmtree(saved)
        write_saved_model(model, saved)
    except OSError as exc:
        raise StorageError(f"cannot export the model to {str(out_dir)!r}: {exc}. Check the folder is writable.") from None
    files = [out_dir / MODEL_FILE, *sorted(p for p in saved.rglob("*") if p.is_file())]
    return {p.relative_to(out_dir).as_posix(): store.sha256_file(p) for p in files}


def write_saved_model(model: keras.Model, path: Path) -> None:
    """Writes ``model`` as a SavedModel at ``path`` with the ``serving_default`` and ``serving_bytes`` signatures."""
    height, width, channels = model.input_shape[1:]
    # No track(model): add_endpoint tracks the variables the endpoints use, and a tl-ray model has no
    # lookup tables, the one thing track() adds at the cost of a slow walk over every layer.
    archive = keras.export.ExportArchive()
    forward = archive.add_endpoint(
        name="serving_default",
        fn=lambda image: {"probabilities": model(image, training=False)},
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="image")],
    )

    def from_bytes(image_bytes):
        # Calling serving_default's traced graph, rather than the model, saves tracing the model twice.
        pixels = tf.map_fn(lambda b: decode_image(b, (height, width)), image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
        return forward(pixels)

    archive.add_endpoint(name="serving_bytes", fn=from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.write_out(str(path), verbose=False)


def portable_model(model: keras.Model) -> keras.Model:
    """``model`` with nothing but Keras' own objects: an older ``BackbonePreprocess`` becomes stock layers.

    Raises:
        ServingError: some other object in the model is not Keras' own (a custom layer).
    """
    model = replace_legacy_preprocess(model)
    foreign = sorted(set(_foreign_objects(keras.saving.serialize_keras_object(model))))
    if foreign:
        raise ServingError(
            f"model {model.name!r} holds objects outside Keras: {foreign}. A file holding them loads only where "
            "their code is importable; build the model from Keras layers (tl_ray.models.build_model)."
        )
    return model


def _foreign_objects(config) -> list[str]:
    """Names of the serialized objects in ``config`` that do not come from Keras itself."""
    if isinstance(config, (list, tuple)):
        return [name for value in config for name in _foreign_objects(value)]
    if not isinstance(config, dict):
        return []
    module, registered = config.get("module"), config.get("registered_name")
    found = []
    if "class_name" in config and (">" in str(registered or "") or module and not module.startswith("keras")):
        found.append(str(registered or f"{module}.{config['class_name']}"))
    return found + [name for value in config.values() for name in _foreign_objects(value)]


def export_as(model: keras.Model, fmt: str, out_dir: str | Path, *, name: str, version: int,
              class_names: list[str] | None = None, overwrite: bool = False) -> dict:
    """Writes ``model`` in the layout of ``fmt`` under the local folder ``out_dir``, checked against it.

    The export is loaded back and must give ``model``'s probabilities on random images to within
    ``TOLERANCE``. It appears whole, by a rename, so a polling server never loads half of it.

    Args:
        fmt: one of ``FORMATS``; ``tf_serving`` writes TF Serving's ``out_dir/<name>/<version>/`` layout.
        name, version: the model's registry name and version number.
        class_names: the label of each output column, recorded in ``export.json``. Defaults to none.
        overwrite: replace what is already at the destination. Defaults to False.

    Returns:
        What ``export.json`` records, with ``path`` (the folder written) and ``max_abs_difference``.

    Raises:
        ConfigError: ``fmt`` is unknown, or the destination is not empty and ``overwrite`` is False.
        ServingError: the model is not portable, or its export predicts differently.
        StorageError: the folder cannot be written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format must be one of {list(FORMATS)}. Received: {fmt!r}.")
    portable = portable_model(model)
    target = Path(out_dir).resolve() / name / str(int(version)) if fmt == "tf_serving" else Path(out_dir).resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ConfigError(f"export destination {str(target)!r} is not empty. Choose an empty folder or pass --force.")
    info = {"name": name, "version": int(version), "format": fmt, "class_names": class_names,
            "image_size": list(model.input_shape[1:3])}
    if fmt != "keras":
        info["signatures"] = SIGNATURES
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
            staged = Path(tmp) / "export"
            info["max_abs_difference"] = _write(portable, model, staged, info)
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            staged.rename(target)
    except OSError as exc:
        raise StorageError(f"cannot export the model to {str(target)!r}: {exc}. Check the folder is writable.") from None
    return {**info, "path": str(target)}


def _write(portable: keras.Model, source: keras.Model, folder: Path, info: dict) -> float:
    """Writes ``portable`` and its ``export.json`` in ``folder``; returns its largest gap from ``source``."""
    x = np.random.default_rng(0).uniform(0, 255, (2, *source.input_shape[1:])).astype("float32")
    expected = np.asarray(source(x, training=False))
    if info["format"] == "keras":
        folder.mkdir(parents=True)
        portable.save(folder / MODEL_FILE)
        got = keras.saving.load_model(folder / MODEL_FILE, compile=False, safe_mode=True)(x, training=False)
        meta = folder / EXPORT_FILE
    else:
        write_saved_model(portable, folder)
        got = tf.saved_model.load(str(folder)).signatures["serving_default"](image=tf.constant(x))["probabilities"]
        meta = folder / "assets.extra" / EXPORT_FILE
    gap = float(np.max(np.abs(np.asarray(got) - expected)))
    if not gap <= TOLERANCE:
        raise ServingError(f"the {info['format']} export of {info['name']}:v{info['version']} predicts up to {gap:.2e} "
                           f"away from the model (tolerance {TOLERANCE}); nothing was written.")
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({**info, "max_abs_difference": gap}, indent=2))
    return gap


def load_model(path: str | Path, *, compile: bool = False) -> keras.Model:
    """Loads a local ``model.keras`` written by tl-ray with ``safe_mode=True``; ``compile`` restores training.

    Raises:
        StorageError: the file does not exist.
    """
    if not Path(path).is_file():
        raise StorageError(f"model file {str(path)!r} does not exist. Pass the path of a model.keras file.")
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
