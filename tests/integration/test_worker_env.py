"""The environment of the workers of a local Ray cluster that tl-ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import os, ray
from tl_ray.tune.cluster import connect_ray

connect_ray()

@ray.remote
def arenas():
    return os.environ.get("MALLOC_ARENA_MAX")

print("worker:", ray.get(arenas.remote()))
ray.shutdown()
"""


def test_workers_of_the_local_cluster_start_with_malloc_arenas_capped():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MALLOC_ARENA_MAX")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "worker: 4" in out.stdout
