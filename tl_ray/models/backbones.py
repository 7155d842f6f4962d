"""The table of keras.applications backbones tl-ray can build (importable without TensorFlow or Keras).

Its names must equal ``tl_ray.spec.model.BACKBONE_NAMES``. Where inner layers carry automatic names
(InceptionV3, InceptionResNetV2, NASNet), the layer ``block_re`` matches *ends* its block (``blocks_end``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
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
        constructor, preprocess: dotted paths of the Keras constructor and the family's ``preprocess_input``.
        min_size: smallest height/width Keras accepts.
        default_size: resolution of the ImageNet weights.
        preprocess_mode: ``"caffe"``, ``"tf"`` or ``"torch"`` as in ``keras.applications.imagenet_utils``, or
            ``"none"`` when the network rescales its own 0..255 input.
        block_re: regex whose group 1 is the block name of a layer (``re.match``), for ``freeze.from_block``.
        blocks_end: True when matching layers end their block rather than begin it.
    """

    name: str
    constructor: str
    preprocess: str
    min_size: int
    default_size: int
    preprocess_mode: str = "none"
    block_re: str = r"^(block\d+)_"
    blocks_end: bool = False

    @property
    def preprocessing_in_model(self) -> bool:
        """True when the network rescales its own input and ``preprocess_input`` is the identity."""
        return self.preprocess_mode == "none"

    def check_size(self, image_size) -> None:
        """Raises ConfigError when ``image_size`` (height, width) is smaller than this backbone takes."""
        height, width = (int(v) for v in image_size)
        if min(height, width) < self.min_size:
            raise ConfigError(
                f"data.image_size must be at least {self.min_size}x{self.min_size} for backbone {self.name!r}. "
                f"Received: {[height, width]}. Raise data.image_size (its ImageNet weights were trained at "
                f"{self.default_size}) or pick another backbone."
            )

    def build(self, input_shape: tuple[int, int, int], weights: str | None = None, *, name: str | None = None,
              **kwargs: Any):
        """Builds the headless Keras model (``include_top=False``).

        Args:
            input_shape: ``(height, width, 3)``.
            weights: ``"imagenet"``, ``None`` or a local weights file. Defaults to None.
            name: renames the model once built (not before: EfficientNetV2 looks its block layout up by
                its own name). Defaults to the Keras name.
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

    def block_starts(self, layer_names: list[str]) -> dict[str, int]:
        """Where each block begins in ``layer_names`` (the backbone's layer names): ``{block: index}``."""
        pattern = re.compile(self.block_re)
        first: dict[str, int] = {}
        last: dict[str, int] = {}
        for i, name in enumerate(layer_names):
            match = pattern.match(name)
            if match:
                first.setdefault(match.group(1), i)
                last[match.group(1)] = i
        if not self.blocks_end:
            return first
        starts, begin = {}, 1  # layer 0 is the Input
        for block, end in sorted(last.items(), key=lambda item: item[1]):
            starts[block] = begin
            begin = end + 1
        return starts

    def block_start(self, layer_names: list[str], block: str) -> int:
        """Index of the first layer of ``block`` (a block name, or a layer-name prefix such as ``conv4_block3``).

        Raises:
            ConfigError: no block or layer-name prefix matches.
        """
        starts = self.block_starts(layer_names)
        if block in starts:
            return starts[block]
        if not self.blocks_end:
            boundary = re.compile(rf"^{re.escape(block)}(?![0-9])")
            for i, name in enumerate(layer_names):
                if boundary.match(name):
                    return i
        raise ConfigError(
            f"model.freeze.from_block must name a block of backbone {self.name!r}, one of {list(starts)}. "
            f"Received: {block!r}.{did_you_mean(block, starts)}"
        )

    def preprocess_fn(self) -> Callable:
        """The family's ``preprocess_input``: maps 0..255 RGB to what the network expects."""
        return _import(self.preprocess)


def _family(module: str, min_size: int, mode: str, blocks: str, *, end: bool = False,
            **models: tuple[str, int]) -> dict[str, Backbone]:
    return {
        name: Backbone(name, f"keras.applications.{ctor}", f"keras.applications.{module}.preprocess_input",
                       min_size, size, mode, blocks, end)
        for name, (ctor, size) in models.items()
    }


_VGG = _XCEPTION = r"^(block\d+)_"
_CONV = r"^(conv\d+)_"  # ResNet, ResNetV2, DenseNet: conv2 .. conv5 (conv4_block3 also works as a prefix)
_EFFICIENT = r"^(block\d+)[a-z]_"


BACKBONES: dict[str, Backbone] = {
    **_family("vgg16", 32, "caffe", _VGG, vgg16=("VGG16", 224)),
    **_family("vgg19", 32, "caffe", _VGG, vgg19=("VGG19", 224)),
    **_family("resnet", 32, "caffe", _CONV, resnet50=("ResNet50", 224), resnet101=("ResNet101", 224),
              resnet152=("ResNet152", 224)),
    **_family("resnet_v2", 32, "tf", _CONV, resnet50_v2=("ResNet50V2", 224), resnet101_v2=("ResNet101V2", 224),
              resnet152_v2=("ResNet152V2", 224)),
    **_family("mobilenet", 32, "tf", r"^(conv_dw_\d+)_", mobilenet=("MobileNet", 224)),
    **_family("mobilenet_v2", 32, "tf", r"^(expanded_conv|block_\d+)_", mobilenet_v2=("MobileNetV2", 224)),
    **_family("mobilenet_v3", 32, "none", r"^(expanded_conv(?:_\d+)?)_", mobilenet_v3_small=("MobileNetV3Small", 224),
              mobilenet_v3_large=("MobileNetV3Large", 224)),
    **_family("efficientnet", 32, "none", _EFFICIENT, efficientnet_b0=("EfficientNetB0", 224),
              efficientnet_b1=("EfficientNetB1", 240), efficientnet_b2=("EfficientNetB2", 260),
              efficientnet_b3=("EfficientNetB3", 300), efficientnet_b4=("EfficientNetB4", 380),
              efficientnet_b5=("EfficientNetB5", 456), efficientnet_b6=("EfficientNetB6", 528),
              efficientnet_b7=("EfficientNetB7", 600)),
    **_family("efficientnet_v2", 32, "none", _EFFICIENT, efficientnet_v2_b0=("EfficientNetV2B0", 224),
              efficientnet_v2_b1=("EfficientNetV2B1", 240), efficientnet_v2_b2=("EfficientNetV2B2", 260),
              efficientnet_v2_b3=("EfficientNetV2B3", 300), efficientnet_v2_s=("EfficientNetV2S", 384),
              efficientnet_v2_m=("EfficientNetV2M", 480), efficientnet_v2_l=("EfficientNetV2L", 480)),
    **_family("xception", 71, "tf", _XCEPTION, xception=("Xception", 299)),
    **_family("inception_v3", 75, "tf", r"^(mixed\d+)$", end=True, inception_v3=("InceptionV3", 299)),
    **_family("inception_resnet_v2", 75, "tf", r"^(mixed_\w+?|block\d+_\d+)(?:_ac)?$", end=True, inception_resnet_v2=("InceptionResNetV2", 299)),
    **_family("densenet", 32, "torch", _CONV, densenet121=("DenseNet121", 224), densenet169=("DenseNet169", 224),
              densenet201=("DenseNet201", 224)),
    **_family("nasnet", 32, "tf", r"^((?:normal|reduction)_concat_\w+)$", end=True, nasnet_mobile=("NASNetMobile", 224), nasnet_large=("NASNetLarge", 331)),
    **_family("convnext", 32, "none", r"^convnext_[a-z]+_(stage_\d+)_", convnext_tiny=("ConvNeXtTiny", 224), convnext_small=("ConvNeXtSmall", 224),
              convnext_base=("ConvNeXtBase", 224), convnext_large=("ConvNeXtLarge", 224),
              convnext_xlarge=("ConvNeXtXLarge", 224)),
}


def get_backbone(name: str) -> Backbone:
    """Looks up a backbone by its tl-ray name, e.g. ``"mobilenet_v2"``.

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


def backbone_of(model) -> Backbone | None:
    """The backbone of a ``build_model`` model (named ``tlray_<backbone>``, or in older files on its
    ``BackbonePreprocess`` layer), or None when it does not say."""
    layers = {layer.name: layer for layer in getattr(model, "layers", [])}
    legacy = getattr(layers.get("preprocess"), "backbone", None)
    if isinstance(legacy, str) and legacy in BACKBONES:
        return BACKBONES[legacy]
    name = str(getattr(model, "name", ""))
    return BACKBONES.get(name[len("tlray_"):]) if name.startswith("tlray_") else None
