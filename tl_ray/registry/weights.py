"""``model.weights`` resolved to the local file a model is built from, a registered model's included."""

from __future__ import annotations

from tl_ray import store
from tl_ray.models.weights import REGISTRY_SCHEME, fetch_weights_file, weights_kind
from tl_ray.registry.store import Registry


def resolve_weights(weights: str, storage_root: str) -> str | None:
    """``model.weights`` as ``build_model`` needs it; relative paths resolve against ``storage_root``.

    Returns:
        ``"imagenet"``, ``None``, or the local path of a weights file or of a registered ``model.keras``.

    Raises:
        ConfigError: ``weights`` has an unsupported form.
        StorageError: the file cannot be fetched.
        RegistryError: the registry reference does not exist.
    """
    kind = weights_kind(weights)
    if kind == "imagenet":
        return "imagenet"
    if kind == "none":
        return None
    if kind == "registry":
        return str(Registry(storage_root).fetch(weights[len(REGISTRY_SCHEME):]) / "model.keras")
    uri = weights if store.is_absolute(weights) else store.join(storage_root, weights)
    return str(fetch_weights_file(uri))
