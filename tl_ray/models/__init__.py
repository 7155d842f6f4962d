"""Models: the backbones table, preprocessing from stock Keras layers, build, freeze policies, weights and export.

Importing this package (or ``tl_ray.models.backbones``) does not import TensorFlow: names load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BACKBONES": "backbones",
    "Backbone": "backbones",
    "get_backbone": "backbones",
    "backbone_of": "backbones",
    "preprocessing_layer": "preprocess",
    "BackbonePreprocess": "preprocess",
    "build_model": "build",
    "apply_freeze": "freeze",
    "save_backbone_weights": "weights",
    "stage_backbone_weights": "weights",
    "weights_kind": "weights",
    "export_model": "export",
    "export_as": "export",
    "portable_model": "export",
    "load_model": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tl_ray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tl_ray.models.{_EXPORTS[name]}"), name)
