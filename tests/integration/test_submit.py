"""`tl-ray submit` and `tl-ray jobs` against a real Ray head started with `ray start --head`
(its job API on loopback): a job that succeeds, one that fails, one that is stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import free_port, kill_group, own_ray_ports
from tiny_specs import write_tiny_spec
from tl_ray.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head in its own process group, stopped by killing that group (not `ray stop`)."""
    folder = tmp_path_factory.mktemp("head")
    proc, address = start_head(folder / "head.log")
    if proc is None:  # Ray waits a fixed 30 s for its node to register, too short on a loaded 2-core machine
        proc, address = start_head(folder / "head-again.log")
    assert proc is not None, f"ray start --head failed twice; see {folder}"
    yield address
    kill_group(proc)


def start_head(log_path: Path) -> tuple[subprocess.Popen | None, str]:
    """`ray start --head --block`, once its node is up and its job API answers; (None, "") if it exits first."""
    from tl_ray.submit import client

    ray_exe = shutil.which("ray", path=os.path.dirname(sys.executable))
    gcs, dash = free_port(), free_port()
    # RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0: the head goes at once when the module is done, instead of
    # draining itself for 30 s.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [ray_exe, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
             "--dashboard-host=127.0.0.1", "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats",
             f"--ray-client-server-port={free_port()}", *own_ray_ports()],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while True:  # until `ray start` says its node is up and the job API answers
        if proc.poll() is not None:
            kill_group(proc)
            return None, ""
        assert time.monotonic() < deadline, f"ray head did not come up; see {log_path}"
        if "Ray runtime started." in log_path.read_text():
            try:
                client(address).list_jobs()
                return proc, address
            except Exception:
                pass
        time.sleep(0.5)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory, fashion_dir):
    return write_tiny_spec(tmp_path_factory.mktemp("job"), fashion_dir, "submitted")


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_submit_train_job_succeeds_and_logs_are_readable(ray_head, tiny_spec, capsys):
    path, store = tiny_spec
    code, out, err = cli(capsys, "submit", str(path), "train", "--address", ray_head,
                         "--env", "TF_CPP_MIN_LOG_LEVEL")
    assert code == 0, err
    job_id = out.split()[1].rstrip(":")
    assert f"{job_id} SUCCEEDED" in out
    assert "env forwarded by name: ['TF_CPP_MIN_LOG_LEVEL']" in out
    code, listing, _ = cli(capsys, "jobs", "list", "--address", ray_head)
    assert code == 0 and job_id in listing and "SUCCEEDED" in listing
    code, logs, _ = cli(capsys, "jobs", "logs", job_id, "--address", ray_head)
    assert code == 0 and "trial" in logs and "checkpoint" in logs
    assert any(p.name.startswith("submitted-train") for p in (Path(store) / "experiments").iterdir())


def test_failed_job_exits_non_zero_naming_the_job(ray_head, tiny_spec, capsys):
    path, _ = tiny_spec
    code, out, err = cli(capsys, "submit", str(path), "train", "--address", ray_head,
                         "--set", "data.train=datasets/missing")
    assert code == 7
    job_id = out.split()[1].rstrip(":")
    assert f"job {job_id} FAILED" in err and "tl-ray jobs logs" in err


def test_stop_a_running_job(ray_head, tiny_spec, capsys):
    from tl_ray.submit import client as job_client

    path, _ = tiny_spec
    code, out, _ = cli(capsys, "submit", str(path), "train", "--address", ray_head, "--no-wait", "--set", "train.epochs=50",
                       "--set", "train.steps_per_epoch=50")
    assert code == 0
    job_id = out.split()[1].rstrip(":")
    client = job_client(ray_head)
    deadline = time.monotonic() + 120
    while str(client.get_job_status(job_id)).split(".")[-1] == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.5)
    code, out, _ = cli(capsys, "jobs", "stop", job_id, "--address", ray_head)
    assert code == 0 and "stopping" in out
    deadline = time.monotonic() + 120
    while str(client.get_job_status(job_id)).split(".")[-1] not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.monotonic() < deadline, "job did not stop"
        time.sleep(0.5)
    assert str(client.get_job_status(job_id)).split(".")[-1] == "STOPPED"


def test_unreachable_address_and_bad_command(tiny_spec, capsys):
    path, _ = tiny_spec
    code, _, err = cli(capsys, "submit", str(path), "--address", f"http://127.0.0.1:{free_port()}")
    assert code == 7 and "cannot reach the Ray job API" in err
