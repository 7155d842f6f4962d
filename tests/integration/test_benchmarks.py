"""Smoke runs of the benchmarks: each script at its tiny size (``--smoke``) exits 0 and prints its table.

Figures are never checked: at this size, on a shared machine, they mean nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import kill_group

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_benchmark(script: str, *args: str, tmpdir: Path | None = None, timeout: float = 900) -> str:
    """Runs ``benchmarks/<script> --smoke ARGS`` from the repository root; returns its stdout.

    The script imports this checkout's tl_ray and starts a local Ray of its own (no ``RAY_ADDRESS``); it
    runs in a session of its own, so that a timeout takes its Ray and S3 server processes with it.
    ``tmpdir``: its temporary files go there (for a script with no store option and no Ray).
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    if tmpdir:
        env["TMPDIR"] = str(tmpdir)
    proc = subprocess.Popen([sys.executable, f"benchmarks/{script}", "--smoke", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}\n{out[-4000:]}\n{err[-4000:]}"
    return out


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory) -> str:
    """One store for both sweep benchmarks: the second reuses the data and the tiny upstream model."""
    return str(tmp_path_factory.mktemp("sweep-store"))


def test_bench_sweep_cache(sweep_store):
    out = run_benchmark("bench_sweep.py", "cache", "--store", sweep_store)
    for line in ("a naive (no cache, FIFO): ", "b cache + ASHA: ", "b vs a: same 2 configurations"):
        assert line in out


def test_bench_sweep_cache_224(sweep_store):
    out = run_benchmark("bench_sweep.py", "cache", "--size", "224", "--store", sweep_store)
    for line in ("a naive (no cache, FIFO): ", "b cache + ASHA: ", "b vs a: same 2 configurations",
                 "fixed batch of 256 (before): batch 256, peak RSS ", "budget 1024 MiB (now): batch 54, peak RSS "):
        assert line in out


def test_bench_sweep_overhead(sweep_store, tmp_path):
    out = run_benchmark("bench_sweep.py", "overhead", "--store", sweep_store, "--json", str(tmp_path / "out.json"))
    assert "run                           wall s ideal s wall/ideal vs plain  trial peak RSS first -> last" in out
    for row in ("a reused actors (default)", "b a new actor per trial", "c plain (no Ray)"):
        assert f"\n{row} " in out


def test_bench_train(tmp_path):
    out = run_benchmark("bench_train.py", "--store", str(tmp_path))
    assert "| run " in out
    for row in ("| plain Keras model.fit", "| tl-ray trial, reader from store", "| tl-ray trial, Ray's default threads"):
        assert row in out


def test_bench_data(tmp_path):
    out = run_benchmark("bench_data.py", "--json", str(tmp_path / "out.json"), tmpdir=tmp_path)
    assert "source                 images/s  x model  x local  goal" in out
    for row in ("\nS3 parquet ", "\nS3 tfrecord ", "\nmodel train step ", "peak RSS streaming"):
        assert row in out


def test_bench_serve(tmp_path):
    out = run_benchmark("bench_serve.py", "--json", str(tmp_path / "out.json"))
    for row in ("[a] in-process: ", "[b] tl-ray wait 2 ms c=32: ", "[c] naive c=32: ", "[goals b] "):
        assert row in out


def test_bench_gpu(tmp_path):
    # Without a GPU the smoke runs every row on 2 logical CPU devices standing in for 2 GPUs.
    out = run_benchmark("bench_gpu.py", "--store", str(tmp_path), "--json", str(tmp_path / "out.json"))
    assert "| run " in out and "| scaling efficiency |" in out
    for row in ("| 1 ", "| 2 ", "| 2 Ray workers x 1 ", ", mixed_float16 ", "| reader alone, 32 px JPEG ",
                "mixed precision speed-up at 2 ", "input at 32 px: the reader alone delivers "):
        assert row in out


def test_bench_readback(tmp_path):
    out = run_benchmark("bench_readback.py", tmpdir=tmp_path)
    assert "with read-back s  without s  ratio  added requests (per run)" in out
    for row in ("\ningest ", "\npromotion "):
        assert row in out


def test_bench_promotion(sweep_store):
    out = run_benchmark("bench_promotion.py", "--store", sweep_store)
    for row in ("\na sweep's pick (promoted by tl-ray run) ", "\nb grid's best by validation ",
                "\nc grid's best on test (hindsight) ", "\na vs b: "):
        assert row in out
