"""Dotted paths into the spec (``train.epochs``): checking that one names a field, and setting one in a mapping."""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel

from tl_ray.errors import ConfigError, did_you_mean


def check_path(model: type[BaseModel], dotted: str) -> None:
    """Raises ValueError when ``dotted`` does not name a field of ``model`` (e.g. the Spec)."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if model is dict:
            return  # free-form mapping such as backbone_args
        if model is None:
            raise ValueError(f"'{'.'.join(parts[:i])}' has no sub-fields, so '{dotted}' is not a field")
        fields = model.model_fields
        if part not in fields:
            raise ValueError(
                f"'{dotted}' is not a spec field: '{part}' must be one of {sorted(fields)}."
                f"{did_you_mean(part, fields)}")
        model = _inner_model(fields[part].annotation)


def _inner_model(annotation: Any) -> Any:
    """The model a field holds (also in ``X | None`` or ``list[X]``), ``dict`` for a mapping, else None."""
    if get_origin(annotation) is dict:
        return dict
    kinds = (annotation, *get_args(annotation))
    model = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    return dict if model is None and any(get_origin(k) is dict for k in kinds) else model


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
