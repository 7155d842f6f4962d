"""The spec's ``model`` section: backbone, weights, head and freeze policy."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from tl_ray.errors import did_you_mean
from tl_ray.spec._base import PositiveInt, _Section

# The names of tl_ray.models.backbones.BACKBONES (a unit test keeps the two equal): the spec checks
# model.backbone against them without importing the models package.
BACKBONE_NAMES = (
    "vgg16", "vgg19", "resnet50", "resnet101", "resnet152", "resnet50_v2", "resnet101_v2", "resnet152_v2",
    "mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    *(f"efficientnet_b{i}" for i in range(8)),
    *(f"efficientnet_v2_{s}" for s in ("b0", "b1", "b2", "b3", "s", "m", "l")),
    "xception", "inception_v3", "inception_resnet_v2", "densenet121", "densenet169", "densenet201",
    "nasnet_mobile", "nasnet_large", *(f"convnext_{s}" for s in ("tiny", "small", "base", "large", "xlarge")),
)


class HeadSpec(_Section):
    """The new head: pooling, ``[Dropout, Dense(relu)]`` per ``dense`` width, Dropout, ``predictions``.

    ``model.weights`` gives the backbone's weights only (also from a registered model): the head starts from
    random weights (seeded by ``train.seed``) unless ``train.init_from`` warm-starts the whole model.
    """

    pooling: Literal["avg", "max", "flatten"] = Field(
        default="avg", description="How the backbone's feature map becomes a vector.")
    dense: list[PositiveInt] = Field(default_factory=list, description="Hidden Dense layer widths (ReLU).")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description=(
        "Dropout rate before each hidden Dense layer and before the predictions layer; 0: no Dropout layers."
    ))
    multi_label: bool = Field(default=False, description=(
        "One sigmoid unit per class trained with binary cross-entropy on label vectors (several classes "
        "may be on at once). Off: softmax over K>2 classes, or one sigmoid unit for 2."))


class FreezeSpec(_Section):
    """Which part of the backbone trains."""

    mode: Literal["feature_extraction", "fine_tune", "full"] = Field(
        default="feature_extraction", description=(
            "feature_extraction: base frozen, run in inference mode; fine_tune: top layers trainable, "
            "BatchNorm frozen; full: every layer trains (training from scratch)."))
    unfreeze_top: int = Field(default=20, ge=0, description=(
        "fine_tune: how many of the backbone's top weighted layers train (BatchNorm not counted)."))
    from_block: str | None = Field(default=None, min_length=1, description=(
        "fine_tune: train every backbone layer from the first layer of this block on, e.g. 'block_13' "
        "(mobilenet_v2), 'conv5' (resnet50), 'block6' (efficientnet). Replaces unfreeze_top."))
    pattern: str | None = Field(default=None, min_length=1, description=(
        "fine_tune: train the backbone layers whose name "
        "matches this regex (re.search). Replaces unfreeze_top."))

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"must be a valid regular expression ({exc})") from None
        return value

    @model_serializer(mode="wrap")
    def _selector_only(self, handler) -> dict:
        # A spec written back (to_dict) and validated again keeps one selector: unfreeze_top's default is left out
        # when from_block or pattern chooses the layers.
        data = handler(self)
        if (self.from_block or self.pattern) and "unfreeze_top" not in self.model_fields_set:
            data.pop("unfreeze_top", None)
        return data

    @model_validator(mode="after")
    def _one_selector(self) -> "FreezeSpec":
        chosen = [k for k in ("from_block", "pattern") if getattr(self, k) is not None]
        if "unfreeze_top" in self.model_fields_set:
            chosen.append("unfreeze_top")
        if len(chosen) > 1:
            raise ValueError(f"set only one of unfreeze_top, from_block and pattern. Received: {chosen}")
        if self.mode != "fine_tune" and chosen and chosen != ["unfreeze_top"]:
            raise ValueError(f"{chosen[0]} applies to mode fine_tune only. Received: mode={self.mode!r}")
        return self


class ModelSpec(_Section):
    """Backbone, weights, head and freeze policy."""

    backbone: str = Field(description="A keras.applications backbone name, e.g. mobilenet_v2.")
    backbone_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra constructor arguments, e.g. {alpha: 0.35}.")
    weights: str = Field(
        default="imagenet",
        description="imagenet | none | a weights file path or s3:// URI | registry://name:alias.")
    feature_layer: str | None = Field(default=None, min_length=1, description=(
        "Cut the backbone at this layer: its output is the feature map the head pools, e.g. "
        "'block_13_expand_relu' (mobilenet_v2). Earlier layers are less specific to the source task, which "
        "helps when source and target differ or images are small. Default: the backbone's last layer."))
    head: HeadSpec = Field(default_factory=HeadSpec, description="Classification head.")
    batchnorm_momentum: float | None = Field(default=None, gt=0.0, lt=1.0, description=(
        "Override the backbone's BatchNorm momentum (keras.applications use 0.99-0.999, too slow for short "
        "runs that train BatchNorm, i.e. freeze.mode full)."))
    freeze: FreezeSpec = Field(default_factory=FreezeSpec, description="Freeze policy.")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONE_NAMES:
            raise ValueError(f"must be one of {sorted(BACKBONE_NAMES)}. Received: {value!r}."
                             f"{did_you_mean(value, BACKBONE_NAMES)}")
        return value
