"""Shared fixtures: two S3 API servers on loopback, of two implementations (moto's server mode, and the
Node.js s3rver that scripts/setup.sh installs under tests/s3rver), and the Fashion-MNIST files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Polls until ``host:port`` accepts connections (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{host}:{port} did not open within {timeout}s")


S3RVER_BIN = ROOT / "tests" / "s3rver" / "node_modules" / ".bin" / "s3rver"
S3RVER_SERVE = ROOT / "tests" / "s3rver" / "serve.js"  # s3rver's own command line, one crash turned into a 500


class S3Server:
    """An S3 API server process on a loopback port; can be stopped and restarted on the same port.

    Args:
        kind: ``"moto"`` (honours conditional writes) or ``"s3rver"`` (ignores them, checks signatures,
            lists deep folders only without a delimiter: the store of issue 20).
    """

    CREDENTIALS = {"moto": ("testing", "testing"), "s3rver": ("S3RVER", "S3RVER")}

    def __init__(self, port: int | None = None, kind: str = "moto", data_dir: Path | None = None):
        self.port = port or free_port()
        self.kind, self.data_dir = kind, data_dir
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The AWS environment that points boto3, pyarrow and Ray at this server."""
        key, secret = self.CREDENTIALS[self.kind]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "s3rver":
            if not S3RVER_BIN.exists():
                raise RuntimeError(f"{S3RVER_BIN} not found: run scripts/setup.sh (npm ci --prefix tests/s3rver)")
            node = shutil.which("node") or "node"
            return [node, str(S3RVER_SERVE), "-d", str(self.data_dir), "-a", "127.0.0.1", "-p", str(self.port), "-s"]
        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
        if exe is None:
            raise RuntimeError("moto_server not found: install the test extra (pip install -e '.[test]')")
        return [exe, "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self) -> None:
        self.log = Path(tempfile.gettempdir()) / f"tlray-{self.kind}-{self.port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, self.proc)
        forget_endpoint(self.endpoint)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def forget_endpoint(endpoint: str) -> None:
    """Drops what this process learnt about the store at ``endpoint``: a port freed by one server can
    be taken by another kind of server later in the session."""
    from tl_ray.store import locking, objects

    objects._delimiter_works.pop(endpoint, None)
    for key in [k for k in locking._probed if k[0] == endpoint]:
        locking._probed.pop(key, None)


@pytest.fixture(scope="session")
def s3_server():
    """The S3 API on loopback; sets the AWS environment so boto3, pyarrow and Ray find it."""
    server = S3Server()
    server.start()
    env = server.env
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_store(s3_server):
    """A fresh ``s3://bucket/prefix`` on the loopback server."""
    from tl_ray import store

    uri = f"s3://tlray-test-{uuid.uuid4().hex[:10]}/store"
    store.ensure_bucket(uri)
    return uri


@pytest.fixture(scope="session")
def s3rver_server(tmp_path_factory):
    """The second S3 API implementation on loopback (the environment is set per test by ``any_s3``)."""
    server = S3Server(kind="s3rver", data_dir=tmp_path_factory.mktemp("s3rver"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["moto", "s3rver"])
def any_s3(request, s3_server, monkeypatch):
    """Each S3 API server in turn, with the environment pointing at it: ``(server, fresh s3://bucket/store)``."""
    from tl_ray import store

    server = s3_server if request.param == "moto" else request.getfixturevalue("s3rver_server")
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    uri = f"s3://tlray-test-{uuid.uuid4().hex[:10]}/store"
    store.ensure_bucket(uri)
    return server, uri


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"Fashion-MNIST IDX files are missing under {FASHION_DIR}: "
            "apt-get install dataset-fashion-mnist (the README's test command does this)."
        )
    return FASHION_DIR
