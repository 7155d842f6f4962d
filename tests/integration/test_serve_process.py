"""`tl-ray serve` stopped as Kubernetes and systemd stop a process: SIGTERM to it alone. The request in flight
is answered, Serve shuts down, the process exits 0 and prints no stack dump.

The process starts a local Ray of its own (no fixture cluster): its drain shuts Serve down.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from processes import kill_group
from tiny_models import SIZE, publish, small_model

pytestmark = pytest.mark.integration

TIMEOUT_S = 240
# A lone request waits this long in @serve.batch for company: long enough to be in flight when SIGTERM lands.
HOLD_S = 3.0
DUMPS = ("*** SIGTERM received", "Fatal Python error", "Stack (most recent call first)",
         "Traceback (most recent call last)", "Aborted", "core dumped")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(tmp_path: Path, port: int) -> Path:
    from tl_ray.registry.store import Registry

    store = str(tmp_path / "store")
    Registry(store).set_alias("tiny", "production", publish(store, small_model(seed=0), tmp_path / "export"))
    spec = {
        "name": "serve-sigterm", "storage": store,
        "data": {"train": "unused/train", "image_size": list(SIZE)},
        "model": {"backbone": "mobilenet_v2", "weights": "none"},
        "promote": {"name": "tiny"},
        "serve": {"port": port, "max_batch_size": 8, "batch_wait_timeout_s": HOLD_S,
                  "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _wait_until(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            if condition():
                return
        except requests.RequestException:
            pass  # not up yet
        assert proc.poll() is None, f"tl-ray serve exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def test_sigterm_answers_the_request_in_flight_then_exits_0(tmp_path):
    port = _free_port()
    spec = _spec(tmp_path, port)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", TLRAY_CACHE=str(tmp_path / "cache"))
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    url = f"http://127.0.0.1:{port}"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tl_ray.cli", "serve", str(spec)], stdout=stdout,
                                stderr=stderr, env=env, start_new_session=True)
    answer: dict = {}

    def post():
        body = {"instances": [np.full((8, 8), 100).tolist()]}
        try:
            answer["response"] = requests.post(f"{url}/predict", json=body, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            answer["error"] = exc
        answer["at"] = time.monotonic()

    try:
        _wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).ok, proc, "the application answers")
        sender = threading.Thread(target=post)
        sender.start()
        _wait_until(lambda: requests.get(f"{url}/metadata", timeout=5).json()["serving"]["in_flight"] == 1,
                    proc, "the request is inside the replica")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        sender.join(TIMEOUT_S)
        code = proc.wait(TIMEOUT_S)
    finally:
        kill_group(proc)
    stdout, stderr = out.read_text(), err.read_text()
    assert "response" in answer, f"the request in flight got no answer: {answer.get('error')!r}"
    response = answer["response"]
    assert response.status_code == 200 and response.json()["model"] == "tiny:v1", response.text
    assert answer["at"] > signalled  # still in flight when the signal came: the drain waited for it
    assert code == 0, stdout[-2000:] + stderr[-3000:]
    assert "[serve] SIGTERM: answering the requests in flight, then stopping" in stdout
    assert stdout.rstrip().endswith("[serve] stopped"), stdout[-2000:]
    assert [d for d in DUMPS if d in stderr] == [], stderr[-3000:]
