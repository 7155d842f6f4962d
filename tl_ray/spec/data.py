"""The spec's ``data`` section: datasets in the store, image size, shuffling, augmentation, ingest."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tl_ray.spec._base import PositiveInt, _Section


class IngestSource(_Section):
    """Where `tl-ray run` ingests a dataset from when it is not in the store yet."""

    kind: Literal["fashion-mnist", "folder"] = Field(
        description="fashion-mnist reads the IDX files; folder reads one sub-folder per class.")
    path: str | None = Field(default=None, description=(
        "IDX folder (fashion-mnist; defaults to /usr/share/datasets/fashion-mnist) or image folder."))
    classes: list[int] | None = Field(
        default=None, description="Fashion-MNIST class ids to keep; their order gives the new labels.")
    train_per_class: PositiveInt | None = Field(default=None, description="Cap on labelled training images per class.")
    validation_per_class: PositiveInt | None = Field(
        default=None,
        description="Validation images per class, carved from training images not used for training.")
    seed: int = Field(default=0, description="Seed for choosing the capped subsets.")


class AugmentSpec(_Section):
    """Augmentation applied inside tf.data to training batches only; off by default."""

    flip: bool = Field(default=False, description="Random horizontal flip.")
    crop: float = Field(default=0.0, ge=0.0, lt=0.5, description="Random crop fraction of each side.")
    contrast: float = Field(default=0.0, ge=0.0, lt=1.0, description="Random contrast delta.")
    rotation: float = Field(default=0.0, ge=0.0, le=180.0, description="Random rotation, up to this many degrees either way.")


class DataSpec(_Section):
    """Datasets in the store (paths relative to `storage`, or full URIs)."""

    train: str = Field(description="Training dataset: a folder holding _manifest.json and its shards.")
    validation: str | None = Field(default=None, description="Validation dataset, used for model selection.")
    test: str | None = Field(default=None, description="Held-out test dataset, reported after promotion.")
    image_size: tuple[PositiveInt, PositiveInt] = Field(
        default=(32, 32), description="Height and width every image is resized to.")
    shuffle_buffer: PositiveInt = Field(default=2048, description="Examples held by the shuffle buffer.")
    seed: int = Field(default=0, description="Seed of the per-epoch shuffle, so runs are reproducible.")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="Training-time augmentation.")
    source: IngestSource | None = Field(
        default=None, description="Ingest recipe used by `tl-ray run` when the datasets are missing.")
