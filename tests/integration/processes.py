"""Helpers for tests that start processes of their own (a sweep's driver, `ray start --block`, a benchmark)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kill_group(proc: subprocess.Popen) -> None:
    """Stops a process started in its own session, then kills whatever is left of its group.

    SIGTERM goes to the leader alone, so `ray start --block` stops its own Ray processes
    in order (SIGTERM to the whole group would take the GCS first, and the leader would wait
    30 s for it to drain the node); SIGKILL to the group then takes any straggler.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    proc.wait()


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


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_ray_ports() -> list[str]:
    """`ray start` options for the ports every raylet on this host would otherwise share (defaults like 52365):
    Ray clusters of tests that run at the same time would take each other's, and a head whose job agent
    cannot bind refuses jobs ("No available agent")."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0"]
