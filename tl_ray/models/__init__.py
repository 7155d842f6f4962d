"""Models: the backbones table, preprocessing from stock Keras layers, build, freeze policies, weights and export.

Importing this package (or ``tl_ray.models.backbones``) does not import TensorFlow: names load on first use.
"""

from __future__ import annotations

import importlib

_MODULES = {
    "backbones": ("BACKBONES", "Backbone", "get_backbone", "backbone_of"),
    "preprocess": ("preprocessing_layer", "BackbonePreprocess"),
    "build": ("build_model",),
    "freeze": ("apply_freeze",),
    "weights": ("save_backbone_weights", "stage_backbone_weights", "weights_kind"),
    "export": ("export_model", "export_as", "portable_model", "load_model"),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tl_ray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tl_ray.models.{_EXPORTS[name]}"), name)
