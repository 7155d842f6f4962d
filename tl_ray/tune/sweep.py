"""The sweep driver: Ray Tune over ``tune.space``; its ``SweepResult`` names the best trial and checkpoint."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from ray import tune

from tl_ray import store
from tl_ray.data.manifest import read_manifest
from tl_ray.errors import StorageError
from tl_ray.models.backbones import get_backbone
from tl_ray.models.weights import REGISTRY_SCHEME, weights_kind
from tl_ray.spec import Spec
from tl_ray.spec.space import Distribution, parse_space
from tl_ray.tune.cluster import check_reachable, connect_ray, with_cluster_gpus
from tl_ray.tune.space import to_param_space
from tl_ray.tune.staged import PARENT_KEY, run_children, run_staged
from tl_ray.tune.trainable import tune_trial
from tl_ray.tune.tuner import SweepResult, TrialRow, run_tuner


def run_sweep(spec: Spec, resume: bool = False, experiment: str | None = None) -> SweepResult:
    """Runs the spec's sweep (staged with ``tune.stages``) on the connected (or a new local) Ray cluster.

    Args:
        resume: continue the experiment of the same name, not rerunning finished trials.
        experiment: experiment folder name; defaults to the spec's name.

    Raises:
        ConfigError: the space is invalid.
        SweepInterrupted: the sweep stopped (Ctrl-C) before every trial finished; resume it.
        TrialError: no trial finished with the metric.
    """
    name = experiment or spec.name
    store.use_locking(spec.storage_locking)
    connect_ray()
    spec = with_cluster_gpus(spec)
    if spec.tune.stages:
        return run_staged(spec, resume=resume, experiment=name)
    # The base spec travels through the object store, not the config: Tune's tables show only searched fields.
    trainable = tune.with_parameters(tune_trial, base_spec=spec.to_dict())
    return run_tuner(spec, name, trainable, to_param_space(spec.tune.space), resume=resume)


def run_variants(spec: Spec, experiment: str, variants: dict[str, dict]) -> dict[str, TrialRow]:
    """One trial per named set of dotted overrides, every epoch trained (fifo); returns each name's row.

    Raises:
        ConfigError: a variant's spec is invalid (before any trial starts).
    """
    connect_ray()
    base = with_cluster_gpus(spec).model_copy(deep=True)
    base.tune.space, base.tune.stages, base.tune.scheduler = {}, [], "fifo"
    base.tune.max_concurrent_trials = 0  # the search's limit: these runs share no search, nothing to wait for
    result = run_children(base, experiment, variants, experiment)
    return {str(row.params.get(PARENT_KEY)): row for row in result.rows}


def preflight(spec: Spec) -> None:
    """Fails before any trial starts, with the error every trial would otherwise raise and retry, for every
    dataset, backbone and image size ``tune.space`` lists. ImageNet weights are downloaded here, once.

    Raises:
        ClusterError, DataError, StorageError, RegistryError, ConfigError: what every trial would fail on.
    """
    from tl_ray.registry.store import Registry

    check_reachable(os.environ.get("RAY_ADDRESS") or "local")
    dists = parse_space(spec.tune.space)
    for key, value in (("data.train", spec.data.train), ("data.validation", spec.data.validation)):
        for uri in dict.fromkeys(v for v, _ in _choices(dists, key, value) if v):  # each dataset a trial can take
            read_manifest(spec.resolve(uri))
    pairs = backbones_and_sizes(spec)
    for backbone, size in pairs:
        get_backbone(backbone).check_size(size)
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
        for backbone, size in pairs:  # each backbone's weights, for each size (some families' files depend on it)
            build_model(spec.model.model_copy(update={"backbone": backbone}), 2, tuple(size))
            keras.backend.clear_session()


def backbones_and_sizes(spec: Spec) -> list[tuple[str, tuple[int, int]]]:
    """Every (backbone, image size) pair a trial can take: ``_choices`` of each, where its ``when`` holds."""
    dists = parse_space(spec.tune.space)
    pairs = {}  # ordered, without repeats
    for (backbone, by_space), (size, size_by_space) in itertools.product(
            _choices(dists, "model.backbone", spec.model.backbone),
            _choices(dists, "data.image_size", list(spec.data.image_size))):
        values = {"model.backbone": backbone, "data.image_size": list(size)}
        given = [dists[k] for k, by in (("model.backbone", by_space), ("data.image_size", size_by_space)) if by]
        if all(Distribution(d.kind, d.args, tuple(c for c in d.when if c[0] in values)).holds(values) for d in given):
            pairs[(backbone, tuple(int(v) for v in size))] = None
    return list(pairs)


def _choices(dists: dict, key: str, value: Any) -> list[tuple[Any, bool]]:
    """The values a trial's ``key`` can take, each with whether ``tune.space`` gives it: the values the space
    lists, and the spec's own where the space does not set the field in every trial."""
    listed = dists[key].extremes() if key in dists else []
    choices = [(v, True) for v in listed if v is not None]
    if key not in dists or dists[key].conditional or None in listed:
        choices.append((value, False))
    return choices


def fetch_checkpoint(uri: str, dest: str | Path) -> Path:
    """Copies a checkpoint folder from the store to a local folder."""
    if not store.is_s3(uri) and Path(uri).is_dir():
        return Path(uri)
    return store.download_dir(uri, dest)

