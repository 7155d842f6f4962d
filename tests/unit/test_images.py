"""decode_image and prepare_array: the pixels training and serving share."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tl_ray.data.images import decode_image, prepare_array
from tl_ray.errors import DataError


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_decode_grey_png_repeats_the_channel(rng):
    grey = rng.integers(0, 256, (7, 5), dtype=np.uint8)
    out = decode_image(tf.constant(encode(grey)), (7, 5)).numpy()
    assert out.shape == (7, 5, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey.astype(np.float32))


def test_decode_rgb_png_is_exact_at_native_size(rng):
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(tf.constant(encode(rgb)), (6, 9)).numpy(), rgb.astype(np.float32))


def test_decode_rgba_png_drops_alpha(rng):
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    out = decode_image(tf.constant(encode(rgba)), (4, 4)).numpy()
    np.testing.assert_array_equal(out, rgba[..., :3].astype(np.float32))


def test_decode_jpeg_and_resize(rng):
    rgb = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    out = decode_image(tf.constant(encode(rgb, "JPEG")), (8, 12)).numpy()
    assert out.shape == (8, 12, 3)
    np.testing.assert_allclose(out, np.broadcast_to([200, 40, 90], out.shape), atol=4)
    assert out.min() >= 0 and out.max() <= 255


def test_decode_works_in_a_parallel_map(rng):
    files = [encode(rng.integers(0, 256, (10, 10), dtype=np.uint8)) for _ in range(8)]
    ds = tf.data.Dataset.from_tensor_slices(files).map(
        lambda b: decode_image(b, (5, 5)), num_parallel_calls=tf.data.AUTOTUNE
    )
    assert [tuple(x.shape) for x in ds] == [(5, 5, 3)] * 8


@pytest.mark.parametrize("shape", [(2, 28, 28), (2, 28, 28, 1), (2, 28, 28, 3)])
def test_prepare_array_shapes(shape, rng):
    x = rng.integers(0, 256, shape).astype(np.uint8)
    out = prepare_array(x, (32, 32))
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.float32
    native = prepare_array(x, (28, 28))
    expected = np.broadcast_to(x.reshape(2, 28, 28, -1), (2, 28, 28, 3))
    np.testing.assert_array_equal(native, expected.astype(np.float32))


def test_prepare_array_matches_decode_image(rng):
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    from_file = decode_image(tf.constant(encode(grey)), (32, 32)).numpy()
    from_array = prepare_array(grey[None], (32, 32))[0]
    np.testing.assert_allclose(from_file, from_array, atol=1e-3)


@pytest.mark.parametrize("shape", [(28, 28), (2, 28, 28, 4), (2, 28, 28, 2), (2, 3, 28, 28, 3)])
def test_prepare_array_rejects_bad_shapes(shape):
    with pytest.raises(DataError, match=r"\(N, H, W\), \(N, H, W, 1\) or \(N, H, W, 3\).*Received shape"):
        prepare_array(np.zeros(shape, np.uint8), (32, 32))


def test_prepare_array_rejects_values_outside_0_255():
    with pytest.raises(DataError, match="0..255.*max 300"):
        prepare_array(np.full((1, 4, 4), 300.0), (4, 4))
    with pytest.raises(DataError, match="dtype"):
        prepare_array(np.array([[["a"]]]), (4, 4))
