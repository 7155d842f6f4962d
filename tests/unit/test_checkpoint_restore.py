"""Checkpoint restore: weights digest recorded and reproduced, optimizer state loaded,
and the restoring trial's own learning rate kept (what a PBT exploit relies on)."""

from __future__ import annotations

import numpy as np
import pytest

from tl_ray.spec import TrainSpec
from tl_ray.train.checkpoint import read_state, restore_checkpoint, save_checkpoint, model_weights_digest
from tl_ray.train.optimizers import inner_optimizer, make_optimizer


def tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def one_step(model, optimizer):
    import tensorflow as tf

    x = tf.random.stateless_normal((8, 4), seed=(1, 2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_restore_loads_weights_and_state_but_keeps_the_restoring_learning_rate(tmp_path, name, precision):
    cfg = TrainSpec(optimizer=name)
    donor = tiny_model(0)
    donor_opt = make_optimizer(cfg, 0.01, trainable_variables=donor.trainable_variables, precision=precision)
    for _ in range(3):
        one_step(donor, donor_opt)
    save_checkpoint(tmp_path, donor, donor_opt, {"epoch": 3, "trial_id": "donor_00001"})
    state = read_state(tmp_path)
    assert state["trial_id"] == "donor_00001" and state["weights_digest"] == model_weights_digest(donor)

    model = tiny_model(1)  # different initial weights
    assert model_weights_digest(model) != state["weights_digest"]
    opt = make_optimizer(cfg, 0.05, trainable_variables=model.trainable_variables, precision=precision)
    restored = restore_checkpoint(tmp_path, model, opt)

    assert restored["trial_id"] == "donor_00001"
    assert model_weights_digest(model) == state["weights_digest"]
    assert float(inner_optimizer(opt).learning_rate.numpy()) == pytest.approx(0.05)  # not the donor's 0.01
    assert int(inner_optimizer(opt).iterations.numpy()) == 3
    lr_ids = {id(inner_optimizer(o)._learning_rate) for o in (opt, donor_opt)} | {id(opt._learning_rate)}
    for mine, theirs in zip(opt.variables, donor_opt.variables):
        if id(mine) not in lr_ids and id(theirs) not in lr_ids:
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_digest_changes_with_any_weight(tmp_path):
    model = tiny_model(0)
    before = model_weights_digest(model)
    bn = model.layers[2]
    bn.moving_mean.assign(bn.moving_mean.numpy() + 1.0)  # a non-trainable weight counts too
    assert model_weights_digest(model) != before


# -- head-only checkpoints (trials on cached features) ---------------------------------------
def head_spec(tmp_path):
    from tl_ray.spec import validate

    return validate({"name": "heads", "storage": str(tmp_path / "store"),
                     "data": {"train": "d/train", "image_size": [32, 32], "augment": {"flip": False}},
                     "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "none",
                               "head": {"dense": [16], "dropout": 0.1}, "freeze": {"mode": "feature_extraction"}},
                     "train": {"seed": 3}})


def test_a_head_built_alone_starts_from_the_weights_it_has_in_the_full_model():
    from tl_ray.models.build import build_head, build_model
    from tl_ray.spec import HeadSpec, ModelSpec

    spec = ModelSpec(backbone="mobilenet_v2", backbone_args={"alpha": 0.35}, weights="none",
                     head=HeadSpec(dense=[16], dropout=0.1))
    full = build_model(spec, 4, (32, 32), seed=7)
    head = build_head(spec.head, 4, [full.get_layer("pool").output.shape[-1]], seed=7)
    names = [layer.name for layer in head.layers]
    assert names == ["features", "head_dropout_0", "head_dense_0", "head_dropout", "predictions"]
    for name in names[1:]:
        for a, b in zip(full.get_layer(name).weights, head.get_layer(name).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = build_head(spec.head, 4, [full.get_layer("pool").output.shape[-1]], seed=8)
    assert model_weights_digest(other) != model_weights_digest(head)


def test_a_head_only_checkpoint_rebuilds_the_full_model_and_loads_into_either_kind(tmp_path):
    import keras
    import tensorflow as tf

    from tl_ray import feature_cache
    from tl_ray.errors import ConfigError
    from tl_ray.models.build import build_head, build_model
    from tl_ray.train.checkpoint import HEAD_FILE, MODEL_FILE, checkpoint_model, head_recipe

    spec = head_spec(tmp_path)
    reference = build_model(spec.model, 4, (32, 32), seed=3)  # what the head's features come from
    width = reference.get_layer("pool").output.shape[-1]
    head = build_head(spec.model.head, 4, [width], seed=3)
    opt = make_optimizer(TrainSpec(optimizer="adam"), 0.01, trainable_variables=head.trainable_variables)
    x = tf.random.stateless_uniform((8, width), seed=(1, 2))
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(head(x, training=True)))
        opt.apply(tape.gradient(loss, head.trainable_variables), head.trainable_variables)
    recipe = head_recipe(spec, 4, [width], feature_cache.backbone_digest(spec, None))
    save_checkpoint(tmp_path / "ck", head, opt, {"epoch": 2}, head_of=recipe)
    assert (tmp_path / "ck" / HEAD_FILE).exists() and not (tmp_path / "ck" / MODEL_FILE).exists()

    # The full model: the same backbone (seeded random weights here) under the trained head.
    full = checkpoint_model(tmp_path / "ck")
    images = tf.random.stateless_uniform((3, 32, 32, 3), maxval=255, seed=(3, 4))
    pooled = keras.Model(reference.inputs, reference.get_layer("pool").output)(images, training=False)
    np.testing.assert_allclose(full(images, training=False).numpy(), head(pooled, training=False).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert not full.get_layer("backbone").trainable  # the spec's freeze policy is applied

    # Into a full model built from the spec (a warm start or a PBT donor of the other kind), and back.
    target = build_model(spec.model, 4, (32, 32), seed=3)
    restore_checkpoint(tmp_path / "ck", target, None)
    for name in ("head_dense_0", "predictions"):
        for a, b in zip(target.get_layer(name).get_weights(), head.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    target_opt = make_optimizer(TrainSpec(optimizer="adam"), 0.01, trainable_variables=target.trainable_variables)
    save_checkpoint(tmp_path / "full", target, target_opt, {"epoch": 2})
    fresh = build_head(spec.model.head, 4, [width], seed=9)
    restore_checkpoint(tmp_path / "full", fresh, None)
    assert model_weights_digest(fresh) == model_weights_digest(head)

    # A warm start over other backbone weights is refused; over the same ones it loads the head.
    from tl_ray.train.checkpoint import warm_start

    with pytest.raises(ConfigError, match=r"trained over backbone weights none:seed-3, but model.weights gives sha256:ab"):
        warm_start(build_model(spec.model, 4, (32, 32), seed=3), str(tmp_path / "ck"), "sha256:ab")
    warmed = build_model(spec.model, 4, (32, 32), seed=3)
    warm_start(warmed, str(tmp_path / "ck"), "none:seed-3")
    np.testing.assert_array_equal(warmed.get_layer("predictions").get_weights()[0],
                                  head.get_layer("predictions").get_weights()[0])

    # Backbone weights that changed since the head was trained are refused, naming both.
    state = read_state(tmp_path / "ck")
    state["head_of"]["backbone_weights"] = "sha256:0000"
    (tmp_path / "ck" / "state.json").write_text(__import__("json").dumps(state))
    with pytest.raises(ConfigError, match=r"trained over backbone weights sha256:0000.*now resolves to none:seed-3"):
        checkpoint_model(tmp_path / "ck")
