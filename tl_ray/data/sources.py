"""Ingest sources: Fashion-MNIST IDX files and folders of images, read through tl_ray.store. Images are
checked and encoded with Pillow, not TensorFlow, so ingest starts fast."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np

from tl_ray import store
from tl_ray.errors import ConfigError, DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

_INSTALL_HINT = "Install it with `apt-get install dataset-fashion-mnist`, or pass its folder with --from PATH."


def _read_idx(uri: str, ndim: int) -> np.ndarray:
    magic = 0x0800 | ndim  # IDX: unsigned bytes, then the number of dimensions
    if not store.exists(uri):
        raise DataError(f"Fashion-MNIST file {uri!r} does not exist. {_INSTALL_HINT}")
    raw = store.read_bytes(uri)
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError) as exc:
        raise DataError(f"Fashion-MNIST file {uri!r} is not valid gzip ({exc}). {_INSTALL_HINT}") from None
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"Fashion-MNIST file {uri!r} is too short ({len(data)} bytes) to be an IDX file.")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise DataError(f"Fashion-MNIST file {uri!r} has IDX magic number {found:#010x}; expected "
                        f"{magic:#010x}. The file is corrupt or not the right one. {_INSTALL_HINT}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"Fashion-MNIST file {uri!r} declares shape {list(dims)} ({int(np.prod(dims))} "
                        f"bytes) but holds {len(body)} bytes: the file is truncated.")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_fashion_mnist(path: str = FASHION_MNIST_DIR, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], labels uint8 [N])`` of one split (``"train"`` or ``"test"``) of the
    gzipped Fashion-MNIST IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in ``path``.
    DataError when a file is missing, not gzip, has the wrong magic number or is truncated."""
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ConfigError(f"split must be one of {list(prefixes)}. Received: {split!r}.")
    if not store.exists(path):
        raise DataError(f"Fashion-MNIST folder {path!r} does not exist. {_INSTALL_HINT}")
    prefix = prefixes[split]
    images = _read_idx(store.join(path, f"{prefix}-images-idx3-ubyte.gz"), 3)
    labels = _read_idx(store.join(path, f"{prefix}-labels-idx1-ubyte.gz"), 1)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} split under {path!r} has {len(images)} images but "
                        f"{len(labels)} labels.")
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"Fashion-MNIST labels under {path!r} must be 0..9. Received: max {int(labels.max())}.")
    return images, labels


def list_image_folder(src: str) -> tuple[list[str], list[list[str]]]:
    """``(class_names, files)`` of a folder with one sub-folder per class, like Keras'
    ``image_dataset_from_directory``: the sorted sub-folder names, and ``files[i]`` the sorted image URIs
    (any depth) of class ``i``. DataError when there are no class folders or one holds no images."""
    by_class: dict[str, list[str]] = {}
    for rel in store.list_files(src):
        parts = rel.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue  # files at the top level and hidden files are not examples
        by_class.setdefault(parts[0], [])
        if rel.lower().endswith(IMAGE_EXTENSIONS):
            by_class[parts[0]].append(store.join(src, rel))
    if not by_class:
        raise DataError(f"image folder {src!r} holds no class sub-folders (or does not exist). Expected "
                        f"{src}/<class name>/<image>{'|'.join(IMAGE_EXTENSIONS)}.")
    names = sorted(by_class)
    empty = [n for n in names if not by_class[n]]
    if empty:
        raise DataError(f"class folder(s) {empty} under {src!r} hold no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}). Add images or remove the folders.")
    return names, [sorted(by_class[n]) for n in names]


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` array."""
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def normalise_image(data: bytes, name: str) -> tuple[bytes, list[int]]:
    """Checks an image file decodes and returns ``(stored bytes, [H, W, C])``. PNG (grey, RGB, RGBA) and
    baseline JPEG (grey, RGB) are kept as they are; anything else becomes an 8-bit PNG that TensorFlow
    decodes the same way everywhere. DataError when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, mode = img.format, img.mode
            if (fmt == "PNG" and mode in ("L", "RGB", "RGBA")) or (fmt == "JPEG" and mode in ("L", "RGB")):
                return data, [img.height, img.width, len(mode)]
            if mode in ("LA", "I", "I;16", "I;16B", "F"):
                target = "L"
            elif "A" in mode or "transparency" in img.info:
                target = "RGBA"
            else:
                target = "RGB"
            converted = img.convert(target)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image {name!r} cannot be decoded ({type(exc).__name__}: {exc}). Remove or fix the "
                        "file, or pass skip_bad=True (--skip-bad) to leave undecodable images out.") from None
    buf = io.BytesIO()
    converted.save(buf, format="PNG")
    return buf.getvalue(), [converted.height, converted.width, len(target)]
