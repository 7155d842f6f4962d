"""build_model: the model every tl-ray stage trains, exports and serves::

    image (float32 0..255 RGB) -> preprocess -> backbone (headless, cut at model.feature_layer when set)
      -> pool (avg | max | flatten) -> [Dropout, Dense(relu)] * n -> Dropout
      -> predictions: Dense(num_classes, softmax), Dense(1, sigmoid) for 2 classes, or
         Dense(num_classes, sigmoid) for model.head.multi_label
"""

from __future__ import annotations

import keras

from tl_ray.errors import ConfigError, StorageError, did_you_mean
from tl_ray.models.backbones import Backbone, get_backbone
from tl_ray.models.freeze import apply_freeze
from tl_ray.models.preprocess import preprocessing_layer
from tl_ray.models.weights import load_backbone_weights, transfer_backbone_weights, weights_kind
from tl_ray.spec import HeadSpec, ModelSpec

POOLING = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
           "flatten": keras.layers.Flatten}


def build_model(model_spec: ModelSpec, num_classes: int, image_size: tuple[int, int], *,
                weights_file: str | None = None, seed: int | None = None) -> keras.Model:
    """Builds the uncompiled classifier ``model_spec`` describes, with ``apply_freeze`` applied.

    Args:
        model_spec: the ``model`` section of the spec.
        num_classes: number of labels; 2 gives a single sigmoid unit.
        image_size: ``(height, width)`` of the input images.
        weights_file: the local file ``tl_ray.registry.weights.resolve_weights`` returns, required when
            ``model.weights`` names a file or the registry. Defaults to None.
        seed: seeds Keras' global random generators before any variable is created. Defaults to None.

    Raises:
        ConfigError: unknown backbone, image too small, fewer than 2 classes, bad backbone_args, or
            weights that do not fit.
        StorageError: ImageNet weights cannot be downloaded.
    """
    backbone = get_backbone(model_spec.backbone)
    backbone.check_size(image_size)
    height, width = (int(v) for v in image_size)
    _check_classes(num_classes)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    inputs = keras.Input(shape=(height, width, 3), dtype="float32", name="image")
    x = preprocessing_layer(backbone.name)(inputs)
    base = _backbone_with_weights(backbone, model_spec, (height, width, 3), weights_file)
    if model_spec.batchnorm_momentum is not None:
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = model_spec.batchnorm_momentum
    # Always training=False in the graph; apply_freeze decides whether the outer flag overrides it.
    pooled = POOLING[model_spec.head.pooling](name="pool")(base(x, training=False))
    outputs = head_layers(pooled, model_spec.head, num_classes, seed=seed)
    # backbone_of reads the backbone back from this name (freeze.from_block, weight transfer).
    return apply_freeze(keras.Model(inputs, outputs, name=f"tlray_{backbone.name}"), model_spec.freeze)


def head_layers(pooled, head: HeadSpec, num_classes: int, *, seed: int | None = None):
    """The layers after pooling: ``[Dropout, Dense(relu)] * n``, Dropout, ``predictions``.

    Each Dense layer's kernel has its own seed, so the head starts from the same weights whether or not a
    backbone was built before it (``build_head``).
    """

    def kernel(i: int):
        return "glorot_uniform" if seed is None else keras.initializers.GlorotUniform(seed=seed * 1000 + i)

    x = pooled
    for i, units in enumerate(head.dense):
        if head.dropout:
            x = keras.layers.Dropout(head.dropout, seed=seed, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=kernel(i), name=f"head_dense_{i}")(x)
    if head.dropout:
        x = keras.layers.Dropout(head.dropout, seed=seed, name="head_dropout")(x)
    if head.multi_label:
        units, activation = num_classes, "sigmoid"
    else:
        units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    # float32 output keeps probabilities exact under mixed precision.
    return keras.layers.Dense(units, activation=activation, dtype="float32", kernel_initializer=kernel(len(head.dense)),
                              name="predictions")(x)


def build_head(head: HeadSpec, num_classes: int, feature_shape, *, seed: int | None = None,
               name: str = "tlray_head") -> keras.Model:
    """The head alone, on pooled features of ``feature_shape``: the layers ``build_model`` puts after ``pool``.

    Layer names and, with the same seed, initial weights equal the full model's, so weights move by name.
    """
    _check_classes(num_classes)
    inputs = keras.Input(shape=tuple(int(v) for v in feature_shape), dtype="float32", name="features")
    return keras.Model(inputs, head_layers(inputs, head, num_classes, seed=seed), name=name)


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes. Received: num_classes={num_classes}. "
                          "Check the dataset's manifest.")


def _backbone_with_weights(backbone: Backbone, spec: ModelSpec, input_shape, weights_file: str | None):
    kind, args = weights_kind(spec.weights), dict(spec.backbone_args)
    what = f"{backbone.name} with backbone_args {args}"
    if kind in ("file", "registry") and weights_file is None:
        raise ConfigError(
            f"model.weights {spec.weights!r} must be fetched before building: pass "
            "weights_file=resolve_weights(spec.model.weights, spec.storage) to build_model."
        )
    keras_weights = "imagenet" if kind == "imagenet" else None
    try:
        base = backbone.build(input_shape, keras_weights, name="backbone", **args)
    except ConfigError:
        raise
    except Exception as exc:  # Keras raises bare Exception for a failed download
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if keras_weights == "imagenet" and not isinstance(exc, (TypeError, ValueError)) or "URL fetch" in text:
            raise StorageError(
                f"ImageNet weights for backbone {backbone.name!r} could not be downloaded ({text}). "
                "This node may be offline: download them where the internet is reachable, stage the file "
                "in object storage and set model.weights to its URI (or use weights: none)."
            ) from None
        if isinstance(exc, (TypeError, ValueError)):
            raise ConfigError(
                f"{backbone.constructor} rejected input_shape={input_shape}, weights={keras_weights!r} and "
                f"model.backbone_args {args}: {text} Fix model.backbone_args or data.image_size."
            ) from None
        raise
    weights_h5 = kind == "file" and not weights_file.endswith(".keras")
    if weights_h5:
        load_backbone_weights(base, weights_file, what=what)
    cut = _cut(base, backbone, spec.feature_layer) if spec.feature_layer else base
    if kind in ("file", "registry") and not weights_h5:
        # The saved backbone may be whole or cut at the same layer; both share their layers with ``cut``.
        transfer_backbone_weights([base] if cut is base else [base, cut], weights_file, source=spec.weights,
                                  what=what)
    return cut


def _cut(base: keras.Model, backbone: Backbone, layer_name: str) -> keras.Model:
    """``base`` up to ``layer_name`` (``model.feature_layer``), named ``backbone``, sharing its layers."""
    names = [layer.name for layer in base.layers]
    if layer_name not in names:
        starts = sorted(backbone.block_starts(names).values())
        block_ends = [names[i - 1] for i in starts[1:]] + [names[-1]]
        raise ConfigError(
            f"model.feature_layer must name a layer of backbone {backbone.name!r}. Received: {layer_name!r}."
            f"{did_you_mean(layer_name, names)} Its blocks end at {block_ends}."
        )
    return keras.Model(base.inputs, base.get_layer(layer_name).output, name="backbone")
