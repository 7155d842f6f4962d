"""preprocessing_layer: a backbone's ``preprocess_input`` built from stock Keras layers, carried inside every
model so that training, export and serving cannot disagree and a ``.keras`` file loads without tl-ray.
"""

from __future__ import annotations

import keras
import numpy as np

from tl_ray.errors import ConfigError
from tl_ray.models.backbones import get_backbone

# keras.applications.imagenet_utils' constants: the "caffe" mean is in BGR order, the "torch" ones in RGB.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def preprocessing_layer(backbone: str, *, name: str = "preprocess") -> keras.layers.Layer:
    """The ``preprocess_input`` of ``backbone``'s family as stock Keras layers, for NHWC 0..255 RGB input.

    Raises:
        ConfigError: ``backbone`` is not a known backbone name.
    """
    mode = get_backbone(backbone).preprocess_mode
    # float32 under any dtype policy: pixels 0..255 lose precision in float16, and the backbone casts anyway.
    if mode == "none":
        return keras.layers.Identity(name=name, dtype="float32")
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name, dtype="float32")
    if mode == "torch":
        mean, std = np.array(TORCH_MEAN), np.array(TORCH_STD)
        return keras.layers.Rescaling((1.0 / (255.0 * std)).astype("float32"), offset=(-mean / std).astype("float32"),
                                      name=name, dtype="float32")
    if mode == "caffe":
        pixels = keras.Input(shape=(None, None, 3), dtype="float32", name="rgb")
        bgr = keras.ops.flip(pixels, axis=-1)
        centred = keras.layers.Rescaling(1.0, offset=-np.array(CAFFE_MEAN_BGR, "float32"), name="centre",
                                         dtype="float32")(bgr)
        return keras.Model(pixels, centred, name=name)
    raise ConfigError(f"backbone {backbone!r} has preprocess_mode {mode!r}; expected one of caffe, tf, torch, none.")


def replace_legacy_preprocess(model: keras.Model) -> keras.Model:
    """``model`` with a ``BackbonePreprocess`` layer swapped for ``preprocessing_layer``; else ``model`` itself.

    Every other layer is shared with ``model`` and called as before (the backbone keeps ``training=False``).
    """
    legacy = [layer for layer in model.layers if isinstance(layer, BackbonePreprocess)]
    if not legacy:
        return model
    swaps = {id(layer): preprocessing_layer(layer.backbone, name=layer.name) for layer in legacy}
    return keras.models.clone_model(model, clone_function=lambda layer: swaps.get(id(layer), layer))


@keras.saving.register_keras_serializable(package="tl_ray")
class BackbonePreprocess(keras.layers.Layer):
    """Applies one backbone's ``preprocess_input``; kept registered so that older ``.keras`` files load.

    Raises:
        ConfigError: ``backbone`` is not a known backbone name.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = get_backbone(backbone).preprocess_fn()

    def call(self, inputs):
        # preprocess_input mutates numpy arrays in place; here it always gets a tensor.
        return self._fn(keras.ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}
