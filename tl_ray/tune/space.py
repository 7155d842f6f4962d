"""Search-space expressions of ``tune.space``, parsed without Ray.

Each entry maps a dotted spec field to an expression:

    uniform(LOW, HIGH)  loguniform(LOW, HIGH)  quniform(LOW, HIGH, Q)
    randint(LOW, HIGH)  choice([A, B, ...])    grid([A, B, ...])

or to a plain value (fixed for every trial). Arguments are YAML literals, so
``choice([feature_extraction, fine_tune])`` and ``grid([[64], [128, 64]])`` work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

KINDS = ("uniform", "loguniform", "quniform", "randint", "choice", "grid")
_CALL = re.compile(r"^\s*(?P<kind>[a-z_]+)\s*\((?P<args>.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Distribution:
    """One parsed search dimension."""

    kind: str
    args: tuple

    def to_tune(self):
        """The Ray Tune search object (imports Ray)."""
        from ray import tune

        if self.kind == "fixed":
            return self.args[0]
        if self.kind == "grid":
            return tune.grid_search(list(self.args[0]))
        if self.kind == "choice":
            return tune.choice(list(self.args[0]))
        return getattr(tune, self.kind)(*self.args)


def parse_distribution(key: str, expr: Any) -> Distribution:
    """Parses one ``tune.space`` entry.

    Raises:
        ValueError: the expression is malformed; the message names ``key``.
    """
    if not isinstance(expr, str) or not _CALL.match(expr):
        return Distribution("fixed", (expr,))
    m = _CALL.match(expr)
    kind, raw = m.group("kind"), m.group("args")
    if kind not in KINDS:
        raise ValueError(f"tune.space.{key}: unknown distribution {kind!r}; use one of {list(KINDS)}. Received: {expr!r}")
    try:
        args = [_number(a) for a in yaml.safe_load(f"[{raw}]")]
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


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; numbers written that way are numbers here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_space(space: dict[str, Any]) -> dict[str, Distribution]:
    return {key: parse_distribution(key, expr) for key, expr in space.items()}


def to_param_space(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune's ``param_space``: a flat mapping keyed by the dotted names."""
    return {key: dist.to_tune() for key, dist in parse_space(space).items()}


def grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(d.args[0]) for d in parse_space(space).values() if d.kind == "grid")

