"""The Ray Tune trainable: a trial of the spec, trained in the trial's actor (``train.workers == 1``) or by a
Ray Train ``TensorflowTrainer`` it launches, which reports through ``TuneReportCallback``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
from ray import tune
from ray.util import get_current_placement_group, placement_group_table

from tl_ray import store
from tl_ray.spec import Spec, apply_overrides, validate
from tl_ray.spec.space import trial_overrides
from tl_ray.train.loop import train
from tl_ray.train.runtime import begin_trial, configure_tensorflow
from tl_ray.tune.cluster import with_cluster_gpus

THREAD_EXIT_TIMEOUT_S = 120  # how long a reused actor waits for its previous trial's thread to end


class _RestoreCopy:
    """The checkpoint Ray hands a restarting trial, copied into this reporter's own folder (removed on exit).

    ``Checkpoint.to_directory()`` downloads into a folder named after the checkpoint's id, which copies share:
    two trials exploiting one PBT donor, or one trial's workers, would rewrite the files another is reading.
    """

    _copy: Path | None = None

    def _checkpoint(self):
        raise NotImplementedError

    def restore_dir(self) -> Path | None:
        if self._copy is None:
            ckpt = self._checkpoint()
            if ckpt is None:
                return None
            self._copy = private_copy(ckpt)
        return self._copy

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None


def private_copy(checkpoint) -> Path:
    """Downloads a Ray checkpoint into a new temporary folder (the caller removes it)."""
    folder = tempfile.mkdtemp(prefix="tlray-restore-")
    try:
        checkpoint.to_directory(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Path(folder)


class TuneReporter(_RestoreCopy):
    """Reports a single-worker trial to Ray Tune; ``trial_id`` goes into each checkpoint (a restored one names
    the trial that wrote it: after a PBT exploit, the donor)."""

    @property
    def trial_id(self) -> str:
        return tune.get_context().get_trial_id()

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        # Each epoch's node (a restarted trial shows where it moved); Ray's GPUs beside those the process sees.
        metrics = dict(metrics, node_id=ray.get_runtime_context().get_node_id(),
                       gpu_ids=",".join(map(str, ray.get_gpu_ids())),
                       cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""))
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)

    def _checkpoint(self):
        return tune.get_checkpoint()


class TrainReporter(_RestoreCopy):
    """Reports a Ray Train worker; every worker reports, rank 0 with the checkpoint."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        # Where the worker group sits (Tune keeps rank 0's): how many nodes it spans (PACK: 1 where it fits).
        metrics = dict(metrics, group_nodes=_group_nodes(), node_id=ray.get_runtime_context().get_node_id())
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_epoch_{metrics['epoch']:04d}")

    def _checkpoint(self):
        return ray.train.get_checkpoint()


def _group_nodes() -> int:
    """Distinct nodes holding this worker group's placement-group bundles (0 outside one)."""
    pg = get_current_placement_group()
    if pg is None:
        return 0
    return len(set(placement_group_table(pg).get("bundles_to_node_id", {}).values()))


def ray_storage(spec: Spec, *parts: str) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for Ray's RunConfig under the spec's store."""
    uri = store.join(spec.storage, "experiments", *parts)
    fs, path = store.filesystem(uri)
    if store.is_s3(uri):
        return path, fs
    Path(path).mkdir(parents=True, exist_ok=True)
    return path, None


def checkpoint_uri(spec: Spec, path: str) -> str:
    """A checkpoint path reported by Ray, as a URI of the spec's store."""
    return f"s3://{path}" if store.is_s3(spec.storage) and "://" not in path else path


def train_worker(spec_dict: dict) -> None:
    """``train_loop_per_worker`` of the TensorflowTrainer."""
    spec = validate(spec_dict)
    store.use_locking(spec.storage_locking)
    configure_tensorflow(assigned_cpus(spec.train.cpus_per_worker))
    with TrainReporter() as reporter:
        train(spec, reporter, callbacks=fault_callbacks(spec, ray.train.get_context().get_world_rank()))


def run_multiworker(spec: Spec, run_name: str):
    """Runs one Tune trial on ``spec.train.workers`` Ray Train workers; returns Ray's Result."""
    from ray.train.tensorflow import TensorflowTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = with_cluster_gpus(spec, out=lambda line: None)  # a sweep resolved it already; a lone trial not
    storage_path, fs = ray_storage(spec, "train")
    resources = {"CPU": spec.train.cpus_per_worker}
    if spec.train.gpus_per_worker:
        resources["GPU"] = spec.train.gpus_per_worker
    trainer = TensorflowTrainer(
        train_worker, train_loop_config=spec.to_dict(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec.train.workers, use_gpu=spec.train.gpus_per_worker > 0,
            resources_per_worker=resources, placement_strategy=spec.train.placement),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path, storage_filesystem=fs,
            # Tune alone retries (train.max_failures), after FailFast saw the error, resuming this run from
            # its latest checkpoint: retries here too would multiply attempts at errors retrying cannot fix.
            failure_config=ray.train.FailureConfig(max_failures=0),
            # As a single-worker trial's: the best tune.keep_checkpoints by the metric, and the latest.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.tune.keep_checkpoints or None, checkpoint_score_attribute=spec.tune.metric,
                checkpoint_score_order=spec.tune.mode),
            callbacks=[TuneReportCallback()],
        ),
    )
    return trainer.fit()


def assigned_cpus(default: int | None = None) -> int:
    """CPUs Ray reserved for this process (``default``, else the whole machine, outside Ray)."""
    if ray.is_initialized():
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            return max(1, int(round(cpus)))
    return default or os.cpu_count() or 1


def fault_callbacks(spec: Spec, rank: int = 0) -> list:
    """``tl_ray.testing``'s fault injection, when a test set its variable; else none."""
    from tl_ray import testing

    if not os.environ.get(testing.ENV):
        return []
    try:
        trial_id = tune.get_context().get_trial_id() or ""
    except Exception:  # noqa: BLE001 - a Ray Train worker has no Tune context
        trial_id = ""
    return [testing.PauseAfterEpoch(spec.name, rank, trial_id, ray.get_runtime_context().get_node_id())]


def tune_trial(config: dict, base_spec: dict) -> None:
    """The Ray Tune trial function: the base spec with the trial's sampled fields set."""
    # Tune's default 2 s for the trial's thread to end before it reuses the actor is too short on a busy node.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(THREAD_EXIT_TIMEOUT_S))
    # A conditional dimension whose condition failed is None here: the spec's default applies.
    overrides = trial_overrides(base_spec.get("tune", {}).get("space", {}), config)
    spec = validate(apply_overrides(base_spec, overrides), source="trial spec")
    store.use_locking(spec.storage_locking)
    if spec.train.workers > 1:
        run_multiworker(spec, run_name=f"{spec.name}-{tune.get_context().get_trial_id()}")
        return
    begin_trial()  # a reused actor frees its previous trial's Keras state
    configure_tensorflow(assigned_cpus(spec.train.cpus_per_worker), spec.train.cpu_devices)
    with TuneReporter() as reporter:
        train(spec, reporter, callbacks=fault_callbacks(spec))
