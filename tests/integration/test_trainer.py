"""The trainer on a real local Ray cluster with data on the S3 API server:
one loss curve for every strategy, resume after a killed worker, staged weights, threads."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pytest

from tl_ray import store as storage
from tl_ray.data.ingest import ingest_fashion_mnist
from tl_ray.spec import validate

pytestmark = pytest.mark.integration

# Strategies sum the same per-example losses in different orders (and MultiWorker
# all-reduces over gRPC): the curves agree to float32 round-off, far inside this.
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def hook_dir(tmp_path_factory):
    """Arms the fault-injection hook in every Ray worker (autouse: set before the module's ray.init)."""
    from tl_ray.testing import ENV

    path = tmp_path_factory.mktemp("hooks")
    old = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = old


@pytest.fixture(scope="module")
def store(hook_dir, s3_server, fashion_dir):
    from tl_ray import store as storage

    root = f"s3://tlray-trainer-{uuid.uuid4().hex[:8]}/store"
    storage.ensure_bucket(root)
    # One shard, read in order (shuffle_buffer 1): every strategy sees the same global batches.
    ingest_fashion_mnist(storage.join(root, "datasets/one/train"), path=str(fashion_dir), classes=[0, 1, 7, 9],
                         per_class=32, rows_per_shard=1024)
    return root


def spec_dict(store: str, name: str, **train) -> dict:
    return {
        "name": name,
        "storage": store,
        "data": {"train": "datasets/one/train", "shuffle_buffer": 1},
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "head": {"dropout": 0.0}, "freeze": {"mode": "fine_tune", "unfreeze_top": 5}},
        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 1e-2, "steps_per_epoch": 2, **train},
        "tune": {"num_samples": 1, "scheduler": "fifo", "metric": "loss", "mode": "min", "checkpoint_on": "every"},
    }


def results(spec, experiment: str) -> list[dict]:
    """Every result row Ray Tune recorded for the experiment's one trial."""
    from tl_ray import store as storage

    root = storage.join(spec.storage, "experiments", experiment)
    trials = [d for d in storage.list_dir(root) if d.startswith("tune_trial")]
    assert len(trials) == 1, trials
    lines = storage.read_text(storage.join(root, trials[0], "result.json")).splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def sweep(spec_data: dict):
    from tl_ray.tune.sweep import run_sweep

    spec = validate(spec_data)
    result = run_sweep(spec, experiment=spec.name)
    assert result.rows[0].status == "DONE", result.rows[0].error
    assert result.rows[0].checkpoint.startswith("s3://")  # rank 0's checkpoint went to the store
    return spec, results(spec, spec.name)


def test_every_strategy_gives_the_same_loss_curve(ray_cluster, store):
    curves = {}
    for label, extra in {"one_device": {}, "mirrored_2_devices": {"cpu_devices": 2},
                         "multiworker_2_workers": {"workers": 2}}.items():
        _, rows = sweep(spec_dict(store, f"curve-{label}", **extra))
        curves[label] = [r["loss"] for r in rows]
    reference = curves["one_device"]
    assert len(reference) == 3 and reference[-1] < reference[0]
    for label, curve in curves.items():
        assert curve == pytest.approx(reference, rel=LOSS_RTOL), (label, curves)


def _recorded_epoch(experiment_uri: str, epoch: int) -> bool:
    """Whether the trial's result.json in the store holds a row for ``epoch``."""
    for trial in storage.list_dir(experiment_uri):
        uri = storage.join(experiment_uri, trial, "result.json")
        if trial.startswith("tune_trial") and storage.exists(uri):
            if any(json.loads(line).get("epoch") == epoch for line in storage.read_text(uri).splitlines() if line.strip()):
                return True
    return False


def _run_and_kill(spec_data: dict, hook_dir, ranks: list[int]) -> tuple[list[dict], list[int]]:
    """Runs the trial in a thread, kills the given workers' processes once they pause after epoch 2."""
    name = spec_data["name"]
    folder = hook_dir / name
    folder.mkdir()
    (folder / "pause_after_epoch").write_text("2")
    outcome = {}

    def target():
        try:
            outcome["value"] = sweep(spec_data)
        except BaseException as exc:  # surfaced in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    pid_files = [folder / f"pid.{r}" for r in ranks]
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in pid_files):
        assert thread.is_alive(), outcome.get("error")
        assert time.monotonic() < deadline, "the workers never reached epoch 2"
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in pid_files]
    # Tune handles a report asynchronously: kill only once the driver has recorded epoch 2 (and so its
    # checkpoint), or the restart would begin from an older checkpoint.
    root = storage.join(spec_data["storage"], "experiments", name)
    while not _recorded_epoch(root, 2):
        assert time.monotonic() < deadline, "Tune never recorded epoch 2"
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert not thread.is_alive(), "the trial did not finish after the kill"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"][1], pids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_ray_train_worker_resumes_from_its_checkpoint(ray_cluster, store, hook_dir):
    rows, pids = _run_and_kill(spec_dict(store, "kill-multiworker", workers=2), hook_dir, ranks=[1])
    assert not _pid_alive(pids[0])
    epochs = [r["epoch"] for r in rows]
    assert epochs[-1] == 3 and rows[-1]["steps"] == 3 * 2  # as many steps as an uninterrupted run
    assert epochs.count(3) == 1  # epoch 3 ran once, after the restart from the epoch-2 checkpoint


def test_killed_tune_trial_resumes_from_its_checkpoint(ray_cluster, store, hook_dir):
    rows, pids = _run_and_kill(spec_dict(store, "kill-single", checkpoint_every=2), hook_dir, ranks=[0])
    assert not _pid_alive(pids[0])
    assert rows[-1]["epoch"] == 3 and rows[-1]["steps"] == 3 * 2
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # resumed at epoch 3, not from scratch


def test_staged_weights_train_from_s3_with_ray_assigned_threads(ray_cluster, store):
    import numpy as np

    from tl_ray import store as storage
    from tl_ray.cli import main

    uri = storage.join(store, "weights/mobilenet-a025.weights.h5")
    assert main(["weights", "stage", "mobilenet", "--to", uri, "--weights", "none", "--arg", "alpha=0.25"]) == 0
    assert storage.exists(uri)
    data = spec_dict(store, "staged", epochs=1, cpus_per_worker=2)
    data["model"]["weights"] = uri
    _, rows = sweep(data)
    assert np.isfinite(rows[-1]["loss"])
    assert rows[-1]["intra_op_threads"] == 2  # from the CPUs Ray assigned, despite OMP_NUM_THREADS=1
