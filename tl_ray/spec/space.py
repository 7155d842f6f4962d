"""Search-space expressions of ``tune.space``, parsed without Ray (``tl_ray.tune.space`` converts them).

An entry maps a dotted spec field to a plain value, to ``uniform|loguniform|randint(LOW, HIGH)``,
``quniform(LOW, HIGH, Q)`` or ``choice|grid([A, B, ...])`` (arguments are YAML literals), or to
``{when: {FIELD: VALUE or [VALUES]}, sample: EXPR}``: sampled only in trials where every named field took a
listed value, absent otherwise (a list in ``when`` lists alternatives: ``[[64], [128]]``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from tl_ray.errors import did_you_mean

KINDS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")
CONDITION_KEYS = ("when", "sample")
_CALL = re.compile(r"^\s*(?P<kind>[a-z_]+)\s*\((?P<args>.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Distribution:
    """One parsed search dimension; ``when``: (field, allowed values) pairs that must all hold."""

    kind: str
    args: tuple
    when: tuple[tuple[str, tuple], ...] = ()

    @property
    def conditional(self) -> bool:
        return bool(self.when)

    def holds(self, values: Mapping[str, Any]) -> bool:
        """Whether every condition holds for a trial's ``values`` (an absent or None field fails)."""
        return all(values.get(k) is not None and _matches(values[k], allowed) for k, allowed in self.when)

    def unconditional(self) -> "Distribution":
        return Distribution(self.kind, self.args)

    def can_take(self, value: Any) -> bool:
        """Whether sampling this dimension can ever give ``value``."""
        kind, args = self.kind, self.args
        if kind in ("fixed", "choice", "grid"):
            return _matches(value, self.extremes())
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        low, high = args[0], args[1]
        if kind == "randint":
            return float(value).is_integer() and low <= value < high
        if kind == "quniform":
            step = round(value / args[2]) * args[2]
            return low <= value <= high and math.isclose(step, value, rel_tol=1e-9, abs_tol=1e-12)
        return low <= value <= high

    def extremes(self) -> list[Any]:
        """Every listed value, or a range's two ends (the highest a half-open range can give)."""
        kind, args = self.kind, self.args
        if kind == "fixed":
            return [args[0]]
        if kind in ("choice", "grid"):
            return list(args[0])
        if kind == "randint":  # Ray's randint excludes HIGH
            return [args[0], args[1] - 1]
        if kind == "quniform":
            return [args[0], args[1]]
        return [args[0], math.nextafter(args[1], args[0])]  # uniform, loguniform: [LOW, HIGH)


def _matches(value: Any, allowed) -> bool:
    """Whether ``value`` is one of ``allowed``; a bool matches only itself (True == 1 in Python, not here)."""
    strict = isinstance(value, bool)
    return any(value is a if strict or isinstance(a, bool) else bool(value == a) for a in allowed)


def parse_distribution(key: str, expr: Any) -> Distribution:
    """Parses one ``tune.space`` entry (conditions are checked against the space by :func:`parse_space`).

    Raises:
        ValueError: the expression is malformed; the message names ``key``.
    """
    if isinstance(expr, dict) and "when" in expr:
        return _parse_conditional(key, expr)
    m = _CALL.match(expr) if isinstance(expr, str) else None
    if m is None:
        return Distribution("fixed", (expr,))
    kind, raw = m.group("kind", "args")
    if kind not in KINDS:
        raise ValueError(f"tune.space.{key}: unknown distribution {kind!r}; use one of {list(KINDS)}. Received: {expr!r}")
    try:
        args = [number(a) for a in yaml.safe_load(f"[{raw}]")]
    except yaml.YAMLError:
        raise ValueError(f"tune.space.{key}: arguments of {expr!r} are not valid YAML literals") from None
    if kind in ("choice", "grid"):
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise ValueError(f"tune.space.{key}: {kind} takes one non-empty list, e.g. {kind}([a, b]). Received: {expr!r}")
        return Distribution(kind, (tuple(args[0]),))
    want = 3 if kind == "quniform" else 2
    if len(args) != want or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ValueError(f"tune.space.{key}: {kind} takes {want} numbers. Received: {expr!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ValueError(f"tune.space.{key}: {kind} needs LOW < HIGH. Received: {expr!r}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"tune.space.{key}: loguniform needs LOW > 0. Received: {expr!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError(f"tune.space.{key}: randint takes integers. Received: {expr!r}")
    return Distribution(kind, tuple(args))


def _parse_conditional(key: str, expr: dict) -> Distribution:
    example = f'{{when: {{model.freeze.mode: fine_tune}}, sample: "randint(10, 60)"}}'
    extra = sorted(set(expr) - set(CONDITION_KEYS))
    if extra or "sample" not in expr:
        raise ValueError(
            f"tune.space.{key}: a conditional entry has exactly the keys 'when' and 'sample', e.g. {example}. "
            f"Received: {expr!r}")
    when = expr["when"]
    if not isinstance(when, dict) or not when:
        raise ValueError(
            f"tune.space.{key}: 'when' maps fields of tune.space to a value or a list of values, e.g. {example}. "
            f"Received: {when!r}")
    if isinstance(expr["sample"], dict):
        raise ValueError(f"tune.space.{key}: 'sample' is one expression or value, not a mapping. Received: {expr['sample']!r}")
    inner = parse_distribution(key, expr["sample"])
    if inner.kind == "grid":
        raise ValueError(
            f"tune.space.{key}: a conditional dimension cannot be grid(): a grid crosses every value into every "
            f"trial. Use choice() instead. Received: {expr['sample']!r}")
    conditions = tuple(
        (str(field), tuple(number(v) for v in (values if isinstance(values, list) else [values])))
        for field, values in when.items()
    )
    if any(not allowed for _, allowed in conditions):
        raise ValueError(f"tune.space.{key}: 'when' lists no value for a field. Received: {when!r}")
    return Distribution(inner.kind, inner.args, conditions)


def number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; numbers written that way are numbers here."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def parse_space(space: dict[str, Any]) -> dict[str, Distribution]:
    """Parses every entry and checks the conditions across entries.

    Raises:
        ValueError: an entry is malformed, or a ``when`` names a field not in the space, a value its field
            can never take, or a cycle of conditions.
    """
    dists = {key: parse_distribution(key, expr) for key, expr in space.items()}
    for key, dist in dists.items():
        for field, allowed in dist.when:
            if field not in dists:
                raise ValueError(
                    f"tune.space.{key}: 'when' names {field!r}, which is not in tune.space; a condition can only "
                    f"test a field the space samples or fixes.{did_you_mean(field, dists)}")
            never = [v for v in allowed if not dists[field].can_take(v)]
            if never:
                raise ValueError(
                    f"tune.space.{key}: 'when' expects {field} in {list(allowed)}, but {field} "
                    f"({describe(dists[field])}) can never be {never[0]!r}; fix the value or the dimension.")
    dependency_order(dists)
    return dists


def describe(dist: Distribution) -> str:
    """A dimension as errors name it, e.g. ``choice([a, b])`` or ``fixed at 3``."""
    if dist.kind == "fixed":
        return f"fixed at {dist.args[0]!r}"
    if dist.kind in ("choice", "grid"):
        return f"{dist.kind}({list(dist.args[0])})"
    return f"{dist.kind}({', '.join(str(a) for a in dist.args)})"


def dependency_order(dists: dict[str, Distribution]) -> list[str]:
    """Keys ordered so every field a condition tests comes before the dimension it gates."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(key: str, chain: list[str]) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            cycle = " -> ".join([*chain[chain.index(key):], key])
            raise ValueError(f"tune.space: conditions form a cycle ({cycle}); make one of them unconditional")
        state[key] = 1
        for field, _ in dists[key].when:
            visit(field, [*chain, key])
        state[key] = 2
        order.append(key)

    for key in dists:
        visit(key, [])
    return order


def pbt_dimensions(space: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(what PBT may mutate, what it leaves alone because of conditions).

    Mutating a conditional dimension or one that gates another would leave a trial with a value its
    condition rules out, or without one it needs; those are only sampled at the start and copied on exploit.
    """
    dists = parse_space(space)
    gating = {field for d in dists.values() for field, _ in d.when}
    searched = [k for k, d in dists.items() if d.kind not in ("fixed", "grid")]
    excluded = [k for k in searched if dists[k].conditional or k in gating]
    return [k for k in searched if k not in excluded], excluded


def trial_overrides(space: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's config as spec overrides: conditional dimensions whose condition failed (None) are dropped."""
    dists = parse_space(space)
    return {k: v for k, v in config.items() if not (v is None and k in dists and dists[k].conditional)}


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(d.args[0]) for d in parse_space(space).values() if d.kind == "grid")
