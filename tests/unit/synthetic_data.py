"""Small synthetic datasets for the data-stage tests (imported by test modules, not collected)."""

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["cat", "dog", "emu"]


def make_image_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (6, 5)) -> dict:
    """Writes ``root/<class>/<id>.png`` grey images whose pixels all equal ``id * 8``.

    Returns ``{id: (label, pixels [H, W] uint8)}``; ids run 0..len(CLASSES)*per_class-1.
    """
    expected = {}
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            row_id = label * per_class + k
            pixels = np.full(size, row_id * 8 % 256, dtype=np.uint8)
            pixels[0, 0] = row_id  # exact id, even when the fill wraps
            Image.fromarray(pixels).save(root / name / f"{row_id:03d}.png")
            expected[row_id] = (label, pixels)
    return expected


def row_ids(images: np.ndarray) -> list[int]:
    """The ids encoded by ``make_image_folder`` in a batch of decoded images [B, H, W, 3]."""
    return [int(round(float(v))) for v in images[:, 0, 0, 0]]
