"""export_model and load_model: the one way tl-ray writes and reads a trained model.

``export_model`` writes two artifacts side by side:

- ``model.keras``: the Keras file, loadable with ``safe_mode=True`` (no Lambda layers).
- ``saved_model/``: a TensorFlow SavedModel whose ``serving_default``
  signature takes ``image``, float32 ``[None, H, W, 3]`` pixels in 0..255, and
  returns ``{"probabilities": ...}`` (``[None, num_classes]``, or
  ``[None, 1]`` = P(class 1) for a 2-class model); its ``serving_bytes``
  signature takes ``image_bytes``, a ``tf.string [None]`` batch of encoded
  PNG/JPEG files, decodes them with ``tl_ray.data.images.decode_image`` (the
  training reader's decode) and returns the same. Both run the backbone's
  ``preprocess_input`` inside the model, so neither can be fed wrongly
  preprocessed input.

Example:

>>> files = export_model(model, Path("out"))
>>> sorted(files)[0]
'model.keras'
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import tensorflow as tf

import tl_ray.models.preprocess  # noqa: F401  (registers BackbonePreprocess for loading)
from tl_ray import store
from tl_ray.data.images import decode_image
from tl_ray.errors import StorageError

MODEL_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"


def export_model(model: keras.Model, out_dir: Path) -> dict[str, str]:
    """Writes ``model.keras`` and ``saved_model/`` into ``out_dir``.

    Args:
        model: a model from ``build_model`` (single image input).
        out_dir: a local folder; created if missing. An older ``saved_model/``
            in it is replaced.

    Returns:
        ``{path relative to out_dir: sha256}`` for every file written.

    Raises:
        StorageError: the folder cannot be written.
    """
    out_dir = Path(out_dir)
    height, width, channels = model.input_shape[1:]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir / MODEL_FILE)
        saved = out_dir / SAVED_MODEL_DIR
        if saved.exists():
            shutil.rmtree(saved)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name="serving_default",
            fn=lambda image: {"probabilities": model(image, training=False)},
            input_signature=[tf.TensorSpec([None, height, width, channels], tf.float32, name="image")],
        )

        def from_bytes(image_bytes):
            # The reader's decode (any PNG/JPEG/BMP/GIF, grey → RGB, bilinear resize), then the model,
            # whose first layer is the backbone's preprocess_input.
            pixels = tf.map_fn(lambda b: decode_image(b, (height, width)), image_bytes,
                               fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
            return {"probabilities": model(pixels, training=False)}

        archive.add_endpoint(
            name="serving_bytes",
            fn=from_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )
        archive.write_out(str(saved), verbose=False)
    except OSError as exc:
        raise StorageError(f"cannot export the model to {str(out_dir)!r}: {exc}. Check the folder is writable.") from None
    files = [out_dir / MODEL_FILE, *sorted(p for p in saved.rglob("*") if p.is_file())]
    return {p.relative_to(out_dir).as_posix(): store.sha256_file(p) for p in files}


def load_model(path: str | Path, *, compile: bool = False) -> keras.Model:
    """Loads a ``.keras`` file written by tl-ray with ``safe_mode=True``.

    Args:
        path: local ``model.keras`` path.
        compile: also restore the training configuration. Defaults to False.

    Raises:
        StorageError: the file does not exist.
    """
    if not Path(path).is_file():
        raise StorageError(f"model file {str(path)!r} does not exist. Pass the path of a model.keras file.")
    return keras.saving.load_model(path, compile=compile, safe_mode=True)
