"""build_model: head, freeze policies and weights sources (export round trips: test_portable_model.py)."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from tl_ray.errors import ConfigError, StorageError  # noqa: E402
from tl_ray.models import apply_freeze, build_model  # noqa: E402
from tl_ray.models.weights import save_backbone_weights  # noqa: E402
from tl_ray.registry.weights import resolve_weights  # noqa: E402
from tl_ray.spec import FreezeSpec, ModelSpec  # noqa: E402

SIZE = (32, 32)


def spec(**kwargs) -> ModelSpec:
    base = dict(backbone="mobilenet_v2", weights="none", backbone_args={"alpha": 0.35})
    return ModelSpec(**{**base, **kwargs})


def images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *SIZE, 3)).astype("float32")


def train_step(model, n=4):
    labels = np.arange(n) % 3
    optimizer = keras.optimizers.SGD(0.5)
    with tf.GradientTape() as tape:
        probs = model(images(n), training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, probs))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))


def snapshot(variables):
    return [v.numpy() for v in variables]


def bn_stats(backbone):
    return [v for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


@pytest.fixture(autouse=True)
def _fresh_session(tmp_path, monkeypatch):
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    yield
    keras.backend.clear_session()


def test_two_classes_is_one_sigmoid_unit():
    model = build_model(spec(), 2, SIZE)
    head = model.get_layer("predictions")
    assert head.units == 1 and head.activation.__name__ == "sigmoid" and head.dtype == "float32"
    assert build_model(spec(), 5, SIZE).output_shape == (None, 5)


def test_head_layers_follow_spec():
    model = build_model(spec(head={"pooling": "max", "dense": [8, 4], "dropout": 0.1}), 3, SIZE)
    names = [layer.name for layer in model.layers]
    assert names == ["image", "preprocess", "backbone", "pool", "head_dropout_0", "head_dense_0",
                     "head_dropout_1", "head_dense_1", "head_dropout", "predictions"]
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalMaxPooling2D)


def test_feature_extraction_trains_only_the_head():
    model = build_model(spec(), 3, SIZE, seed=0)
    backbone = model.get_layer("backbone")
    assert backbone.trainable_variables == []
    frozen, stats = snapshot(backbone.variables), snapshot(bn_stats(backbone))
    head = snapshot(model.get_layer("predictions").variables)
    train_step(model)
    assert not any(changed(frozen, backbone.variables))
    assert not any(changed(stats, bn_stats(backbone)))
    assert any(changed(head, model.get_layer("predictions").variables))


def test_frozen_backbone_runs_in_inference_mode():
    # EfficientNet has drop-connect Dropout layers inside: they must not fire when frozen.
    model = build_model(spec(backbone="efficientnet_b0", backbone_args={}), 3, SIZE)
    features = keras.Model(model.input, model.get_layer("pool").output)
    x = images(2)
    np.testing.assert_array_equal(features(x, training=True), features(x, training=False))
    full = apply_freeze(model, FreezeSpec(mode="full"))
    assert not np.array_equal(features(x, training=True), features(x, training=False))
    assert full.get_layer("backbone").trainable


@pytest.mark.parametrize("k", [0, 5])
def test_fine_tune_unfreezes_top_k_and_keeps_batchnorm_frozen(k):
    model = build_model(spec(freeze={"mode": "fine_tune", "unfreeze_top": k}), 3, SIZE)
    backbone = model.get_layer("backbone")
    trainable = [layer for layer in backbone.layers if layer.trainable_weights]
    candidates = [layer for layer in backbone.layers
                  if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
                  and not isinstance(layer, keras.layers.Normalization)]
    assert [layer.name for layer in trainable] == [layer.name for layer in candidates[len(candidates) - k:]]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    stats = snapshot(bn_stats(backbone))
    train_step(model)
    assert not any(changed(stats, bn_stats(backbone)))


def test_full_trains_batchnorm_statistics():
    model = build_model(spec(freeze={"mode": "full"}), 3, SIZE)
    backbone = model.get_layer("backbone")
    assert len(backbone.trainable_variables) > 0
    stats = snapshot(bn_stats(backbone))
    train_step(model)
    assert all(changed(stats, bn_stats(backbone)))


def test_weights_file_from_a_local_path(tmp_path):
    source = build_model(spec(), 3, SIZE, seed=2)
    digest = save_backbone_weights(source, str(tmp_path / "store" / "w" / "mnv2.weights.h5"))
    local = resolve_weights("w/mnv2.weights.h5", str(tmp_path / "store"))
    assert local.endswith(f"{digest}.weights.h5")
    assert resolve_weights("w/mnv2.weights.h5", str(tmp_path / "store")) == local  # cached once
    model = build_model(spec(weights="w/mnv2.weights.h5"), 3, SIZE, weights_file=local, seed=3)
    for a, b in zip(source.get_layer("backbone").weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_file_of_another_backbone_is_a_config_error(tmp_path):
    save_backbone_weights(build_model(spec(), 3, SIZE), str(tmp_path / "mnv2.weights.h5"))
    with pytest.raises(ConfigError, match="does not fit backbone mobilenet_v2"):
        build_model(spec(backbone_args={"alpha": 0.5}, weights="x.weights.h5"), 3, SIZE,
                    weights_file=str(tmp_path / "mnv2.weights.h5"))


def test_registry_transfer_copies_the_backbone(tmp_path):
    source = build_model(spec(freeze={"mode": "full"}), 3, SIZE, seed=4)
    source.save(tmp_path / "model.keras")  # the file a registry version holds
    path = str(tmp_path / "model.keras")
    model = build_model(spec(weights="registry://base:production", head={"dense": [4]}), 5, SIZE,
                        weights_file=path, seed=5)
    for a, b in zip(source.get_layer("backbone").weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ConfigError, match=r"holds a mobilenet_v2 backbone that does not match .*'alpha': 0.5"):
        build_model(spec(weights="registry://base:production", backbone_args={"alpha": 0.5}), 3, SIZE,
                    weights_file=path)


def test_imagenet_download_failure_is_a_storage_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- unreachable")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(StorageError, match="ImageNet weights for backbone 'mobilenet_v2' could not be downloaded"):
        build_model(spec(weights="imagenet", backbone_args={}), 3, (96, 96))


@pytest.mark.parametrize("value", ["imagenett", "weights.bin", "registry://nameonly"])
def test_bad_weights_value_is_a_config_error(value):
    with pytest.raises(ConfigError, match="model.weights"):
        resolve_weights(value, "/tmp/store")


def test_registry_weights_need_the_fetched_file():
    with pytest.raises(ConfigError, match="resolve_weights"):
        build_model(spec(weights="registry://base:production"), 3, SIZE)


def test_apply_freeze_can_switch_policies():
    model = build_model(spec(freeze={"mode": "fine_tune", "unfreeze_top": 3}), 3, SIZE)
    backbone = model.get_layer("backbone")
    assert len([layer for layer in backbone.layers if layer.trainable_weights]) == 3
    apply_freeze(model, FreezeSpec(mode="full"))
    assert len(backbone.trainable_variables) == len([v for v in backbone.weights if "moving" not in v.path])
    apply_freeze(model, FreezeSpec(mode="feature_extraction"))
    assert backbone.trainable_variables == [] and model.get_layer("predictions").trainable_variables
    with pytest.raises(ConfigError, match="nested model named 'backbone'"):
        apply_freeze(backbone, FreezeSpec())


def test_batchnorm_momentum_override_reaches_every_backbone_batchnorm():
    import keras

    from tl_ray.models.build import build_model
    from tl_ray.spec import ModelSpec

    spec = ModelSpec(backbone="mobilenet_v2", backbone_args={"alpha": 0.35}, weights="none",
                     batchnorm_momentum=0.9, freeze={"mode": "full"})
    model = build_model(spec, 3, (32, 32))
    bns = [l for l in model.get_layer("backbone").layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == 0.9 for l in bns)


CUT = "block_13_expand_relu"


def test_feature_layer_cuts_the_backbone_and_survives_a_save(tmp_path):
    model = build_model(spec(feature_layer=CUT, freeze={"mode": "fine_tune", "unfreeze_top": 5}), 3, SIZE, seed=0)
    backbone = model.get_layer("backbone")
    assert backbone.layers[-1].name == CUT
    assert not any(layer.name.startswith("block_14") for layer in backbone.layers)
    assert model.get_layer("pool").output.shape[-1] == backbone.get_layer(CUT).output.shape[-1]
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded.predict(images(), verbose=0), model.predict(images(), verbose=0), atol=1e-6)


def test_feature_layer_takes_weights_of_a_whole_or_cut_backbone(tmp_path):
    whole = build_model(spec(freeze={"mode": "full"}), 3, SIZE, seed=4)
    cut = build_model(spec(feature_layer=CUT), 3, SIZE, seed=6)
    whole.save(tmp_path / "whole.keras")
    cut.save(tmp_path / "cut.keras")
    for source, name in ((whole, "whole.keras"), (cut, "cut.keras")):
        model = build_model(spec(weights="registry://base:production", feature_layer=CUT), 5, SIZE,
                            weights_file=str(tmp_path / name), seed=5)
        ours = model.get_layer("backbone").get_layer(CUT.replace("_relu", ""))
        np.testing.assert_array_equal(ours.kernel.numpy(),
                                      source.get_layer("backbone").get_layer(ours.name).kernel.numpy())
    # a cut backbone cannot fill a whole one
    with pytest.raises(ConfigError, match="model.feature_layer to those of the registered model"):
        build_model(spec(weights="registry://base:production"), 3, SIZE, weights_file=str(tmp_path / "cut.keras"))


def test_unknown_feature_layer_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.feature_layer must name a layer .*Did you mean 'block_13_expand_relu'"):
        build_model(spec(feature_layer="block_13_expand_rel"), 3, SIZE)
