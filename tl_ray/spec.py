"""The experiment spec: one YAML file, validated by pydantic.

Every setting of a tl-ray experiment lives here, typed, constrained and
described. Unknown keys are rejected. Any field can be overridden from the
command line with ``--set a.b=c``; the same dotted names are what
``tune.space`` searches over.

Example:

>>> spec = load_spec("jobs/quickstart/target.yaml", overrides=["train.epochs=2"])
>>> spec.train.epochs
2
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tl_ray.errors import ConfigError, did_you_mean

DEFAULT_STORE = "./tlray-store"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PositiveInt = Annotated[int, Field(gt=0)]


class IngestSource(_Section):
    """Where `tl-ray run` ingests a dataset from when it is not in the store yet."""

    kind: Literal["fashion-mnist", "folder"] = Field(
        description="fashion-mnist reads the IDX files; folder reads one sub-folder per class."
    )
    path: str | None = Field(
        default=None,
        description="IDX folder (fashion-mnist; defaults to /usr/share/datasets/fashion-mnist) or image folder.",
    )
    classes: list[int] | None = Field(
        default=None, description="Fashion-MNIST class ids to keep; their order gives the new labels."
    )
    train_per_class: PositiveInt | None = Field(
        default=None, description="Cap on labelled training images per class."
    )
    validation_per_class: PositiveInt | None = Field(
        default=None,
        description="Validation images per class, carved from training images not used for training.",
    )
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
        default=(32, 32), description="Height and width every image is resized to."
    )
    shuffle_buffer: PositiveInt = Field(default=2048, description="Examples held by the shuffle buffer.")
    seed: int = Field(default=0, description="Seed of the per-epoch shuffle, so runs are reproducible.")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="Training-time augmentation.")
    source: IngestSource | None = Field(
        default=None, description="Ingest recipe used by `tl-ray run` when the datasets are missing."
    )


class HeadSpec(_Section):
    """The new classification head on top of the backbone."""

    pooling: Literal["avg", "max", "flatten"] = Field(
        default="avg", description="How the backbone's feature map becomes a vector."
    )
    dense: list[PositiveInt] = Field(default_factory=list, description="Hidden Dense layer widths (ReLU).")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="Dropout before each Dense layer.")
    multi_label: bool = Field(
        default=False,
        description=(
            "One sigmoid unit per class trained with binary cross-entropy on label vectors "
            "(several classes may be on at once). Off: softmax over K>2 classes, or one sigmoid unit for 2."
        ),
    )


class FreezeSpec(_Section):
    """Which part of the backbone trains."""

    mode: Literal["feature_extraction", "fine_tune", "full"] = Field(
        default="feature_extraction",
        description=(
            "feature_extraction: base frozen, run in inference mode; fine_tune: top layers "
            "trainable, BatchNorm frozen; full: every layer trains (training from scratch)."
        ),
    )
    unfreeze_top: int = Field(
        default=20,
        ge=0,
        description="fine_tune: how many of the backbone's top weighted layers train (BatchNorm not counted).",
    )
    from_block: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "fine_tune: train every backbone layer from the first layer of this block on, e.g. 'block_13' "
            "(mobilenet_v2), 'conv5' (resnet50), 'block6' (efficientnet). Replaces unfreeze_top."
        ),
    )
    pattern: str | None = Field(
        default=None,
        min_length=1,
        description="fine_tune: train the backbone layers whose name matches this regex (re.search). Replaces unfreeze_top.",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"must be a valid regular expression ({exc})") from None
        return value

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
        default_factory=dict, description="Extra constructor arguments, e.g. {alpha: 0.35}."
    )
    weights: str = Field(
        default="imagenet",
        description="imagenet | none | a weights file path or s3:// URI | registry://name:alias.",
    )
    head: HeadSpec = Field(default_factory=HeadSpec, description="Classification head.")
    batchnorm_momentum: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description=(
            "Override the backbone's BatchNorm momentum (keras.applications use 0.99-0.999, "
            "too slow for short runs that train BatchNorm, i.e. freeze.mode full)."
        ),
    )
    freeze: FreezeSpec = Field(default_factory=FreezeSpec, description="Freeze policy.")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        from tl_ray.models.backbones import BACKBONES

        if value not in BACKBONES:
            raise ValueError(
                f"must be one of {sorted(BACKBONES)}. Received: {value!r}.{did_you_mean(value, BACKBONES)}"
            )
        return value


class PhaseSpec(_Section):
    """One phase of a multi-phase recipe: its epochs, freeze policy and learning rate."""

    epochs: PositiveInt = Field(description="Epochs of this phase.")
    freeze: FreezeSpec = Field(description="Freeze policy during this phase (replaces model.freeze).")
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=10.0, description="Learning rate of this phase (default: train.learning_rate)."
    )


class EarlyStoppingSpec(_Section):
    """Stop a trial when a monitored metric stops improving (the EarlyStopping callback)."""

    monitor: str = Field(default="val_loss", description="Metric watched at the end of every epoch.")
    mode: Literal["min", "max"] = Field(default="min", description="Whether lower or higher is better.")
    patience: int = Field(default=3, ge=0, description="Epochs without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts as an improvement.")


class LRScheduleSpec(_Section):
    """Learning-rate schedule over each phase (the LearningRateSchedule callback), updated every step."""

    kind: Literal["constant", "cosine"] = Field(
        default="cosine", description="constant, or cosine decay to min_fraction of the phase's rate."
    )
    warmup_epochs: float = Field(
        default=0.0, ge=0.0, description="Linear warm-up from 0 over this many epochs at the start of each phase."
    )
    min_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="cosine: final rate / peak rate.")


class TrainSpec(_Section):
    """One trial's training: data-parallel under tf.distribute.

    The learning rate actually used is ``learning_rate`` (or a phase's) times
    ``lr_scaling`` applied to ``batch_size / base_batch_size``: ``none`` → 1,
    ``linear`` → ratio (Goyal et al. 2017), ``sqrt`` → sqrt(ratio) (a common
    rule for Adam), times the ``lr_schedule`` factor of the current step.
    """

    epochs: PositiveInt = Field(default=5, description="Passes over the training data.")
    batch_size: PositiveInt = Field(default=64, description="Global batch size, across all replicas.")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(default="adam", description="Optimizer.")
    learning_rate: float = Field(default=1e-3, gt=0.0, le=10.0, description="Learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Weight decay (adamw).")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0, description="Label smoothing.")
    workers: PositiveInt = Field(
        default=1,
        description="1: MirroredStrategy over one worker's devices; >1: Ray Train workers under MultiWorkerMirroredStrategy.",
    )
    cpus_per_worker: PositiveInt = Field(default=1, description="CPUs reserved for each worker.")
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK",
        description=(
            "workers > 1: placement group strategy of the trial's workers. PACK keeps all-reduce inside "
            "a node where it fits; SPREAD puts workers on different nodes."
        ),
    )
    gpus_per_worker: float = Field(default=0.0, ge=0.0, description="GPUs reserved for each worker.")
    head_trial_gpus: float | None = Field(
        default=None,
        ge=0.0,
        description=(
            "GPUs of a single-worker trial that only trains a head on cached features (base frozen, augmentation "
            "off), e.g. 0 to run such trials on CPUs next to GPU fine-tuning trials, or 0.25 to share a GPU. "
            "Unset: gpus_per_worker."
        ),
    )
    cpu_devices: int = Field(
        default=0,
        ge=0,
        description="Split the CPU into this many logical devices (0: no split). Tests MirroredStrategy without GPUs.",
    )
    seed: int = Field(default=0, description="Seed for weights initialisation and dropout.")
    steps_per_epoch: PositiveInt | None = Field(
        default=None, description="Cap on steps per epoch (default: one full pass)."
    )
    max_failures: int = Field(default=1, ge=0, description="Restarts of a failed trial from its checkpoint.")
    checkpoint_every: PositiveInt = Field(
        default=1, description="Checkpoint every N epochs (the last epoch is always checkpointed)."
    )
    phases: list[PhaseSpec] = Field(
        default_factory=list,
        description=(
            "Multi-phase recipe, e.g. head first with the base frozen, then fine-tune at a lower rate. "
            "Each phase gets a fresh optimizer on its trainable variables. train.epochs defaults to the sum."
        ),
    )
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        default="none", description="How the learning rate scales with batch_size / base_batch_size."
    )
    base_batch_size: PositiveInt = Field(
        default=256, description="Global batch size the learning rate was tuned for (lr_scaling reference)."
    )
    backbone_lr_multiplier: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="Discriminative learning rate: the backbone's trainable variables learn at this times the head's rate.",
    )
    class_weights: Literal["balanced"] | dict[int, Annotated[float, Field(ge=0.0)]] | None = Field(
        default=None,
        description="Per-class loss weights: 'balanced' (n / (K * count)) or {class id: weight}; missing ids weigh 1.",
    )
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = Field(
        default="float32",
        description="Keras dtype policy; mixed_float16 adds dynamic loss scaling. Outputs stay float32.",
    )
    jit_compile: bool = Field(default=False, description="XLA-compile the forward and backward pass.")
    clip_norm: float | None = Field(
        default=None, gt=0.0, description="Clip the all-reduced gradients to this global norm."
    )
    feature_cache: Literal["auto", "off"] = Field(
        default="auto",
        description=(
            "auto: epochs with the base frozen (freeze.mode feature_extraction) and augmentation off train the "
            "head on the backbone's outputs, computed once per backbone/weights/size/dataset and kept in the "
            "store (tl-ray cache list); off: run the base on every step."
        ),
    )
    init_from: str | None = Field(
        default=None,
        min_length=1,
        description="Warm start: load the model's weights from this checkpoint folder (URI) before the first epoch.",
    )
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
                f"({sum(p.epochs for p in self.phases)}); leave train.epochs out to use the sum"
            )
        return self


class StageSpec(_Section):
    """One stage of a staged sweep (``tune.stages``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Stage name, e.g. heads, top, deep.")
    freeze: FreezeSpec = Field(description="Freeze policy of this stage's trials (replaces model.freeze).")
    epochs: PositiveInt = Field(description="Epochs each trial of this stage trains.")
    keep: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of the previous stage's trials (best first) promoted to this stage; ignored for the first.",
    )
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=10.0, description="Learning rate of this stage (default: the trial's, times lr_factor)."
    )
    lr_factor: float = Field(default=1.0, gt=0.0, le=10.0, description="Multiplies the trial's learning rate.")


class TuneSpec(_Section):
    """The Ray Tune sweep."""

    num_samples: PositiveInt = Field(default=4, description="Trials drawn from the space (per grid point).")
    metric: str = Field(default="val_accuracy", description="Metric reported each epoch and selected on.")
    mode: Literal["max", "min"] = Field(default="max", description="Whether the metric is maximised.")
    scheduler: Literal["asha", "hyperband", "median", "pbt", "fifo"] = Field(
        default="asha",
        description=(
            "asha: async successive halving; hyperband; median: median stopping rule; "
            "pbt: population-based training (exploits copy a better trial's checkpoint); fifo: no early stopping."
        ),
    )
    search: Literal["random", "optuna"] = Field(
        default="random",
        description="random: Ray Tune's sampler (grid() dimensions are crossed); optuna: TPE (needs the optuna extra).",
    )
    seed: int | None = Field(
        default=None,
        description="Seed of the search (random sampler or Optuna): the same seed draws the same trials. Unset: random.",
    )
    grace_period: PositiveInt = Field(default=1, description="asha/median: epochs before a trial may be stopped.")
    reduction_factor: float = Field(default=2.0, gt=1.0, description="asha/hyperband: rung reduction factor.")
    perturbation_interval: PositiveInt = Field(default=2, description="pbt: epochs between exploit/explore steps.")
    keep_checkpoints: int = Field(
        default=3,
        ge=0,
        description="Checkpoints kept per trial, best by the metric (the latest is kept too); 0 keeps all.",
    )
    max_concurrent_trials: int = Field(default=0, ge=0, description="0: as many as resources allow.")
    trial_process: Literal["fork", "actor", "reuse"] = Field(
        default="fork",
        description=(
            "Where a single-worker trial trains. fork: in its own process, forked from a template that has "
            "TensorFlow imported (one per Tune actor; actors are reused), so memory is returned after every "
            "trial and a trial starts in a fork; actor: in a new Ray actor per trial (a Ray worker start and a "
            "TensorFlow import per trial); reuse: in the previous trial's actor process (memory grows a few MiB "
            "per trial)."
        ),
    )
    space: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Dotted field -> distribution string, e.g. 'loguniform(1e-4, 1e-2)', or a plain value; or a "
            "conditional entry {when: {FIELD: VALUE or [VALUES]}, sample: EXPR}, sampled only where every "
            "named field of the space took a listed value (absent otherwise; pbt never mutates conditional "
            "dimensions nor the fields their conditions test)."
        ),
    )
    stages: list[StageSpec] = Field(
        default_factory=list,
        description=(
            "Staged sweep: num_samples trials of the first stage (typically heads on cached features), then the "
            "best `keep` fraction of each stage goes on to the next (e.g. fine-tuning the top blocks, then deeper), "
            "each warm-starting from its parent's best checkpoint. Empty: one ordinary sweep."
        ),
    )

    @field_validator("space")
    @classmethod
    def _space_entries(cls, value: dict[str, Any]) -> dict[str, Any]:
        from tl_ray.tune.space import parse_space

        for key in value:
            _check_path(key)
        parse_space(value)  # entries, and conditions across entries
        return value

    @model_validator(mode="after")
    def _search_fits_space(self) -> "TuneSpec":
        from tl_ray.tune.space import parse_space, pbt_dimensions

        kinds = {d.kind for d in parse_space(self.space).values()}
        if self.search == "optuna" and "grid" in kinds:
            raise ValueError("search optuna cannot sample grid() dimensions; use choice() instead")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"tune.stages names must differ. Received: {names}")
        fixed_by_stage = [k for k in self.space if k.startswith("model.freeze") or k in ("train.epochs", "train.phases")]
        if self.stages and fixed_by_stage:
            raise ValueError(f"tune.space cannot search {fixed_by_stage[0]} in a staged sweep: each stage in "
                             "tune.stages sets the freeze policy and epochs")
        if self.stages and self.scheduler == "pbt":
            raise ValueError("tune.stages cannot run with scheduler pbt; use asha, hyperband, median or fifo")
        if self.scheduler == "pbt" and not kinds - {"fixed"}:
            raise ValueError("scheduler pbt needs at least one searched dimension in tune.space to mutate")
        mutable, excluded = pbt_dimensions(self.space)
        if self.scheduler == "pbt" and not mutable:
            raise ValueError(
                f"scheduler pbt needs a dimension it may mutate, but every searched dimension of tune.space is "
                f"conditional or gates a conditional one ({excluded}); add an unconditional dimension such as "
                f"train.learning_rate, or use another scheduler"
            )
        return self


class PromoteSpec(_Section):
    """Promotion of the sweep's best model to the registry."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Registry model name.")
    alias: str = Field(default="production", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Alias to move.")
    min_delta: float = Field(
        default=0.0, ge=0.0, description="How much the challenger must beat the current alias holder by."
    )
    holdout: str | None = Field(
        default=None,
        description=(
            "Dataset both models are scored on; not the one the sweep selected on. "
            "Defaults to data.test, then data.validation (with a warning)."
        ),
    )
    max_latency_ratio: float | None = Field(
        default=None,
        ge=1.0,
        description="Refuse a challenger whose p50 latency per batch exceeds the champion's times this. None: no check.",
    )
    latency_batch_size: PositiveInt = Field(default=32, description="Batch size of the gate's latency probe.")
    latency_repeats: int = Field(default=20, ge=3, le=1000, description="Timed batches per model in the latency probe.")


class AutoscalingSpec(_Section):
    """Ray Serve autoscaling of the prediction deployment."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas.")
    max_replicas: PositiveInt = Field(default=2, description="Most replicas.")
    target_ongoing_requests: float = Field(default=8, gt=0, description="Requests in flight per replica.")
    upscale_delay_s: float = Field(
        default=10.0, ge=0.0, le=3600.0, description="How long load must stay high before replicas are added."
    )
    downscale_delay_s: float = Field(
        default=120.0, ge=0.0, le=3600.0, description="How long load must stay low before replicas are removed."
    )
    look_back_period_s: float = Field(
        default=15.0, gt=10.0, le=600.0,
        description="Window the ongoing-request count is averaged over; above Serve's 10 s metrics interval.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSpec":
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class CanarySpec(_Section):
    """A traffic split between the production alias and a canary alias, rolled back on bad figures."""

    alias: str = Field(default="canary", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Alias of the canary version.")
    weight: float = Field(default=0.1, gt=0.0, lt=1.0, description="Fraction of requests routed to the canary.")
    max_error_rate: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Most canary 5xx answers per request over the window."
    )
    max_p99_ms: float = Field(default=1000.0, gt=0.0, description="Highest canary p99 latency over the window.")
    window_s: float = Field(default=60.0, gt=0.0, le=3600.0, description="Sliding window the bounds are checked over.")
    min_requests: PositiveInt = Field(
        default=20, description="Canary requests the window must hold before the bounds are judged."
    )


class ServeSpec(_Section):
    """The Ray Serve prediction endpoint."""

    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Autoscaling.")
    max_batch_size: PositiveInt = Field(default=32, description="Largest batch @serve.batch forms.")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=5.0, description="Wait to fill a batch.")
    max_instances: PositiveInt = Field(default=256, description="Most instances one request may carry.")
    max_body_bytes: PositiveInt = Field(default=16 * 2**20, description="Largest request body accepted.")
    host: str = Field(default="127.0.0.1", description="HTTP host of the Serve proxy.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    route_prefix: str = Field(default="/", pattern=r"^/", description="Route prefix of the application.")
    cpus_per_replica: float = Field(default=1.0, gt=0.0, description="CPUs reserved per replica.")
    auth_token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding a bearer token every request must carry. None: no auth.",
    )
    canary: CanarySpec | None = Field(default=None, description="Canary traffic split. None: production only.")
    follow_interval_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="`tl-ray serve --follow`: seconds between alias checks."
    )


class RunSpec(_Section):
    """What `tl-ray run` does around the sweep."""

    upstream: str | None = Field(
        default=None,
        description="Spec (relative to this file) that trains and registers the model named in model.weights.",
    )
    compare_from_scratch: bool = Field(
        default=False, description="Also train the same network from scratch and report its test accuracy."
    )
    serve: bool = Field(default=True, description="Serve the promoted model at the end and measure it over HTTP.")


class Spec(_Section):
    """A whole tl-ray experiment."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Experiment name.")
    storage: str = Field(
        default=DEFAULT_STORE,
        validate_default=True,
        description="Store root: a local folder (relative to the working directory) or s3://bucket/prefix.",
    )
    data: DataSpec = Field(description="Datasets.")
    model: ModelSpec = Field(description="Model.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training of one trial.")
    tune: TuneSpec = Field(default_factory=TuneSpec, description="Sweep.")
    promote: PromoteSpec | None = Field(default=None, description="Registry promotion.")
    serve: ServeSpec = Field(default_factory=ServeSpec, description="Serving.")
    run: RunSpec = Field(default_factory=RunSpec, description="The end-to-end job.")

    # Not part of the YAML: the folder relative paths in `run.upstream` resolve against.
    _base_dir: str = "."

    @field_validator("storage")
    @classmethod
    def _absolute_local_store(cls, value: str) -> str:
        # Ray runs trials and replicas in other working directories: a relative
        # local store is pinned to where the spec was loaded.
        if "://" in value:
            return value
        return os.path.abspath(os.path.expanduser(value))

    def resolve(self, uri: str) -> str:
        """A dataset or artifact path resolved against `storage` (full URIs pass through)."""
        from tl_ray import storage

        return storage.join(self.storage, uri) if not storage.is_absolute(uri) else uri

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _check_path(dotted: str) -> None:
    """Raises ValueError when ``dotted`` does not name a field of the spec."""
    model: Any = Spec
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            if model is dict or getattr(model, "__origin__", None) is dict:
                return  # free-form mapping such as backbone_args
            raise ValueError(f"'{'.'.join(parts[:i])}' has no sub-fields, so '{dotted}' is not a field")
        if part not in fields:
            raise ValueError(
                f"'{dotted}' is not a spec field: '{part}' must be one of {sorted(fields)}."
                f"{did_you_mean(part, fields)}"
            )
        model = _inner_model(fields[part].annotation)


def _inner_model(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if getattr(annotation, "__origin__", None) is dict:
        return dict
    if args:
        for arg in args:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
        if any(getattr(a, "__origin__", None) is dict for a in args):
            return dict
    return None


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Sets ``data[a][b][c] = value`` for ``dotted == 'a.b.c'``, creating sections as needed."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section. Received: {child!r}.")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Splits ``'a.b=c'`` into the dotted path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, e.g. train.epochs=3. Received: {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        _check_path(key)
    except ValueError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):
            from tl_ray.tune.space import _number

            value = _number(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc}).") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with dotted overrides applied (strings 'a.b=c' or a mapping)."""
    out = copy.deepcopy(data)
    items = (
        [parse_override(o) for o in overrides] if isinstance(overrides, list) else list(overrides.items())
    )
    for key, value in items:
        set_path(out, key, value)
    return out


def validate(data: Any, source: str = "spec", base_dir: str = ".") -> Spec:
    """Validates a spec mapping, turning pydantic's report into one ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a spec must be a YAML mapping. Received: {type(data).__name__}.")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling"
            received = err.get("input")
            shown = "" if err["type"] in ("missing",) else f" Received: {received!r}."
            lines.append(f"{loc}: {msg}.{shown}" if not msg.endswith(".") else f"{loc}: {msg}{shown}")
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None
    spec._base_dir = base_dir
    return spec


def load_spec(path: str | os.PathLike, overrides: list[str] | dict[str, Any] | None = None) -> Spec:
    """Loads, overrides and validates the spec at ``path``.

    Args:
        path: a YAML file.
        overrides: ``["a.b=c", ...]`` or ``{"a.b": c}``. Defaults to none.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"spec file {str(p)!r} does not exist. Pass the path of a YAML spec, e.g. jobs/quickstart/target.yaml.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec file {str(p)!r} is not valid YAML: {exc}") from None
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a spec must be a YAML mapping. Received: {type(data).__name__}.")
        data = apply_overrides(data, overrides)
    return validate(data, source=str(p), base_dir=str(p.parent))
