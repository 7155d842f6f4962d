"""Staged sweeps (``tune.stages``): unfreezing as the budget that early stopping promotes along.

Each stage is an experiment folder ``<store>/experiments/<sweep>/<stage>``; ``--resume`` continues them.
"""

from __future__ import annotations

import math

from ray import tune

from tl_ray.errors import TrialError
from tl_ray.spec import Spec, StageSpec, apply_overrides, validate
from tl_ray.tune.space import to_param_space
from tl_ray.tune.trainable import tune_trial
from tl_ray.tune.tuner import SweepResult, TrialRow, run_tuner

PARENT_KEY = "stage.parent"


def stage_spec(spec: Spec, stage: StageSpec) -> Spec:
    """The base spec of a stage's trials: its freeze policy and epochs, no phases."""
    data = spec.to_dict()
    data["model"]["freeze"] = stage.freeze.model_dump(mode="json", exclude_unset=True)
    data["train"].update(epochs=stage.epochs, phases=[])
    data["tune"]["stages"] = []
    return validate(data, source=f"tune.stages {stage.name}")


def promoted(rows: list[TrialRow], keep: float, mode: str) -> list[TrialRow]:
    """The best ``ceil(keep * n)`` of the rows that have a checkpoint (at least one), best first.

    Ties go by trial id, not the rows' order (another in a resumed sweep, which must promote the same trials).
    """
    scored = sorted((r for r in rows if r.metric is not None and r.checkpoint), key=lambda r: r.trial_id)
    scored.sort(key=lambda r: r.metric, reverse=mode == "max")  # stable: ties stay in trial id order
    return scored[: max(1, math.ceil(keep * len(scored)))] if scored else []


def stage_overrides(spec: Spec, stage: StageSpec, parent: TrialRow) -> dict:
    """Dotted overrides of a trial of ``stage`` that continues ``parent``."""
    lr = parent.params.get("train.learning_rate", spec.train.learning_rate)
    lr = stage.learning_rate or float(lr) * stage.lr_factor
    return {**parent.params, "train.learning_rate": lr, "train.init_from": parent.checkpoint}


def stage_trial(config: dict, base_spec: dict, parents: dict[str, dict]) -> None:
    """Trial function of a later stage: the parent's parameters, warm-started from its checkpoint."""
    tune_trial(parents[config[PARENT_KEY]], base_spec)


def run_children(base: Spec, name: str, children: dict[str, dict], source: str, **kwargs) -> SweepResult:
    """One trial of ``base`` per named set of dotted overrides, each validated before any starts."""
    for key, values in children.items():
        validate(apply_overrides(base.to_dict(), values), source=f"{source} {key}")
    trainable = tune.with_parameters(stage_trial, base_spec=base.to_dict(), parents=children)
    space = {PARENT_KEY: tune.grid_search(sorted(children))}
    return run_tuner(base, name, trainable, space, num_samples=1, search=False, **kwargs)


def run_staged(spec: Spec, resume: bool = False, experiment: str | None = None) -> SweepResult:
    """Runs every stage of ``tune.stages`` in order; returns the rows of all stages.

    The first stage samples ``tune.space`` under the spec's scheduler; each later one runs the best ``keep``
    fraction of the previous stage's trials again, warm-started from their best checkpoints.

    Raises:
        TrialError: a stage produced no trial with a checkpoint to promote.
    """
    name = experiment or spec.name
    out = SweepResult(spec.tune.metric, spec.tune.mode)
    previous: list[TrialRow] = []
    for index, stage in enumerate(spec.tune.stages):
        base = stage_spec(spec, stage)
        if index == 0:
            trainable = tune.with_parameters(tune_trial, base_spec=base.to_dict())
            result = run_tuner(base, stage.name, trainable, to_param_space(spec.tune.space), resume=resume,
                               folder=(name,), stage=stage.name)
        else:
            parents = promoted(previous, stage.keep, spec.tune.mode)
            if not parents:
                errors = "; ".join(f"{r.trial_id}: {r.error}" for r in previous if r.error)[:2000]
                raise TrialError(f"stage {spec.tune.stages[index - 1].name!r} of sweep {name!r} left no trial with a "
                                 f"checkpoint and '{spec.tune.metric}' to promote to stage {stage.name!r}. {errors}")
            overrides = {p.trial_id: stage_overrides(spec, stage, p) for p in parents}
            result = run_children(base, stage.name, overrides, f"stage {stage.name} trial from",
                                  resume=resume, folder=(name,), stage=stage.name)
            by_id = {p.trial_id: p for p in parents}
            for row in result.rows:
                parent = by_id.get(str(row.params.get(PARENT_KEY, "")))
                if parent is not None:
                    row.parent = parent.trial_id
                    row.params = dict(parent.params)
        out.rows.extend(result.rows)
        out.wall_time_s += result.wall_time_s
        out.experiment_path = result.experiment_path.rsplit("/", 1)[0]
        previous = result.rows
    return out
