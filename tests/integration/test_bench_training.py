"""Smoke runs of the benchmarks of training (one trial, GPUs): each at its tiny size (``--smoke``) exits 0 and prints its
table. Figures are never checked: at this size, on a shared machine, they mean nothing.
"""

from __future__ import annotations

import pytest
from processes import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_train(tmp_path):
    out = run_benchmark("bench_train.py", "--store", str(tmp_path))
    assert "| run " in out
    for row in ("| plain Keras model.fit", "| tl-ray trial, reader from store", "| tl-ray trial, Ray's default threads"):
        assert row in out


def test_bench_gpu(tmp_path):
    # Without a GPU the smoke runs every row on 2 logical CPU devices standing in for 2 GPUs; the narrowest
    # MobileNet halves the tracing of the rows' fully trained models.
    out = run_benchmark("bench_gpu.py", "--backbone", "mobilenet", "--alpha", "0.25", "--store", str(tmp_path),
                        "--json", str(tmp_path / "out.json"))
    assert "| run " in out and "| scaling efficiency |" in out
    for row in ("| 1 ", "| 2 ", "| 2 Ray workers x 1 ", ", mixed_float16 ", "| reader alone, 32 px JPEG ",
                "mixed precision speed-up at 2 ", "input at 32 px: the reader alone delivers "):
        assert row in out
