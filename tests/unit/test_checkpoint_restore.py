"""Checkpoint restore: weights digest recorded and reproduced, optimizer state loaded,
and the restoring trial's own learning rate kept (what a PBT exploit relies on)."""

from __future__ import annotations

import numpy as np
import pytest

from tl_ray.spec import TrainSpec
from tl_ray.train.checkpoint import read_state, restore_checkpoint, save_checkpoint, weights_digest
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
    assert state["trial_id"] == "donor_00001" and state["weights_digest"] == weights_digest(donor)

    model = tiny_model(1)  # different initial weights
    assert weights_digest(model) != state["weights_digest"]
    opt = make_optimizer(cfg, 0.05, trainable_variables=model.trainable_variables, precision=precision)
    restored = restore_checkpoint(tmp_path, model, opt)

    assert restored["trial_id"] == "donor_00001"
    assert weights_digest(model) == state["weights_digest"]
    assert float(inner_optimizer(opt).learning_rate.numpy()) == pytest.approx(0.05)  # not the donor's 0.01
    assert int(inner_optimizer(opt).iterations.numpy()) == 3
    lr_ids = {id(inner_optimizer(o)._learning_rate) for o in (opt, donor_opt)} | {id(opt._learning_rate)}
    for mine, theirs in zip(opt.variables, donor_opt.variables):
        if id(mine) not in lr_ids and id(theirs) not in lr_ids:
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_digest_changes_with_any_weight(tmp_path):
    model = tiny_model(0)
    before = weights_digest(model)
    bn = model.layers[2]
    bn.moving_mean.assign(bn.moving_mean.numpy() + 1.0)  # a non-trainable weight counts too
    assert weights_digest(model) != before
