"""The spec's ``tune`` section: the Ray Tune sweep (space, search, scheduler, stages, actor reuse)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tl_ray.spec._base import PositiveInt, _Section
from tl_ray.spec.model import FreezeSpec
from tl_ray.spec.space import parse_space, pbt_dimensions


class StageSpec(_Section):
    """One stage of a staged sweep (``tune.stages``)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Stage name, e.g. heads, top, deep.")
    freeze: FreezeSpec = Field(description="Freeze policy of this stage's trials (replaces model.freeze).")
    epochs: PositiveInt = Field(description="Epochs each trial of this stage trains.")
    keep: float = Field(default=1.0, gt=0.0, le=1.0, description=(
        "Fraction of the previous stage's trials (best first) "
        "promoted to this stage; ignored for the first."))
    learning_rate: float | None = Field(
        default=None, gt=0.0, le=10.0,
        description="Learning rate of this stage (default: the trial's, times lr_factor).")
    lr_factor: float = Field(default=1.0, gt=0.0, le=10.0, description="Multiplies the trial's learning rate.")


class TuneSpec(_Section):
    """The Ray Tune sweep."""

    num_samples: PositiveInt = Field(default=4, description="Trials drawn from the space (per grid point).")
    metric: str = Field(default="val_accuracy", description="Metric reported each epoch and selected on.")
    mode: Literal["max", "min"] = Field(default="max", description="Whether the metric is maximised.")
    scheduler: Literal["asha", "hyperband", "median", "pbt", "fifo"] = Field(
        default="asha",
        description="asha, hyperband, median (stopping rule), pbt (population-based training) or fifo.")
    search: Literal["random", "optuna"] = Field(default="random", description=(
        "random: Ray Tune's sampler (grid() dimensions are crossed); optuna: TPE (needs the optuna extra)."))
    seed: int | None = Field(default=None, description=(
        "Seed of the search (random sampler or Optuna): the "
        "same seed draws the same trials. Unset: random."))
    grace_period: PositiveInt = Field(default=1, description="asha/median: epochs before a trial may be stopped.")
    reduction_factor: float = Field(default=2.0, gt=1.0, description="asha/hyperband: rung reduction factor.")
    perturbation_interval: PositiveInt = Field(default=2, description="pbt: epochs between exploit/explore steps.")
    keep_checkpoints: int = Field(
        default=3, ge=0,
        description="Checkpoints kept per trial, best by the metric (the latest is kept too); 0 keeps all.")
    checkpoint_on: Literal["improvement", "every"] = Field(default="improvement", description=(
        "improvement: write a due checkpoint (see train.checkpoint_every) only when tune.metric beats the "
        "trial's best one (a resumed trial restarts from its best epoch); every: each due one. pbt always "
        "writes every due one (its exploits copy a trial's latest checkpoint)."))
    max_concurrent_trials: int = Field(default=0, ge=0, description=(
        "The search's trials at once (0: as many as resources allow); run.seeds' runs are not limited."))
    reuse_actors: bool = Field(default=True, description=(
        "Single-worker trials: hand a finished trial's actor (TensorFlow up) to the next trial, which "
        "frees the previous trial's Keras state first. false: a new actor per trial (memory freed)."))
    space: dict[str, Any] = Field(default_factory=dict, description=(
        "Dotted field -> distribution string, e.g. 'loguniform(1e-4, 1e-2)', or a plain value; or a "
        "conditional entry {when: {FIELD: VALUE or [VALUES]}, sample: EXPR}, sampled where they hold."))
    stages: list[StageSpec] = Field(default_factory=list, description=(
        "Staged sweep: num_samples trials of the first stage, then the best `keep` fraction of each stage "
        "goes on to the next, warm-starting from its parent's best checkpoint. Empty: no stages."))

    @field_validator("space")
    @classmethod
    def _space_entries(cls, value: dict[str, Any]) -> dict[str, Any]:
        parse_space(value)  # entries, and conditions across entries (Spec checks that keys name its fields)
        return value

    @model_validator(mode="after")
    def _search_fits_space(self) -> "TuneSpec":
        kinds = {d.kind for d in parse_space(self.space).values()}
        if self.search == "optuna" and "grid" in kinds:
            raise ValueError("search optuna cannot sample grid() dimensions; use choice() instead")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"tune.stages names must differ. Received: {names}")
        fixed_by_stage = [k for k in self.space
                          if k.startswith("model.freeze") or k in ("train.epochs", "train.phases", "train.recipe")]
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
                f"train.learning_rate, or use another scheduler")
        return self
