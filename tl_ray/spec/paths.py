"""Dotted paths into the spec (``train.epochs``): checking that one names a field, and setting one in a mapping."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tl_ray.errors import ConfigError, did_you_mean


def check_path(model: type[BaseModel], dotted: str) -> None:
    """Raises ValueError when ``dotted`` does not name a field of ``model`` (e.g. the Spec)."""
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
