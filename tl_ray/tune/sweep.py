"""The sweep driver: Ray Tune over ``tune.space`` with ASHA early stopping.

``run_sweep`` runs every trial through the same trial function (one worker in
the trial's actor, or a Ray Train worker group launched from it), keeps the
checkpoints in the spec's store, and returns a :class:`SweepResult` naming the
best trial and the checkpoint of its best epoch.

Example:

>>> result = run_sweep(load_spec("jobs/quickstart/target.yaml"))
>>> print(result.table())
"""

from __future__ import annotations

from pathlib import Path

from tl_ray import store
from tl_ray.errors import StorageError
from tl_ray.spec import Spec, apply_overrides, validate
from tl_ray.tune.cluster import check_reachable, connect_ray, with_cluster_gpus
from tl_ray.tune.space import to_param_space
from tl_ray.tune.staged import PARENT_KEY, run_staged, stage_trial
from tl_ray.tune.trainable import tune_trial
from tl_ray.tune.tuner import SweepResult, TrialRow, run_tuner


def run_sweep(spec: Spec, resume: bool = False, experiment: str | None = None) -> SweepResult:
    """Runs the spec's sweep on the connected (or a new local) Ray cluster.

    With ``tune.stages`` the sweep is staged (``tl_ray.tune.staged``): each stage is an
    experiment folder under the sweep's.

    Args:
        spec: the experiment spec; ``tune.space`` names the dotted fields searched.
        resume: continue the experiment of the same name, not rerunning finished trials.
        experiment: experiment folder name; defaults to the spec's name.

    Raises:
        ConfigError: the space is invalid.
        SweepInterrupted: the sweep stopped (Ctrl-C) before every trial finished; resume it.
        TrialError: no trial finished with the metric.
    """
    from ray import tune

    name = experiment or spec.name
    store.use_locking(spec.storage_locking)
    connect_ray()
    spec = with_cluster_gpus(spec)
    if spec.tune.stages:
        return run_staged(spec, resume=resume, experiment=name)
    # The base spec travels through the object store, not the config, so Tune's
    # tables and result files show only the searched fields.
    trainable = tune.with_parameters(tune_trial, base_spec=spec.to_dict())
    return run_tuner(spec, name, trainable, to_param_space(spec.tune.space), resume=resume)


def run_variants(spec: Spec, experiment: str, variants: dict[str, dict]) -> dict[str, TrialRow]:
    """One trial per named set of dotted overrides of the spec, no search, every epoch trained (fifo); returns
    each name's row. The overrides travel as a later stage's parents do (``tl_ray.tune.staged``).

    Raises:
        ConfigError: a variant's spec is invalid (before any trial starts).
    """
    from ray import tune

    connect_ray()
    base = with_cluster_gpus(spec).model_copy(deep=True)
    base.tune.space, base.tune.stages, base.tune.scheduler = {}, [], "fifo"
    for key, values in variants.items():
        validate(apply_overrides(base.to_dict(), values), source=f"{experiment} {key}")
    trainable = tune.with_parameters(stage_trial, base_spec=base.to_dict(), parents=variants)
    result = run_tuner(base, experiment, trainable, {PARENT_KEY: tune.grid_search(sorted(variants))},
                       num_samples=1, search=False)
    return {str(row.params.get(PARENT_KEY)): row for row in result.rows}


def preflight(spec: Spec) -> None:
    """Fails before any trial starts, with the one error every trial would otherwise raise and retry: a cluster
    that does not answer at ``RAY_ADDRESS``, a missing dataset or manifest, an image smaller than the backbone
    takes, weights that do not exist, ImageNet weights that cannot be downloaded (an offline node: the backbone is built here once, which leaves them in Keras'
    cache ``~/.keras/models`` for trials on this node).

    Raises:
        ClusterError, DataError, StorageError, RegistryError, ConfigError: what the trials would have failed on.
    """
    import os

    from tl_ray.data.manifest import read_manifest
    from tl_ray.models.backbones import get_backbone
    from tl_ray.models.weights import REGISTRY_SCHEME, weights_kind
    from tl_ray.registry.store import Registry

    check_reachable(os.environ.get("RAY_ADDRESS") or "local")
    read_manifest(spec.resolve(spec.data.train))
    if spec.data.validation:
        read_manifest(spec.resolve(spec.data.validation))
    get_backbone(spec.model.backbone).check_size(spec.data.image_size)
    kind, weights = weights_kind(spec.model.weights), spec.model.weights
    if kind == "registry":
        Registry(spec.storage).resolve(weights[len(REGISTRY_SCHEME):])
    elif kind == "file" and not store.exists(weights if store.is_absolute(weights) else store.join(spec.storage, weights)):
        raise StorageError(f"model.weights file {weights!r} does not exist. Stage it first (tl-ray weights stage) "
                           "or fix the path.")
    elif kind == "imagenet":
        import keras
        import tensorflow as tf

        from tl_ray.models.build import build_model

        for gpu in tf.config.list_physical_devices("GPU"):  # this process takes GPU memory only as it needs it,
            try:  # not the whole of every GPU that trials on this node will want
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # TensorFlow's runtime already started here: its setting stays
                pass
        build_model(spec.model, 2, tuple(spec.data.image_size))
        keras.backend.clear_session()


def fetch_checkpoint(uri: str, dest: str | Path) -> Path:
    """Copies a checkpoint folder from the store to a local folder."""
    if not store.is_s3(uri) and Path(uri).is_dir():
        return Path(uri)
    return store.download_dir(uri, dest)

