"""Loading a spec: YAML, ``--set`` overrides on dotted paths, and validation into one ConfigError."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tl_ray.errors import ConfigError
from tl_ray.spec.experiment import Spec
from tl_ray.spec.paths import check_path, set_path
from tl_ray.spec.space import number


def parse_override(text: str) -> tuple[str, Any]:
    """Splits ``'a.b=c'`` into the dotted path and a YAML-typed value."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, e.g. train.epochs=3. Received: {text!r}.")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        check_path(Spec, key)
    except ValueError as exc:
        raise ConfigError(f"--set {key}: {exc}") from None
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str):
            value = number(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({exc}).") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with dotted overrides applied (strings 'a.b=c' or a mapping)."""
    out = copy.deepcopy(data)
    items = [parse_override(o) for o in overrides] if isinstance(overrides, list) else list(overrides.items())
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
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; remove it or check its spelling"
            # A rule across sections (loc empty) names its fields itself; its input is the whole spec.
            said = err["type"] == "missing" or not loc or "Received:" in msg
            shown = "" if said else f" Received: {err.get('input')!r}."
            where = f"{loc}: " if loc else ""
            lines.append(f"{where}{msg}{'' if msg.endswith(('.', '?')) else '.'}{shown}")
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None
    spec._base_dir = base_dir
    return spec


def load_spec(path: str | os.PathLike, overrides: list[str] | dict[str, Any] | None = None) -> Spec:
    """Loads the YAML spec at ``path``, applies ``overrides`` (``["a.b=c"]`` or ``{"a.b": c}``), validates it.

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
    if overrides and isinstance(data, dict):  # validate refuses anything else
        data = apply_overrides(data, overrides)
    return validate(data, source=str(p), base_dir=str(p.parent))
