"""BackbonePreprocess: the backbone's own ``preprocess_input`` as a Keras layer.

Every tl-ray model takes float32 RGB pixels in 0..255 and carries its
preprocessing inside, so training, export and serving cannot disagree about
it. A registered layer (not a ``Lambda``) keeps ``.keras`` files loadable
with ``safe_mode=True``.
"""

from __future__ import annotations

import keras

from tl_ray.models.backbones import get_backbone


@keras.saving.register_keras_serializable(package="tl_ray")
class BackbonePreprocess(keras.layers.Layer):
    """Applies ``keras.applications.<family>.preprocess_input`` of one backbone.

    For backbones that rescale inside the network (MobileNetV3, EfficientNet,
    EfficientNetV2, ConvNeXt) Keras' ``preprocess_input`` is the identity, and
    so is this layer.

    Args:
        backbone: a tl-ray backbone name, e.g. ``"mobilenet_v2"``.
        **kwargs: base ``Layer`` arguments such as ``name``.

    Raises:
        ConfigError: ``backbone`` is not a known backbone name.

    Example:

    >>> layer = BackbonePreprocess("mobilenet_v2")
    >>> float(layer(keras.ops.full((1, 2, 2, 3), 255.0))[0, 0, 0, 0])
    1.0
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
