"""``tune.space`` as Ray Tune's ``param_space``, an Optuna define-by-run function, PBT's explore function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.search.sample import BaseSampler, Domain
from ray.tune.search.variant_generator import RecursiveDependencyError

from tl_ray.spec.space import Distribution, dependency_order, parse_space, pbt_dimensions


def to_tune(dist: Distribution):
    """The Ray Tune search object of one dimension."""
    if dist.when:
        return _Conditional(_ConditionalSample(dist))
    if dist.kind == "fixed":
        return dist.args[0]
    if dist.kind == "grid":
        return tune.grid_search(list(dist.args[0]))
    if dist.kind == "choice":
        return tune.choice(list(dist.args[0]))
    return getattr(tune, dist.kind)(*dist.args)


def _suggest(dist: Distribution, trial, name: str) -> Any:
    """Draws an (unconditional) dimension from an Optuna trial."""
    kind, args = dist.kind, dist.args
    if kind == "fixed":
        return args[0]
    if kind in ("uniform", "loguniform", "quniform"):
        step = args[2] if kind == "quniform" else None
        return trial.suggest_float(name, args[0], args[1], step=step, log=kind == "loguniform")
    if kind == "randint":  # Ray's randint excludes HIGH; Optuna's includes it
        return trial.suggest_int(name, args[0], args[1] - 1)
    choices = list(args[0])
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        return trial.suggest_categorical(name, choices)
    # Optuna's categories must be scalars: it picks an index, the trial gets the value.
    return choices[trial.suggest_categorical(name, list(range(len(choices))))]


@dataclass(frozen=True)
class _ConditionalSample:
    """Body of a conditional dimension's domain: None where its condition fails."""

    dist: Distribution

    def __call__(self, spec, random_state=None) -> Any:
        # Ray passes the trial's config (under "config") partly resolved: an unresolved field is a Domain.
        config = dict.get(spec, "config", spec) if isinstance(spec, dict) else spec
        values = {}
        for key, _ in self.dist.when:
            value = dict.get(config, key)
            if isinstance(value, Domain):
                raise RecursiveDependencyError(f"tune.space: waiting for {key!r} to be sampled")
            values[key] = value
        if not self.dist.holds(values):
            return None
        inner = self.dist.unconditional()
        return inner.args[0] if inner.kind == "fixed" else to_tune(inner).sample(random_state=random_state)


class _SeededCall(BaseSampler):
    """Calls a conditional dimension's body with the search's random state."""

    def sample(self, domain, config=None, size=1, random_state=None):
        values = [domain.func(config, random_state) for _ in range(size)]
        return values if size > 1 else domain.cast(values[0])


class _Conditional(Domain):
    """A conditional dimension, drawn from the search's random state.

    Not a ``tune.sample_from``: Tune draws those per trial from an unseeded state, so ``tune.seed`` would not
    repeat them and a resumed trial would draw again. Tune samples other ``Domain``s with the search's state.
    """

    default_sampler_cls = _SeededCall

    def __init__(self, func: _ConditionalSample):
        self.func = func

    @property
    def domain_str(self):
        return str(self.func.dist)


@dataclass(frozen=True)
class OptunaSpace:
    """Optuna define-by-run space: draws the dimensions in dependency order, skipping failed conditions."""

    dims: tuple[tuple[str, Distribution], ...]

    def __call__(self, trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, dist in self.dims:
            if dist.holds(values):
                values[key] = _suggest(dist.unconditional(), trial, key)
        return values  # fixed values and list-valued choices reach the trial's config through this


def to_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune's ``param_space``, keyed by the dotted names; a conditional dimension gives None where its
    condition fails."""
    return {key: to_tune(dist) for key, dist in parse_space(space).items()}


def optuna_space(space: dict[str, Any]) -> OptunaSpace:
    """The space as an Optuna define-by-run function (``OptunaSearch(space=...)``; Tune's param_space stays empty)."""
    dists = parse_space(space)
    return OptunaSpace(tuple((key, dists[key]) for key in dependency_order(dists)))


class KeepInRange:
    """PBT's ``custom_explore_fn``: a value its x0.8 or x1.2 carried past a range's end (a dropout of 1.08) is
    set to that end; a ``quniform`` value goes to its step, a ``randint`` one stays an integer."""

    def __init__(self, space: dict[str, Any]):
        dists = parse_space(space)
        self.ranges = {k: dists[k] for k in pbt_dimensions(space)[0]
                       if dists[k].kind in ("uniform", "loguniform", "quniform", "randint")}

    def __call__(self, config: dict) -> dict:
        for key, dist in self.ranges.items():
            value = config.get(key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            low, high = dist.extremes()
            if dist.kind == "quniform":
                q = dist.args[2]
                value = round(value / q) * q
            value = min(max(value, low), high)
            config[key] = int(round(value)) if dist.kind == "randint" else value
        return config
