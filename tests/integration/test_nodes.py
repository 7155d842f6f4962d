"""Several nodes on one machine: a trial whose node is removed mid-run resumes from its
checkpoint on another node (Ray's multi-node test cluster), and a 2-worker SPREAD trial
spans the two raylets of a real `ray start --head` / `ray start --address` pair."""

from __future__ import annotations

import contextlib
import json
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
import yaml
from processes import free_port, kill_group, own_ray_ports
from tl_ray.spec import validate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 3
LOST_AFTER = 2  # the node is removed once the trial has reported (and checkpointed) this epoch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_dir):
    from tl_ray.data.ingest import ingest_fashion_mnist

    store = tmp_path_factory.mktemp("nodes") / "store"
    ingest_fashion_mnist(str(store / "datasets/n/train"), path=str(fashion_dir), classes=[0, 1], per_class=32,
                         validation_to=str(store / "datasets/n/val"), validation_per_class=8, rows_per_shard=16)
    return store


def spec_for(store: Path, name: str, **train) -> dict:
    return {
        "name": name,
        "storage": str(store),
        "data": {"train": "datasets/n/train", "validation": "datasets/n/val"},
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "freeze": {"mode": "full"}, "head": {"dropout": 0.0}},
        "train": {"batch_size": 16, "steps_per_epoch": 1, **train},
        "tune": {"num_samples": 1, "scheduler": "fifo", "checkpoint_on": "every"},
    }


def trial_rows(trial: Path) -> list[dict]:
    path = trial / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(condition, what: str, alive=lambda: None, timeout: float = 300.0):
    """Polls ``condition`` until it returns a truthy value; ``alive`` raises if the run died."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        alive()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- a node lost mid-trial ---------------------------------------------------------
@pytest.fixture
def hook_dir(tmp_path):
    """Arms the fault-injection hook; set before the cluster starts so its workers inherit it."""
    from tl_ray.testing import ENV

    old = os.environ.get(ENV)
    os.environ[ENV] = str(tmp_path / "hooks")
    yield tmp_path / "hooks"
    if old is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = old


@pytest.fixture
def node_cluster(hook_dir):
    """A head that can host no trial (no CPU) and two 1-CPU worker nodes, either of which can.

    The test process does not connect: the sweep's driver runs in its own process.
    """
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


# The sweep's driver: run_sweep on the spec file, the result rows as JSON on the last line.
DRIVER = """
import dataclasses, json, sys, yaml
from tl_ray.spec import validate
from tl_ray.tune.sweep import run_sweep
spec = validate(yaml.safe_load(open(sys.argv[1])))
result = run_sweep(spec, experiment=spec.name)
print(json.dumps([dataclasses.asdict(r) for r in result.rows]))
"""


def test_trial_on_a_lost_node_resumes_from_its_checkpoint_on_another(node_cluster, hook_dir, dataset, tmp_path):
    from tl_ray.train.checkpoint import read_state

    # Checkpoints ranked by steps, one kept (older ones are deleted once the trial has ended).
    data = spec_for(dataset, f"lose-{uuid.uuid4().hex[:6]}", epochs=EPOCHS, checkpoint_every=1, max_failures=1)
    data["tune"].update(metric="steps", mode="max", keep_checkpoints=1)
    spec = validate(data)
    folder = hook_dir / spec.name
    folder.mkdir(parents=True)
    (folder / "pause_after_epoch").write_text(str(LOST_AFTER))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(data))

    out_path, log_path = tmp_path / "driver.out", tmp_path / "driver.log"
    env = dict(os.environ, RAY_ADDRESS=node_cluster.address, TF_CPP_MIN_LOG_LEVEL="2")
    with open(out_path, "w") as out, open(log_path, "w") as log:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(spec_path)], stdout=out, stderr=log,
                                  env=env, start_new_session=True)
    try:
        def alive():
            assert driver.poll() is None, log_path.read_text()[-3000:]

        experiment = dataset / "experiments" / spec.name
        # The pause comes once tune.report of epoch k has returned, which Tune allows only after it has
        # registered that epoch's checkpoint: the trial would restart from epoch k.
        wait_until(lambda: (folder / "pid.0").exists(), f"the trial to pause after epoch {LOST_AFTER}", alive)
        lost_id = (folder / "node.0").read_text()
        (trial,) = experiment.glob("tune_trial_*")
        # Tune copies a recovered trial's result.json back from the store, as of the driver's last save of the
        # experiment (every 10 s or so): wait for that save to hold epoch k.
        wait_until(lambda: len(trial_rows(trial)) == LOST_AFTER, f"the store's result.json to hold epoch {LOST_AFTER}",
                   alive)
        (lost,) = [n for n in node_cluster.worker_nodes if n.node_id == lost_id]
        node_cluster.remove_node(lost)
        driver.wait(timeout=600)
    finally:
        kill_group(driver)
    assert driver.returncode == 0, log_path.read_text()[-3000:]
    (row,) = json.loads(out_path.read_text().strip().splitlines()[-1])
    assert row["status"] == "DONE" and row["epochs"] == EPOCHS, row["error"]

    # The driver writes result.json to its own staging folder and copies it to the store from time
    # to time, so the rows are read once the sweep has ended: those from the lost node come first.
    rows = trial_rows(trial)
    before = [r for r in rows if r["node_id"] == lost_id]
    assert rows[: len(before)] == before
    assert [r["epoch"] for r in before] == list(range(1, LOST_AFTER + 1))
    after = rows[len(before):]
    # Resumed from the epoch-k checkpoint: the next report is epoch k+1 and no epoch ran twice.
    assert [r["epoch"] for r in after] == list(range(LOST_AFTER + 1, EPOCHS + 1))
    assert after[-1]["steps"] == EPOCHS * spec.train.steps_per_epoch
    moved_to = {r["node_id"] for r in after}
    (survivor,) = node_cluster.worker_nodes
    assert moved_to == {survivor.node_id} != {lost_id}
    (last,) = [d for d in trial.glob("checkpoint_*") if (d / "state.json").is_file()]  # the best is the latest
    assert read_state(last)["epoch"] == EPOCHS


# -- a real `ray start` head and a second raylet -------------------------------------
# Lists the cluster's alive nodes once all (argv[1]) raylets have joined: {node_id: its tlray_* resource}.
NODES = """
import json, sys, time, ray
ray.init(log_to_driver=False)  # RAY_ADDRESS
deadline = time.monotonic() + 120
while len(alive := [n for n in ray.nodes() if n["Alive"]]) < int(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.2)
print(json.dumps({n["NodeID"]: [k for k in n["Resources"] if k.startswith("tlray_")] for n in alive}))
"""


@pytest.fixture
def ray_start_pair(tmp_path):
    """`ray start --head` and `ray start --address` on this machine, each blocking in its own process group.

    Yields the environment for a driver (RAY_ADDRESS and the token) and {node_id: resource label}.
    """
    with _ray_start(tmp_path, ["head", "second"]) as cluster:
        yield cluster


@contextlib.contextmanager
def _ray_start(tmp_path, labels: list[str]):
    """`ray start --head`, then (for "second") `ray start --address`, each blocking in its own process group.

    Both share a private, short temp dir (Unix socket paths are limited to ~107 bytes) and
    take their own ports, so they coexist with other Ray instances on the machine; a custom
    resource names each node. Token authentication (on by default for `ray start`) uses a
    token of the test's own, passed in the environment, not ~/.ray/auth_token.
    Stopped by killing the process groups, never `ray stop`.
    """
    import secrets

    ray_exe = shutil.which("ray", path=os.path.dirname(sys.executable))
    temp_dir = tempfile.mkdtemp(prefix="tlr-", dir="/tmp")
    gcs_port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}")
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    # The whole cluster goes at once: draining a node first (up to 30 s on SIGTERM, and
    # the head never finishes) only slows the teardown.
    node_env = dict(env, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    common = ["--block", "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    commands = {
        "head": [ray_exe, "start", "--head", f"--port={gcs_port}", "--include-dashboard=false",
                 f"--ray-client-server-port={free_port()}", '--resources={"tlray_head": 1}', *common, *own_ray_ports()],
        "second": [ray_exe, "start", f"--address=127.0.0.1:{gcs_port}", '--resources={"tlray_second": 1}',
                   *common, *own_ray_ports()],
    }
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    try:
        for label in labels:
            logs[label] = open(tmp_path / f"{label}.log", "w")
            procs[label] = subprocess.Popen(commands[label], stdout=logs[label], stderr=subprocess.STDOUT,
                                            env=node_env, start_new_session=True)
            if label == "head":
                _wait_for_port("127.0.0.1", gcs_port, procs[label], tmp_path / "head.log")
        env["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
        listing = subprocess.run([sys.executable, "-c", NODES, str(len(labels))], capture_output=True, text=True,
                                 env=env, timeout=300)
        for label, proc in procs.items():
            assert proc.poll() is None, (tmp_path / f"{label}.log").read_text()[-3000:]
        assert listing.returncode == 0, listing.stderr[-3000:]
        nodes = json.loads(listing.stdout.strip().splitlines()[-1])
        yield env, {node_id: labels[0] for node_id, labels in nodes.items() if labels}
    finally:
        for proc in reversed(list(procs.values())):
            kill_group(proc)
        for log in logs.values():
            log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    def open_():
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(open_, f"{host}:{port} to open", timeout=timeout)


def tune_job(env: dict, store: Path, data: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Runs `tl-ray tune` on ``data`` (one trial) as a job of the cluster in ``env``; its output and the trial's
    result rows."""
    spec_path = tmp_path / f"{data['name']}.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    # `tl-ray tune` joins the cluster through RAY_ADDRESS (connect_ray).
    run = subprocess.run([sys.executable, "-m", "tl_ray.cli", "tune", str(spec_path)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (experiment,) = (store / "experiments").glob(f"{data['name']}-*")
    (trial,) = experiment.glob("tune_trial_*")
    return run, trial_rows(trial)


def test_spread_trial_spans_two_ray_start_raylets(ray_start_pair, dataset, tmp_path):
    env, labels = ray_start_pair
    assert sorted(labels.values()) == ["tlray_head", "tlray_second"]
    data = spec_for(dataset, f"pair-{uuid.uuid4().hex[:6]}", epochs=1, workers=2, placement="SPREAD",
                    cpus_per_worker=1)
    run, rows = tune_job(env, dataset, data, tmp_path)
    trial_id = rows[-1]["trial_id"]  # the results table names trials by Tune's trial id
    assert any(line.startswith(trial_id) and line.split()[-1] == "DONE" for line in run.stdout.splitlines())
    assert [r["epoch"] for r in rows] == [1]
    assert rows[-1]["group_nodes"] == 2  # the worker group's bundles sit on both raylets
    assert rows[-1]["node_id"] in labels  # rank 0 ran on this cluster, not on a local one
