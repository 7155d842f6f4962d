"""The table of keras.applications backbones tl-ray can build.

This module must stay importable without TensorFlow or Keras: the CLI and the
spec validator read ``BACKBONES`` to check ``model.backbone`` in milliseconds.
Keras is imported only inside ``Backbone.build`` and ``Backbone.preprocess_fn``.

Sizes come from the installed Keras source (``keras/src/applications``): the
``min_size`` each constructor passes to ``obtain_input_shape`` (or checks by
hand, as MobileNetV3 does) and the resolution its ImageNet weights were
trained at. Keras 3 has no RegNet models, so none are listed.

Example:

>>> get_backbone("mobilenet_v2").min_size
32
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from tl_ray.errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

# Arguments tl-ray sets itself; model.backbone_args may not override them.
RESERVED_ARGS = ("include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
                 "classifier_activation", "name")


def _import(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Backbone:
    """One keras.applications model, used without its classification top.

    Args:
        name: the tl-ray name used in ``model.backbone``, e.g. ``"mobilenet_v2"``.
        constructor: dotted path of the Keras constructor.
        preprocess: dotted path of the family's ``preprocess_input``.
        min_size: smallest height/width Keras accepts.
        default_size: resolution of the ImageNet weights.
        preprocessing_in_model: True when the network rescales its own input
            (MobileNetV3, EfficientNet, EfficientNetV2, ConvNeXt); their
            ``preprocess_input`` is then the identity and the network expects
            0..255 pixels.
    """

    name: str
    constructor: str
    preprocess: str
    min_size: int
    default_size: int
    preprocessing_in_model: bool = False

    def build(self, input_shape: tuple[int, int, int], weights: str | None = None, *, name: str | None = None,
              **kwargs: Any):
        """Builds the headless Keras model (``include_top=False``).

        Args:
            input_shape: ``(height, width, 3)``.
            weights: ``"imagenet"``, ``None`` or a local weights file. Defaults to None.
            name: renames the model once built. The constructor keeps its own name
                because EfficientNetV2 looks its block layout up by it. Defaults to
                the Keras name.
            **kwargs: further constructor arguments, e.g. ``alpha=0.35``.

        Raises:
            ConfigError: a keyword is reserved by tl-ray or unknown to the constructor.
        """
        fn = _import(self.constructor)
        accepted = [p for p in inspect.signature(fn).parameters if p not in RESERVED_ARGS]
        for key in kwargs:
            if key in RESERVED_ARGS:
                raise ConfigError(
                    f"model.backbone_args may not set {key!r}: tl-ray sets {list(RESERVED_ARGS)} itself. "
                    f"Received: {key}={kwargs[key]!r}. Remove it from backbone_args."
                )
            if key not in accepted:
                raise ConfigError(
                    f"model.backbone_args: {self.constructor} accepts {accepted}. Received: {key!r}."
                    f"{did_you_mean(key, accepted)}"
                )
        # Keras warns with stacklevel=2, which blames this module; pass its advice on as a log line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = fn(include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs)
        for warning in caught:
            logger.warning("%s: %s", self.constructor, warning.message)
        if name is not None:
            model.name = name
        return model

    def preprocess_fn(self) -> Callable:
        """The family's ``preprocess_input``: maps 0..255 RGB to what the network expects."""
        return _import(self.preprocess)


def _family(module: str, min_size: int, in_model: bool, **models: tuple[str, int]) -> dict[str, Backbone]:
    return {
        name: Backbone(name, f"keras.applications.{ctor}", f"keras.applications.{module}.preprocess_input",
                       min_size, size, in_model)
        for name, (ctor, size) in models.items()
    }


BACKBONES: dict[str, Backbone] = {
    **_family("vgg16", 32, False, vgg16=("VGG16", 224)),
    **_family("vgg19", 32, False, vgg19=("VGG19", 224)),
    **_family("resnet", 32, False, resnet50=("ResNet50", 224), resnet101=("ResNet101", 224),
              resnet152=("ResNet152", 224)),
    **_family("resnet_v2", 32, False, resnet50_v2=("ResNet50V2", 224), resnet101_v2=("ResNet101V2", 224),
              resnet152_v2=("ResNet152V2", 224)),
    **_family("mobilenet", 32, False, mobilenet=("MobileNet", 224)),
    **_family("mobilenet_v2", 32, False, mobilenet_v2=("MobileNetV2", 224)),
    **_family("mobilenet_v3", 32, True, mobilenet_v3_small=("MobileNetV3Small", 224),
              mobilenet_v3_large=("MobileNetV3Large", 224)),
    **_family("efficientnet", 32, True, efficientnet_b0=("EfficientNetB0", 224),
              efficientnet_b1=("EfficientNetB1", 240), efficientnet_b2=("EfficientNetB2", 260),
              efficientnet_b3=("EfficientNetB3", 300), efficientnet_b4=("EfficientNetB4", 380),
              efficientnet_b5=("EfficientNetB5", 456), efficientnet_b6=("EfficientNetB6", 528),
              efficientnet_b7=("EfficientNetB7", 600)),
    **_family("efficientnet_v2", 32, True, efficientnet_v2_b0=("EfficientNetV2B0", 224),
              efficientnet_v2_b1=("EfficientNetV2B1", 240), efficientnet_v2_b2=("EfficientNetV2B2", 260),
              efficientnet_v2_b3=("EfficientNetV2B3", 300), efficientnet_v2_s=("EfficientNetV2S", 384),
              efficientnet_v2_m=("EfficientNetV2M", 480), efficientnet_v2_l=("EfficientNetV2L", 480)),
    **_family("xception", 71, False, xception=("Xception", 299)),
    **_family("inception_v3", 75, False, inception_v3=("InceptionV3", 299)),
    **_family("inception_resnet_v2", 75, False, inception_resnet_v2=("InceptionResNetV2", 299)),
    **_family("densenet", 32, False, densenet121=("DenseNet121", 224), densenet169=("DenseNet169", 224),
              densenet201=("DenseNet201", 224)),
    **_family("nasnet", 32, False, nasnet_mobile=("NASNetMobile", 224), nasnet_large=("NASNetLarge", 331)),
    **_family("convnext", 32, True, convnext_tiny=("ConvNeXtTiny", 224), convnext_small=("ConvNeXtSmall", 224),
              convnext_base=("ConvNeXtBase", 224), convnext_large=("ConvNeXtLarge", 224),
              convnext_xlarge=("ConvNeXtXLarge", 224)),
}


def get_backbone(name: str) -> Backbone:
    """Looks up a backbone by its tl-ray name.

    Args:
        name: e.g. ``"mobilenet_v2"``.

    Raises:
        ConfigError: ``name`` is not in ``BACKBONES``; the message suggests the closest name.
    """
    try:
        return BACKBONES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"model.backbone must be one of {sorted(BACKBONES)}. Received: {name!r}."
            f"{did_you_mean(str(name), BACKBONES)}"
        ) from None
