"""Freeze policies: which part of the backbone trains, and in which mode it runs.

Except in ``full`` the backbone is pinned to inference mode: Keras 3 forwards the outer ``training`` flag over
its ``training=False``, leaving dropout inside it (EfficientNet's drop-connect) on. The pin is not saved:
call ``apply_freeze`` again after ``load_model``.
"""

from __future__ import annotations

import re

import keras

from tl_ray.errors import ConfigError
from tl_ray.models.backbones import backbone_of
from tl_ray.spec import FreezeSpec


def apply_freeze(model: keras.Model, freeze: FreezeSpec) -> keras.Model:
    """Sets trainable flags and the backbone's training mode of a ``build_model`` model, in place.

    Recompile the returned ``model`` (or rebuild the optimizer's variable list) after changing the policy.

    Raises:
        ConfigError: ``model`` has no nested ``backbone``, or a ``fine_tune`` policy selects no layer.
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ConfigError(
            f"apply_freeze needs a tl-ray model with a nested model named 'backbone'. "
            f"Received a model named {model.name!r} with layers {[layer.name for layer in model.layers]}. "
            "Build it with tl_ray.models.build_model."
        ) from None
    _set_trainable(model, True)
    if freeze.mode == "feature_extraction":
        _set_trainable(backbone, False)
    elif freeze.mode == "fine_tune":
        chosen = set(map(id, _fine_tuned_layers(model, backbone, freeze)))
        for layer in backbone.layers:
            _set_trainable(layer, id(layer) in chosen)
    _pin_inference(backbone, freeze.mode != "full")
    return model


def _fine_tuned_layers(model: keras.Model, backbone: keras.Model, freeze: FreezeSpec) -> list:
    """The backbone layers a ``fine_tune`` policy trains (never BatchNormalization)."""
    layers = backbone.layers
    weighted = [layer for layer in layers if layer.weights
                and not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Normalization))]
    if freeze.pattern is not None:
        regex = re.compile(freeze.pattern)
        chosen = [layer for layer in weighted if regex.search(layer.name)]
        if not chosen:
            raise ConfigError(
                f"model.freeze.pattern matches no weighted layer of the backbone. Received: {freeze.pattern!r}. "
                f"Layer names look like {[layer.name for layer in weighted[-3:]]}."
            )
        return chosen
    if freeze.from_block is not None:
        entry = backbone_of(model)
        if entry is None:
            raise ConfigError(
                f"model.freeze.from_block needs to know the backbone, read from a model named tlray_<backbone>. "
                f"Received a model named {model.name!r}. Build it with tl_ray.models.build_model, or use "
                "model.freeze.pattern or unfreeze_top."
            )
        start = entry.block_start([layer.name for layer in layers], freeze.from_block)
        after = set(map(id, layers[start:]))
        return [layer for layer in weighted if id(layer) in after]
    return weighted[max(0, len(weighted) - freeze.unfreeze_top):]


def _set_trainable(layer: keras.layers.Layer, value: bool) -> None:
    """Sets ``trainable`` on ``layer`` and all its sublayers."""
    # Toggling forces the setter to run: it is skipped when the layer's own flag already equals ``value``.
    layer.trainable = not value
    layer.trainable = value


def _pin_inference(backbone: keras.Model, pinned: bool) -> None:
    """Keeps the outer ``training`` flag from overriding the backbone's ``training=False``."""
    args = set(getattr(backbone, "_call_context_args", {"training"}))
    backbone._call_context_args = args - {"training"} if pinned else args | {"training"}
