"""Smoke runs of the sweep benchmarks (cache at 224 px, overhead, scale, promotion): each at its tiny size
(``--smoke``) exits 0 and prints its table; test_bench_training.py and test_bench_io.py hold the others.

Figures are never checked: at this size, on a shared machine, they mean nothing.
"""

from __future__ import annotations

import pytest
from processes import run_benchmark

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> str:
    """One store for the sweep benchmarks: the later ones reuse the data and the tiny upstream model."""
    return str(tmp_path_factory.mktemp("sweep-store"))


def test_bench_sweep_cache_224(sweep_store):
    # `cache` at 32 px differs only by its data, which the overhead and scale runs prepare.
    out = run_benchmark("bench_sweep.py", "cache", "--size", "224", "--store", sweep_store)
    for line in ("a naive (no cache, FIFO): ", "b cache + ASHA: ", "b vs a: same 2 configurations",
                 "fixed batch of 256 (before): batch 256, peak RSS ", "budget 1024 MiB (now): batch 54, peak RSS "):
        assert line in out


def test_bench_sweep_overhead(sweep_store, tmp_path):
    out = run_benchmark("bench_sweep.py", "overhead", "--store", sweep_store, "--json", str(tmp_path / "out.json"))
    assert "run                           wall s ideal s wall/ideal vs plain  trial peak RSS first -> last" in out
    for row in ("a reused actors (default)", "b a new actor per trial", "c plain (no Ray)"):
        assert f"\n{row} " in out


def test_bench_sweep_scale(sweep_store):
    out = run_benchmark("bench_sweep.py", "scale", "--store", sweep_store)
    for row in ("random + ASHA", "optuna + ASHA", "\nwall / ideal (goal <= 1.3) ", "\ndriver peak RSS MiB at ",
                "\nsnapshot bottleneck warnings (goal 0) ", "\ntl-ray report s (goal <= 10) ", "\nOptuna TPE suggestion "):
        assert row in out


def test_bench_promotion(sweep_store):
    out = run_benchmark("bench_promotion.py", "--store", sweep_store)
    for row in ("\na sweep's pick (promoted by tl-ray run) ", "\nb grid's best by validation ",
                "\nc grid's best on test (hindsight) ", "\nb - a: "):
        assert row in out
