"""Small registry models for the serving tests: quick to build, with the registry's input contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = (32, 32)
CLASSES = ["sandal", "shirt", "sneaker"]


def small_model(seed: int, nan: bool = False):
    """A small conv classifier with the registry's input contract, much quicker to build than MobileNet."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SIZE, 3), dtype="float32")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(CLASSES), activation="softmax")(x))
    if nan:  # a diverged training run: loads fine, answers NaN, so the server answers 500
        model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    return model


def publish(store: str, model, folder: Path, name: str = "tiny") -> int:
    """Exports ``model`` to ``folder`` and publishes it as the next version of ``name``; returns the version."""
    from tl_ray.models.export import export_model
    from tl_ray.registry.store import Registry

    export_model(model, folder)
    return Registry(store).publish(name, folder, {"image_size": list(SIZE), "class_names": CLASSES})


def request_body(case: dict) -> bytes:
    """The body of a case of tests/data/requests/bad_requests.yaml."""
    if "nest" in case:
        return b'{"instances": ' + b"[" * case["nest"] + b"0" + b"]" * case["nest"] + b"}"
    if "digits" in case:
        return b'{"instances": [[[' + b"1" * case["digits"] + b"]]]}"
    return bytes.fromhex(case["body_hex"]) if "body_hex" in case else case["body"].encode()
