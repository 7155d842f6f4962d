"""Trial checkpoints: ``model.keras`` (or ``head.weights.h5``), ``optimizer.npz`` and ``state.json``.

A head-only checkpoint (a trial on cached features) records under ``head_of`` in ``state.json`` how to rebuild
the full model around the head (``head_recipe``); ``checkpoint_model`` returns the full model for either kind.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from tl_ray import store
from tl_ray.errors import ConfigError

MODEL_FILE = "model.keras"
HEAD_FILE = "head.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"


def save_checkpoint(folder: str | Path, model, optimizer, state: dict, *, head_of: dict | None = None) -> Path:
    """Writes a checkpoint into ``folder`` (created if needed) and returns it.

    ``model`` is the head alone when ``head_of`` (``head_recipe``) is given; ``state`` goes to ``state.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {**state, "weights_digest": model_weights_digest(model)}
    if head_of is None:
        model.save(folder / MODEL_FILE)
    else:
        model.save_weights(folder / HEAD_FILE)
        state["head_of"] = head_of
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    np.savez(folder / OPTIMIZER_FILE, **arrays)
    (folder / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    return folder


def head_recipe(spec, num_classes: int, feature_shape, backbone_weights: str) -> dict:
    """What ``checkpoint_model`` needs to rebuild the full model around a saved head (``backbone_weights``:
    the digest of the weights the features came from)."""
    return {"model": spec.model.model_dump(mode="json"), "num_classes": int(num_classes),
            "feature_shape": [int(v) for v in feature_shape], "image_size": [int(v) for v in spec.data.image_size],
            "seed": spec.train.seed, "storage": spec.storage, "backbone_weights": backbone_weights}


def is_head_only(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_FILE).exists() and not (Path(folder) / MODEL_FILE).exists()


def load_model_weights(folder: str | Path, model) -> None:
    """Loads either kind of checkpoint into the full model or the head alone (ValueError: other layers)."""
    from tl_ray.models.build import build_head
    from tl_ray.spec import ModelSpec

    folder = Path(folder)
    head_only = is_head_only(folder)
    if head_only == _is_head(model):
        model.load_weights(folder / (HEAD_FILE if head_only else MODEL_FILE))
    elif head_only:  # into the full model: through the head the recipe builds
        recipe = read_state(folder)["head_of"]
        head = build_head(ModelSpec.model_validate(recipe["model"]).head, recipe["num_classes"],
                          recipe["feature_shape"], seed=recipe["seed"])
        head.load_weights(folder / HEAD_FILE)
        copy_head_weights(head, model)
    else:
        copy_head_weights(_load_full(folder), model)


def checkpoint_model(folder: str | Path, storage_root: str | None = None):
    """The full Keras model of a local checkpoint folder (a head-only one is rebuilt around its backbone).

    Args:
        storage_root: the store the backbone's weights resolve against. Defaults to the checkpoint's.

    Raises:
        StorageError: the backbone's weights cannot be fetched.
        ConfigError: they changed since the head was trained (another digest).
    """
    folder = Path(folder)
    if not is_head_only(folder):
        return _load_full(folder)
    from tl_ray import feature_cache
    from tl_ray.models.build import build_model
    from tl_ray.models.freeze import apply_freeze
    from tl_ray.registry.weights import resolve_weights
    from tl_ray.spec import FreezeSpec, ModelSpec

    recipe = read_state(folder)["head_of"]
    model_spec = ModelSpec.model_validate(recipe["model"])
    weights_file = resolve_weights(model_spec.weights, storage_root or recipe["storage"])
    found = feature_cache.backbone_weights_digest(model_spec.weights, weights_file, recipe["seed"])
    if found != recipe["backbone_weights"]:
        raise ConfigError(
            f"checkpoint {folder} holds a head trained over backbone weights {recipe['backbone_weights']}, but "
            f"model.weights {model_spec.weights!r} now resolves to {found}. Point model.weights at the weights "
            "the head was trained over, or retrain the head.")
    model = build_model(model_spec.model_copy(update={"freeze": FreezeSpec()}), recipe["num_classes"],
                        tuple(recipe["image_size"]), weights_file=weights_file, seed=recipe["seed"])
    load_model_weights(folder, model)
    return apply_freeze(model, model_spec.freeze)


def copy_head_weights(source, target) -> None:
    """Copies the head's layers (``head_*``, ``predictions``) by name (ValueError: one missing or unlike)."""
    names = [layer.name for layer in target.layers if _is_head_layer(layer.name)]
    have = {layer.name: layer for layer in source.layers}
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"the checkpoint's model has no layers {missing}: another head")
    for name in names:
        values = have[name].get_weights()
        layer = target.get_layer(name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(f"layer {name!r} holds weights of shapes {[v.shape for v in values]}, the model's are "
                             f"{shapes}: another head")
        layer.set_weights(values)


def _is_head_layer(name: str) -> bool:
    return name.startswith("head_") or name == "predictions"


def _is_head(model) -> bool:
    """A tl-ray head without its backbone (``build_head``, or ``tl_ray.feature_cache.head_model``)."""
    names = {layer.name for layer in model.layers}
    return "predictions" in names and "backbone" not in names


def _load_full(folder: Path):
    from tl_ray.models.export import load_model

    return load_model(folder / MODEL_FILE)


def restore_checkpoint(folder: str | Path, model, optimizer) -> dict:
    """Loads model weights and optimizer state from ``folder``; returns the saved state.

    The learning-rate variables keep the restoring trial's own rate (under PBT the donor's must not overwrite
    it). Either kind of checkpoint loads into the full model or the head alone.

    Args:
        optimizer: None loads the weights only (at a phase boundary the next phase starts a fresh optimizer).

    Raises:
        ValueError: the optimizer's variables do not match the checkpoint's.
    """
    folder = Path(folder)
    load_model_weights(folder, model)
    if optimizer is None:
        return read_state(folder)
    with np.load(folder / OPTIMIZER_FILE) as data:
        values = [data[k] for k in sorted(data.files)]
    variables = optimizer.variables
    if len(values) != len(variables):
        raise ValueError(
            f"checkpoint {folder} holds {len(values)} optimizer variables, the optimizer has {len(variables)}: "
            "the spec changed since the checkpoint was written")
    keep = {id(v) for v in _learning_rate_variables(optimizer)}
    for var, value in zip(variables, values):
        if id(var) not in keep:
            var.assign(value)
    return read_state(folder)


def _learning_rate_variables(optimizer) -> list:
    """The learning-rate variables (a LossScaleOptimizer has its own and its inner one's)."""
    import keras

    rates = [getattr(opt, "_learning_rate", None) for opt in (optimizer, getattr(optimizer, "inner_optimizer", None))]
    return [lr for lr in rates if isinstance(lr, keras.Variable)]


def model_weights_digest(model) -> str:
    """SHA-256 of every model weight (trainable or not), in order, with shapes and dtypes."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w.numpy()))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_state(folder: str | Path) -> dict:
    return json.loads((Path(folder) / STATE_FILE).read_text())


def warm_start(model, checkpoint_uri: str, backbone_weights: str | None = None) -> str:
    """Loads the model weights of a checkpoint folder (local or in the store) into ``model`` (full or head).

    Args:
        backbone_weights: ``tl_ray.feature_cache.backbone_digest`` of ``model``'s backbone weights; a
            head-only checkpoint trained over others is refused. None: not checked.

    Raises:
        StorageError: the checkpoint cannot be fetched.
        ConfigError: its model does not fit the spec's (another backbone or head, or other backbone weights).
    """
    local = Path(checkpoint_uri)
    if store.is_s3(checkpoint_uri) or not local.is_dir():
        local = store.download_dir(checkpoint_uri, tempfile.mkdtemp(prefix="tlray-warm-"))
    if backbone_weights and is_head_only(local):
        trained_over = read_state(local)["head_of"]["backbone_weights"]
        if trained_over != backbone_weights:
            raise ConfigError(
                f"train.init_from {checkpoint_uri!r} holds a head trained over backbone weights {trained_over}, but "
                f"model.weights gives {backbone_weights}. Warm-start from a checkpoint over the same weights."
            )
    try:
        load_model_weights(local, model)
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"train.init_from {checkpoint_uri!r} holds a model that does not fit the spec's ({exc}). "
            "Warm-start only from a checkpoint of the same backbone and head.") from None
    return checkpoint_uri
