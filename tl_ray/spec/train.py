"""The spec's ``train`` section: one trial's training (phases, early stopping, schedule, resources)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tl_ray.spec._base import PositiveInt, _Section
from tl_ray.spec.model import FreezeSpec


class PhaseSpec(_Section):
    """One phase of a multi-phase recipe: its epochs, freeze policy and learning rate."""

    epochs: PositiveInt = Field(description="Epochs of this phase.")
    freeze: FreezeSpec = Field(description="Freeze policy during this phase (replaces model.freeze).")
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=10.0,
        description="Learning rate of this phase (default: train.learning_rate).")
    augment: bool = Field(default=True, description=(
        "false: this phase trains on the images as stored even when data.augment is on, so a phase with "
        "the base frozen trains on cached features (train.feature_cache)."))


class EarlyStoppingSpec(_Section):
    """Stop a trial when a monitored metric stops improving (the EarlyStopping callback)."""

    monitor: str = Field(default="val_loss", description="Metric watched at the end of every epoch.")
    mode: Literal["min", "max"] = Field(default="min", description="Whether lower or higher is better.")
    patience: int = Field(default=3, ge=0, description="Epochs without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts as an improvement.")


class LRScheduleSpec(_Section):
    """Learning-rate schedule over each phase (the LearningRateSchedule callback), updated every step."""

    kind: Literal["constant", "cosine"] = Field(
        default="cosine", description="constant, or cosine decay to min_fraction of the phase's rate.")
    warmup_epochs: float = Field(
        default=0.0, ge=0.0,
        description="Linear warm-up from 0 over this many epochs at the start of each phase.")
    min_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="cosine: final rate / peak rate.")


class TrainSpec(_Section):
    """One trial's training: data-parallel under tf.distribute.

    The rate used is ``learning_rate`` (or a phase's) times ``lr_scaling`` of ``batch_size / base_batch_size``
    (none: 1, linear: the ratio, sqrt: its square root), times the ``lr_schedule`` factor of the step.
    """

    epochs: PositiveInt = Field(default=5, description="Passes over the training data.")
    batch_size: PositiveInt = Field(default=64, description="Global batch size, across all replicas.")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(default="adam", description="Optimizer.")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0, description="Learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Weight decay (adamw).")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0, description="Label smoothing.")
    workers: PositiveInt = Field(default=1, description=(
        "1: MirroredStrategy over one worker's devices; >1: "
        "Ray Train workers under MultiWorkerMirroredStrategy."))
    cpus_per_worker: PositiveInt = Field(default=1, description="CPUs reserved for each worker.")
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(default="PACK", description=(
        "workers > 1: placement group strategy of the trial's workers. PACK keeps all-reduce inside a node "
        "where it fits; SPREAD puts workers on different nodes."))
    gpus_per_worker: Annotated[float, Field(ge=0.0)] | Literal["auto"] = Field(
        default="auto",
        description="GPUs per worker. auto: 1 if the cluster has GPUs as the sweep starts, else 0.")
    head_trial_gpus: float | None = Field(default=None, ge=0.0, description=(
        "GPUs of a single-worker trial that only trains a head on cached features, e.g. 0 (CPUs) or 0.25 "
        "(a shared GPU). Unset: gpus_per_worker."))
    cpu_devices: int = Field(default=0, ge=0, description=(
        "Split the CPU into this many logical devices (0: no split). Tests MirroredStrategy without GPUs."))
    seed: int = Field(default=0, description="Seed for weights initialisation and dropout.")
    steps_per_epoch: PositiveInt | None = Field(
        default=None, description="Cap on steps per epoch (default: one full pass).")
    max_failures: int = Field(default=1, ge=0, description="Restarts of a failed trial from its checkpoint.")
    checkpoint_every: PositiveInt = Field(
        default=1, description="Checkpoint every N epochs (the last epoch is always checkpointed).")
    phases: list[PhaseSpec] = Field(default_factory=list, description=(
        "Multi-phase recipe, e.g. head first with the base frozen, then fine-tune at a lower rate. Each "
        "phase gets a fresh optimizer on its trainable variables. train.epochs defaults to the sum."))
    recipe: Literal["plain", "lp_ft"] = Field(default="plain", description=(
        "plain: train.phases, else model.freeze throughout. lp_ft (LP-FT): a probe of train.probe_epochs "
        "on cached features, then the epochs left under model.freeze at the rate x finetune_lr_factor."))
    probe_epochs: PositiveInt = Field(
        default=5,
        description="recipe lp_ft: epochs of the probe phase (cheap: it trains on cached features).")
    finetune_lr_factor: float = Field(
        default=0.1, gt=0.0, le=1.0,
        description="recipe lp_ft: learning rate of the fine-tuning phase / train.learning_rate.")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        default="none", description="How the learning rate scales with batch_size / base_batch_size.")
    base_batch_size: PositiveInt = Field(
        default=256, description="Global batch size the learning rate was tuned for (lr_scaling reference).")
    backbone_lr_multiplier: float = Field(default=1.0, ge=0.0, le=10.0, description=(
        "Discriminative learning rate: the backbone's trainable "
        "variables learn at this times the head's rate."))
    class_weights: Literal["balanced"] | dict[int, Annotated[float, Field(ge=0.0)]] | None = Field(
        default=None,
        description="Per-class loss weights: 'balanced' (n / (K * count)) or {class id: weight}; missing ids weigh 1.",
    )
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = Field(
        default="float32",
        description="Keras dtype policy; mixed_float16 adds dynamic loss scaling. Outputs stay float32.")
    jit_compile: bool = Field(default=False, description="XLA-compile the forward and backward pass.")
    clip_norm: float | None = Field(
        default=None, gt=0.0, description="Clip the all-reduced gradients to this global norm.")
    feature_cache: Literal["auto", "off"] = Field(default="auto", description=(
        "auto: epochs with the base frozen and augmentation off train the head on the backbone's outputs, "
        "computed once and kept in the store (tl-ray cache list); off: run the base every step."))
    init_from: str | None = Field(default=None, min_length=1, description=(
        "Warm start: load the model's weights from this checkpoint folder (URI) before the first epoch."))
    early_stopping: EarlyStoppingSpec | None = Field(default=None, description="Early stopping (off by default).")
    lr_schedule: LRScheduleSpec | None = Field(default=None, description="Learning-rate schedule (constant if unset).")

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false (and `on` as true).
        return {False: "off", True: "auto"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="before")
    @classmethod
    def _epochs_from_phases(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("phases") and "epochs" not in data:
            epochs = [p.get("epochs") if isinstance(p, dict) else getattr(p, "epochs", None) for p in data["phases"]]
            if all(isinstance(e, int) for e in epochs):
                data = {**data, "epochs": sum(epochs)}
        return data

    @model_validator(mode="after")
    def _phases_add_up(self) -> "TrainSpec":
        if self.phases and sum(p.epochs for p in self.phases) != self.epochs:
            raise ValueError(
                f"train.epochs ({self.epochs}) must equal the sum of train.phases epochs "
                f"({sum(p.epochs for p in self.phases)}); leave train.epochs out to use the sum")
        if self.recipe == "lp_ft" and self.phases:
            raise ValueError("train.recipe lp_ft stands for two train.phases of its own; remove train.phases, "
                             "or set train.recipe: plain to keep them")
        if self.recipe == "lp_ft" and self.probe_epochs >= self.epochs:
            raise ValueError(f"train.probe_epochs ({self.probe_epochs}) must be less than train.epochs "
                             f"({self.epochs}) with train.recipe lp_ft: the fine-tuning phase gets the epochs left")
        return self

    def lp_ft_phases(self, freeze: FreezeSpec) -> list[PhaseSpec]:
        """The two phases ``recipe: lp_ft`` stands for; ``freeze`` is model.freeze, the fine-tuning phase's policy."""
        return [
            PhaseSpec(epochs=self.probe_epochs, freeze=FreezeSpec(mode="feature_extraction"),
                      learning_rate=self.learning_rate, augment=False),
            PhaseSpec(epochs=self.epochs - self.probe_epochs, freeze=freeze,
                      learning_rate=self.learning_rate * self.finetune_lr_factor),
        ]
