"""TensorFlow process set-up inside (or outside) Ray: threads (from the CPUs Ray assigned, not the whole
machine), devices, strategy."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)
_configured: tuple | None = None
_trials_begun = 0  # trials this process has started (begin_trial)


def begin_trial() -> None:
    """Marks a trial's start; in a process that already ran one (a reused Tune actor), frees the previous
    trial's Keras state first."""
    global _trials_begun
    if _trials_begun:
        import gc

        import keras

        keras.backend.clear_session(free_memory=True)
        # What survived is the process's own (modules, TensorFlow's runtime): later collections skip it.
        gc.freeze()
    _trials_begun += 1


def configure_tensorflow(threads: int, cpu_devices: int = 0) -> None:
    """Sets TensorFlow's intra-op threads and splits the CPU into ``cpu_devices`` logical devices (0 or 1: no
    split), once per process and before TensorFlow's runtime starts."""
    global _configured
    want = (threads, cpu_devices)
    if _configured == want:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, min(threads, 4)))
        if cpu_devices > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
            )
    except RuntimeError:
        # The runtime already started in this process (an earlier trial in a reused actor); its settings stay.
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

    ``workers > 1``: MultiWorkerMirroredStrategy (TF_CONFIG set by Ray Train); else MirroredStrategy over the
    local GPUs or ``cpu_devices`` logical CPUs, else OneDeviceStrategy on the CPU.
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


def worker_position(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers) of a strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 0, 1
    spec = resolver.cluster_spec().as_dict()
    n = len(spec.get("worker", [])) + len(spec.get("chief", []))
    return (int(resolver.task_id or 0), n) if n > 1 else (0, 1)
