"""TensorFlow process set-up inside (or outside) Ray: threads, devices, strategy.

Ray sets ``OMP_NUM_THREADS=1`` in its workers and TensorFlow would otherwise
size its pools from the whole machine, whatever Ray reserved. tl-ray sizes
TensorFlow's intra-op pool from the CPUs Ray assigned to the process, before
TensorFlow's runtime starts.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)
_configured: tuple | None = None
# Wall-clock marks of this process's start-up, reported with a trial's first epoch (see startup_times).
MARKS: dict[str, float] = {}
# The Tune trial a forked trial process runs (``tl_ray.train.trial_process``): it has no Ray session.
TRIAL_CONTEXT: dict[str, str | None] = {}
_trials_begun = 0  # trials this process has started (begin_trial)
_trials_ended = 0  # of those, trials whose Keras state was freed (end_trial)


def mark(name: str) -> None:
    """Records the wall-clock time of a start-up step once per process."""
    import time

    MARKS.setdefault(name, time.time())


def begin_trial() -> None:
    """Marks a trial's start; in a process that already ran one (``tune.trial_process: reuse``, or a forked
    process's later trials), frees its Keras state unless ``end_trial`` did."""
    import time

    global _trials_begun
    if _trials_begun:
        end_trial()
        MARKS["reused"] = 1.0
        MARKS.pop("first_epoch", None)
    _trials_begun += 1
    MARKS["trial_entry"] = time.time()


def end_trial() -> None:
    """Frees the Keras state of the trial this process ran last (once; the next ``begin_trial`` skips it)."""
    global _trials_ended
    if _trials_ended == _trials_begun:
        return
    _trials_ended = _trials_begun
    import gc

    import keras

    keras.backend.clear_session(free_memory=True)
    # What survived is the process's own (modules, TensorFlow's runtime): later collections skip it,
    # which makes the next trial's clear_session a few milliseconds instead of a quarter second.
    gc.freeze()


def startup_times() -> dict[str, float]:
    """Seconds from process creation to the trial function, TensorFlow imported, and the first epoch.

    ``startup_worker_s``: process start to trial entry (Ray worker and actor start);
    ``startup_import_s``: TensorFlow's import; ``startup_setup_s``: the rest up to the first
    step (data, model build, weights, feature cache). Only the marks this process has.
    """
    import time

    created = process_created()
    marks = dict(MARKS, first_epoch=MARKS.get("first_epoch", time.time()))
    if "fork_requested" in marks:  # a child of the actor's template (tl_ray.train.trial_process)
        return _forked_startup_times(marks)
    if marks.get("reused"):  # a reused actor: no process start, TensorFlow already imported
        return {"startup_worker_s": 0.0, "startup_import_s": 0.0,
                "startup_setup_s": round(marks["first_epoch"] - marks["trial_entry"], 3)}
    out = {}
    if created is not None and "trial_entry" in marks:
        out["startup_worker_s"] = marks["trial_entry"] - created
    if "tf_import_start" in marks and "tf_imported" in marks:
        out["startup_import_s"] = marks["tf_imported"] - marks["tf_import_start"]
    begin = marks.get("tf_imported", marks.get("trial_entry"))
    if begin is not None:
        out["startup_setup_s"] = marks["first_epoch"] - begin
    return {k: round(max(0.0, v), 3) for k, v in out.items()}


def _forked_startup_times(marks: dict) -> dict[str, float]:
    """Start-up of a forked trial: the actor's start and the template's TensorFlow import count in the
    actor's first trial only; every trial pays its fork (in ``startup_worker_s``)."""
    fork = marks["process_start"] - marks["fork_requested"]
    first = bool(marks.get("template_started"))
    out = {
        "startup_worker_s": (marks.get("actor_trial_entry", 0.0) - marks.get("actor_created", 0.0) if first
                             else fork),
        "startup_import_s": fork if first else 0.0,
        "startup_setup_s": marks["first_epoch"] - marks["process_start"],
    }
    return {k: round(max(0.0, v), 3) for k, v in out.items()}


def process_created() -> float | None:
    """This process's creation time (``time.time()`` scale), None when unknown."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - the process start is unknown (no /proc)
        return None


def assigned_cpus(default: int | None = None) -> int:
    """CPUs Ray reserved for this process (whole machine outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(round(cpus)))
    except Exception:  # not in a Ray worker
        pass
    return default or os.cpu_count() or 1


def configure_tensorflow(threads: int, cpu_devices: int = 0) -> None:
    """Sets TensorFlow's thread pools and logical CPU devices (once per process).

    Args:
        threads: intra-op threads (the CPUs this process may use).
        cpu_devices: split the CPU into this many logical devices; 0 or 1 keeps one.
    """
    global _configured
    want = (threads, cpu_devices)
    if _configured == want:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    mark("tf_import_start")
    import tensorflow as tf

    mark("tf_imported")

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, min(threads, 4)))
        if cpu_devices > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
            )
    except RuntimeError:
        # The runtime already started in this process (e.g. an earlier trial in a
        # reused actor); its settings stay.
        current = tf.config.threading.get_intra_op_parallelism_threads()
        if current != threads:
            logger.warning("TensorFlow already started with %s intra-op threads; wanted %s (the CPUs Ray "
                           "assigned). Call configure_tensorflow before any TensorFlow op.", current or "default", threads)
    _configured = want


def intra_op_threads() -> int:
    """TensorFlow's intra-op pool size as configured in this process (0: TensorFlow's default)."""
    import tensorflow as tf

    return int(tf.config.threading.get_intra_op_parallelism_threads())


def make_strategy(workers: int, cpu_devices: int = 0):
    """The tf.distribute strategy for one trial worker.

    ``workers > 1``: MultiWorkerMirroredStrategy (TF_CONFIG set by Ray Train).
    Otherwise MirroredStrategy over the local GPUs, or over ``cpu_devices``
    logical CPU devices, or OneDeviceStrategy on the CPU.
    """
    import tensorflow as tf

    if workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = tf.config.list_logical_devices("CPU")
    if cpu_devices > 1 and len(cpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in cpus[:cpu_devices]])
    return tf.distribute.OneDeviceStrategy("/cpu:0")
