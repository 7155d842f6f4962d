"""The one place pixels are made, shared by training and serving: float32 ``[H, W, 3]`` in 0..255, resized
bilinearly, so a model sees the same input in both."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tl_ray.errors import DataError


def decode_image(encoded: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Decodes one encoded image (PNG, JPEG, BMP or GIF; a scalar ``tf.string``) into float32
    ``[height, width, 3]`` in 0..255. Grey becomes RGB and alpha is dropped; bytes that are not an image
    raise ``tf.errors.InvalidArgumentError`` when run."""
    height, width = int(image_size[0]), int(image_size[1])
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, (height, width), method="bilinear")
    return tf.ensure_shape(tf.cast(image, tf.float32), [height, width, 3])


def prepare_array(x, image_size: tuple[int, int]) -> np.ndarray:
    """Turns raw pixels ``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)`` in 0..255 into float32
    ``[N, height, width, 3]`` model input, exactly as ``decode_image`` does for files. DataError when the
    shape is none of these, the values are not numbers, or they fall outside 0..255."""
    expected = "(N, H, W), (N, H, W, 1) or (N, H, W, 3)"
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged nested lists
        raise DataError(f"images must form one array of shape {expected}; they do not ({exc}).") from None
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"images must hold numbers 0..255 of shape {expected}. Received dtype {arr.dtype}.")
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (1, 3))) or 0 in arr.shape[1:3]:
        raise DataError(f"images must have shape {expected} with values 0..255. Received shape "
                        f"{tuple(arr.shape)}. Drop the alpha channel of RGBA images, and add a batch axis to "
                        "a single image.")
    arr = arr.astype(np.float32)
    if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 255.0):
        raise DataError("image values must lie in 0..255 (raw pixels, not normalised). Received min "
                        f"{float(arr.min()):g}, max {float(arr.max()):g}.")
    height, width = int(image_size[0]), int(image_size[1])
    if not len(arr):
        return np.zeros((0, height, width, 3), np.float32)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[1:3] != (height, width):
        arr = tf.image.resize(arr, (height, width), method="bilinear").numpy()
    return arr
