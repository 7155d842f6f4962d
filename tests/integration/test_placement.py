"""Placement across nodes on Ray's multi-node test cluster (one machine, several raylets):
simulated nodes of 8 "GPUs" run 2-worker × 4-GPU trials, two at a time, each trial's workers
on one node with PACK and on different nodes with SPREAD; single-worker trials in reused
actors each see exactly the GPUs Ray assigned them."""

from __future__ import annotations

import json
import uuid

import pytest

from tl_ray.spec import validate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, fashion_dir):
    from tl_ray.data.ingest import ingest_fashion_mnist

    store = tmp_path_factory.mktemp("placement") / "store"
    ingest_fashion_mnist(str(store / "datasets/p/train"), path=str(fashion_dir), classes=[0, 1], per_class=32,
                         validation_to=str(store / "datasets/p/val"), validation_per_class=8, rows_per_shard=16)
    return str(store)


@pytest.fixture(scope="module")
def sim_cluster():
    """A head for the drivers and 4 worker nodes of 2 CPUs and 8 fake GPUs each, shared by the module's tests."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    nodes = [cluster.add_node(num_cpus=2, num_gpus=8) for _ in range(4)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def spec_for(store: str, name: str, placement: str, **train) -> dict:
    return {
        "name": name,
        "storage": store,
        "data": {"train": "datasets/p/train", "validation": "datasets/p/val"},
        "model": {"backbone": "mobilenet", "backbone_args": {"alpha": 0.25}, "weights": "none",
                  "freeze": {"mode": "feature_extraction"}, "head": {"dropout": 0.0}},
        "train": {"workers": 2, "gpus_per_worker": 4, "cpus_per_worker": 1, "placement": placement,
                  "feature_cache": "off",
                  "epochs": 1, "batch_size": 16, "steps_per_epoch": 1, **train},
        "tune": {"num_samples": 4, "scheduler": "fifo"},
    }


def _reports(store: str, experiment: str) -> dict[str, list[dict]]:
    from pathlib import Path

    out = {}
    for trial in (Path(store) / "experiments" / experiment).glob("tune_trial_*"):
        rows = [json.loads(l) for l in (trial / "result.json").read_text().splitlines() if l.strip()]
        out[trial.name] = rows
    return out


def test_pack_runs_two_trials_at_once_each_on_one_node(sim_cluster, dataset):
    from tl_ray.tune.sweep import run_sweep

    data = spec_for(dataset, f"pack-{uuid.uuid4().hex[:6]}", "PACK")
    data["tune"]["num_samples"] = 2
    spec = validate(data)
    result = run_sweep(spec, experiment=spec.name)
    assert [r.status for r in result.rows] == ["DONE"] * 2, [r.error for r in result.rows]
    reports = _reports(dataset, spec.name)
    last = [rows[-1] for rows in reports.values()]
    assert all(r["group_nodes"] == 1 for r in last)  # both workers of a trial share a node
    assert len({r["node_id"] for r in last}) == 2  # and the two trials hold two nodes
    # Both ran at the same time: every trial started before any trial ended.
    starts = [rows[0]["timestamp"] - rows[0]["time_this_iter_s"] for rows in reports.values()]
    ends = [rows[-1]["timestamp"] for rows in reports.values()]
    assert max(starts) < min(ends)


def test_spread_puts_a_trials_workers_on_different_nodes(sim_cluster, dataset):
    from tl_ray.tune.sweep import run_sweep

    data = spec_for(dataset, f"spread-{uuid.uuid4().hex[:6]}", "SPREAD")
    data["tune"]["num_samples"] = 1
    spec = validate(data)
    result = run_sweep(spec, experiment=spec.name)
    assert result.rows[0].status == "DONE", result.rows[0].error
    (rows,) = _reports(dataset, spec.name).values()
    assert rows[-1]["group_nodes"] == 2


def test_single_worker_trials_see_exactly_the_gpus_ray_assigned_them_in_reused_actors(sim_cluster, dataset):
    from tl_ray.tune.sweep import run_sweep

    data = spec_for(dataset, f"gpus-{uuid.uuid4().hex[:6]}", "PACK", workers=1, gpus_per_worker=2)
    data["tune"]["num_samples"] = 12  # 8 at a time (2 CPUs on each of 4 nodes): Tune reuses actors for the rest
    spec = validate(data)
    result = run_sweep(spec, experiment=spec.name)
    assert [r.status for r in result.rows] == ["DONE"] * 12, [r.error for r in result.rows]
    rows = [r[-1] for r in _reports(dataset, spec.name).values()]
    for row in rows:
        assert len(row["gpu_ids"].split(",")) == 2
        assert row["cuda_visible_devices"] == row["gpu_ids"]  # what TensorFlow in the training process sees
        assert row["trial_pid"] == row["pid"]  # trained in the actor Ray gave the GPUs to
    assert len({r["pid"] for r in rows}) < 12  # later trials ran in earlier trials' actors


def test_gpus_per_worker_auto_takes_one_gpu_per_worker_where_the_cluster_has_gpus(sim_cluster, dataset):
    from tl_ray.tune.cluster import with_cluster_gpus

    data = spec_for(dataset, "auto", "PACK")
    del data["train"]["gpus_per_worker"]
    spec = validate(data)
    assert spec.train.gpus_per_worker == "auto"
    assert with_cluster_gpus(spec).train.gpus_per_worker == 1.0
    data["train"]["gpus_per_worker"] = 0
    said = []
    assert with_cluster_gpus(validate(data), out=said.append).train.gpus_per_worker == 0
    assert said and "the cluster has 32 GPUs, but train.gpus_per_worker is 0" in said[0]
