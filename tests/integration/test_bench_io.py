"""Smoke runs of the benchmarks of data, serving and the store: each at its tiny size (``--smoke``) exits 0 and prints its
table. Figures are never checked: at this size, on a shared machine, they mean nothing.
"""

from __future__ import annotations

import pytest
from processes import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_bench_data(tmp_path):
    out = run_benchmark("bench_data.py", "--json", str(tmp_path / "out.json"), tmpdir=tmp_path)
    assert "source                 images/s  x model  x local  goal" in out
    for row in ("\nS3 parquet ", "\nS3 tfrecord ", "\nmodel train step ", "peak RSS streaming"):
        assert row in out


def test_bench_serve(tmp_path):
    out = run_benchmark("bench_serve.py", "--json", str(tmp_path / "out.json"))
    for row in ("[a] in-process: ", "[b] tl-ray wait 2 ms c=32: ", "[c] naive c=32: ", "[goals b] "):
        assert row in out


def test_bench_readback(tmp_path):
    out = run_benchmark("bench_readback.py", tmpdir=tmp_path)
    assert "with read-back s  without s  ratio  added requests (per run)" in out
    for row in ("\ningest ", "\npromotion "):
        assert row in out
