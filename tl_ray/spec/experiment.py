"""A whole experiment: every section of the spec, and ``run`` (what `tl-ray run` does around the sweep)."""

from __future__ import annotations

import copy
import os
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tl_ray.spec._base import DEFAULT_STORE, _Section
from tl_ray.spec.data import DataSpec
from tl_ray.spec.model import ModelSpec
from tl_ray.spec.paths import check_path, set_path
from tl_ray.spec.serve import PromoteSpec, ServeSpec
from tl_ray.spec.space import describe, parse_space
from tl_ray.spec.train import PhaseSpec, TrainSpec
from tl_ray.spec.tune import TuneSpec


class RunSpec(_Section):
    """What `tl-ray run` does around the sweep."""

    upstream: str | None = Field(default=None, description=(
        "Spec (relative to this file) that trains and registers the model named in model.weights."))
    compare_from_scratch: bool = Field(
        default=False, description="Also train the same network from scratch and report its test accuracy.")
    serve: bool = Field(default=True, description="Serve the promoted model at the end and measure it over HTTP.")
    seeds: int = Field(default=1, ge=1, le=100, description=(
        "Retrain the sweep's best configuration (and the from-scratch baseline) with 0..N-1 added to "
        "train.seed and data.seed, report mean ± std test accuracy, promote the best by validation."))


class Spec(_Section):
    """A whole tl-ray experiment."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Experiment name.")
    storage: str = Field(default=DEFAULT_STORE, validate_default=True, description=(
        "Store root: a local folder (relative to the working directory) or s3://bucket/prefix. Also "
        "written as a mapping {uri: ..., locking: ...}, which sets storage_locking."))
    storage_locking: Literal["conditional", "lease"] | None = Field(default=None, description=(
        "How registry and feature-cache writes are made safe: conditional writes (refused by a store "
        "ignoring them) or lease (a lock object, weaker). None: $TLRAY_STORAGE_LOCKING or conditional."))
    data: DataSpec = Field(description="Datasets.")
    model: ModelSpec = Field(description="Model.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training of one trial.")
    tune: TuneSpec = Field(default_factory=TuneSpec, description="Sweep.")
    promote: PromoteSpec | None = Field(default=None, description="Registry promotion.")
    serve: ServeSpec = Field(default_factory=ServeSpec, description="Serving.")
    run: RunSpec = Field(default_factory=RunSpec, description="The end-to-end job.")

    # Not part of the YAML: the folder relative paths in `run.upstream` resolve against.
    _base_dir: str = "."

    @model_validator(mode="before")
    @classmethod
    def _storage_mapping(cls, data: Any) -> Any:
        """``storage: {uri: s3://b/p, locking: lease}`` is ``storage: s3://b/p`` with ``storage_locking: lease``."""
        if not isinstance(data, dict) or not isinstance(data.get("storage"), dict):
            return data
        given = dict(data["storage"])
        unknown = sorted(set(given) - {"uri", "locking"})
        if unknown or "uri" not in given:
            raise ValueError(
                "storage as a mapping takes the keys uri (required) and locking, e.g. "
                f"{{uri: s3://bucket/prefix, locking: lease}}. Received: {given!r}")
        data = {**data, "storage": given["uri"]}
        if "locking" in given:
            data["storage_locking"] = given["locking"]
        return data

    @field_validator("storage")
    @classmethod
    def _absolute_local_store(cls, value: str) -> str:
        # Ray runs trials and replicas in other working directories: pin a relative store to this one.
        if "://" in value:
            return value
        return os.path.abspath(os.path.expanduser(value))

    @field_validator("tune", mode="before")
    @classmethod
    def _space_keys_name_fields(cls, value: Any) -> Any:
        """Every ``tune.space`` key names a spec field: checked here, before the section, which sees no other."""
        space = value.get("space") if isinstance(value, dict) else getattr(value, "space", None)
        for key in space if isinstance(space, dict) else ():
            try:
                check_path(cls, key)
            except ValueError as exc:  # reported as tune.space's error, like the section's own
                raise ValidationError.from_exception_data(
                    "TuneSpec", [{"type": "value_error", "loc": ("space",), "input": space, "ctx": {"error": exc}}]
                ) from None
        return value

    @model_validator(mode="after")
    def _space_values_fit_their_fields(self) -> "Spec":
        """Every value a ``tune.space`` dimension can give (listed values, a range's ends) is one its field
        takes, so a bad space fails here rather than trial by trial."""
        dims = parse_space(self.tune.space)
        base = self.model_dump(mode="json")
        base["tune"]["space"] = {}
        for key, dist in dims.items():
            for value in dist.extremes():
                if value is None:  # the field's default
                    continue
                data = copy.deepcopy(base)
                # A conditional dimension is sampled only where its conditions hold: check it there.
                for field, allowed in dist.when:
                    set_path(data, field, allowed[0])
                set_path(data, key, value)
                try:
                    Spec.model_validate(data)
                except ValidationError as exc:
                    # The field's own errors, or its items' (a list's element, a union's member). Errors of other
                    # fields (rules across fields) are the trial's to report.
                    own = [e for e in exc.errors()
                           if f"{'.'.join(str(p) for p in e['loc'])}.".startswith(f"{key}.")]
                    if own:
                        listed = dist.kind in ("fixed", "choice", "grid")
                        # uniform/loguniform never give HIGH itself: name the bound as written.
                        shown = dist.args[1] if dist.kind in ("uniform", "loguniform") and value != dist.args[0] \
                            else value
                        raise ValueError(
                            f"tune.space.{key}: {describe(dist)} {'gives' if listed else 'reaches'} {shown!r}, "
                            f"which {key} does not take ({own[0]['msg'].removeprefix('Value error, ')}). Narrow "
                            f"it to values the field accepts") from None
        return self

    @model_validator(mode="after")
    def _seeds_and_recipe_fit(self) -> "Spec":
        """Rules across sections for ``run.seeds`` > 1 and ``train.recipe: lp_ft`` (set or searched)."""
        if self.run.seeds > 1 and not self.data.test:
            raise ValueError(f"run.seeds ({self.run.seeds}) reports test accuracy over seeds: set data.test, or "
                             "run.seeds: 1")
        if self.run.seeds > 1 and self.tune.stages:
            raise ValueError("run.seeds retrains the sweep's best configuration, which a staged sweep spreads over "
                             "tune.stages; use train.recipe: lp_ft (LP-FT inside each trial) or run.seeds: 1")
        dists = parse_space(self.tune.space)
        recipe, mode = dists.get("train.recipe"), dists.get("model.freeze.mode")
        if not (recipe.can_take("lp_ft") if recipe else self.train.recipe == "lp_ft"):
            return self
        if self.tune.stages:
            raise ValueError("train.recipe lp_ft cannot run in a staged sweep, whose tune.stages set the freeze "
                             "policy and epochs (heads on cached features, then fine-tuning, is LP-FT across "
                             "stages); set train.recipe: plain")
        listed = mode is not None and mode.kind in ("fixed", "choice", "grid")
        modes = set(mode.extremes()) if listed else {self.model.freeze.mode}
        if recipe is not None and recipe.when:  # lp_ft is drawn only where its conditions hold
            modes &= set(dict(recipe.when).get("model.freeze.mode", modes))
        if modes - {"fine_tune"}:
            where = "model.freeze.mode" if not listed else f"tune.space's model.freeze.mode ({describe(mode)})"
            raise ValueError(
                f"train.recipe lp_ft fine-tunes under model.freeze after its probe, so it needs model.freeze.mode "
                f"fine_tune, but {where} gives {sorted(modes - {'fine_tune'})[0]!r}. Set model.freeze.mode: "
                f"fine_tune, or search the recipe only there: train.recipe: {{when: {{model.freeze.mode: "
                f"fine_tune}}, sample: \"choice([plain, lp_ft])\"}}")
        if recipe is not None and self.tune.scheduler in ("asha", "median") \
                and self.tune.grace_period <= self.train.probe_epochs:
            raise ValueError(
                f"tune.grace_period ({self.tune.grace_period}) must exceed train.probe_epochs "
                f"({self.train.probe_epochs}) when tune.space searches train.recipe: {self.tune.scheduler} would "
                "otherwise stop LP-FT trials in their probe, before they fine-tune. Raise tune.grace_period or "
                "lower train.probe_epochs")
        return self

    def phases(self) -> list[PhaseSpec]:
        """``train.phases``, or the two ``train.recipe: lp_ft`` stands for (empty: one model.freeze phase)."""
        if self.train.recipe == "lp_ft":
            return self.train.lp_ft_phases(self.model.freeze)
        return list(self.train.phases)

    def resolve(self, uri: str) -> str:
        """A dataset or artifact path resolved against `storage` (full URIs pass through)."""
        from tl_ray import store

        return store.join(self.storage, uri) if not store.is_absolute(uri) else uri

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
