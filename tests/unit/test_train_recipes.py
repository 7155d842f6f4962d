"""Transfer recipes and the loop outside Ray: freeze selectors, two phases, discriminative rates,
mixed precision, heads, class weights, callbacks and the learning-rate rules."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from tl_ray.errors import ConfigError  # noqa: E402
from tl_ray.models import build_model  # noqa: E402
from tl_ray.spec import ModelSpec, TrainSpec, validate  # noqa: E402
from tl_ray.train.callbacks import Callback, EarlyStopping, LearningRateSchedule  # noqa: E402
from tl_ray.train.loop import ListReporter, lr_scale, train  # noqa: E402
from tl_ray.train.optimizers import make_optimizer  # noqa: E402
from tl_ray.train.step import DistributedStep  # noqa: E402

SIZE = (32, 32)


def mspec(**kwargs) -> ModelSpec:
    return ModelSpec(**{"backbone": "mobilenet_v2", "weights": "none", "backbone_args": {"alpha": 0.35},
                        "head": {"dropout": 0.0}, **kwargs})


def bn_stats(backbone):
    return [v for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def values(variables):
    return {v.path: v.numpy().copy() for v in variables}


def moved(before: dict, variables) -> set[str]:
    return {v.path for v in variables if not np.array_equal(before[v.path], v.numpy())}


@pytest.fixture(autouse=True)
def _fresh_session(tmp_path, monkeypatch):
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> str:
    """A backbone weights file whose BatchNorm statistics fit 0..255 images.

    Random weights with BatchNorm's initial statistics (mean 0, variance 1) in
    inference mode shrink activations to ~1e-9 after 16 blocks, so gradients
    reaching the backbone are too small to change a float32 weight. One
    training-mode pass with momentum 0.01 stands in for pretrained statistics.
    """
    from tl_ray.models.weights import save_backbone_weights

    path = str(tmp_path_factory.mktemp("weights") / "calibrated.weights.h5")
    model = build_model(ModelSpec(backbone="mobilenet_v2", weights="none", backbone_args={"alpha": 0.35},
                                  batchnorm_momentum=0.01, freeze={"mode": "full"}), 3, SIZE, seed=0)
    model(np.random.default_rng(1).uniform(0, 255, (64, *SIZE, 3)).astype("float32"), training=True)
    save_backbone_weights(model, path)
    keras.backend.clear_session()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, fashion_dir, calibrated):
    from tl_ray.data.ingest import ingest_fashion_mnist

    root = tmp_path_factory.mktemp("store")
    ingest_fashion_mnist(str(root / "datasets/train"), path=str(fashion_dir), classes=[0, 1, 7], per_class=16,
                         rows_per_shard=1024)
    (root / "weights").mkdir()
    shutil.copy(calibrated, root / "weights" / "calibrated.weights.h5")
    return str(root)


def calibrated_model(calibrated, **kwargs):
    return build_model(mspec(weights="calibrated.weights.h5", **kwargs), 3, SIZE, weights_file=calibrated, seed=0)


def spec_for(store, model=None, train=None):
    return validate({
        "name": "recipes", "storage": store,
        "data": {"train": "datasets/train", "shuffle_buffer": 1},
        "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "weights/calibrated.weights.h5",
                  "head": {"dropout": 0.0}, **(model or {})},
        "train": {"batch_size": 16, "steps_per_epoch": 2, "learning_rate": 1e-2, **(train or {})},
    })


def one_step(model, optimizer=None, labels=None, n=8):
    optimizer = optimizer or make_optimizer(TrainSpec(optimizer="adam"), 1e-2, trainable_variables=model.trainable_variables)
    step = DistributedStep(tf.distribute.get_strategy(), model, optimizer, n)
    images = np.random.default_rng(0).uniform(0, 255, (n, *SIZE, 3)).astype("float32")
    labels = np.arange(n) % 3 if labels is None else labels
    return step.train_step((tf.constant(images), tf.constant(labels))).numpy()


# -- freeze selectors ----------------------------------------------------------------------
def test_from_block_trains_that_block_onwards_and_never_batchnorm(calibrated):
    model = calibrated_model(calibrated, freeze={"mode": "fine_tune", "from_block": "block_16"})
    backbone = model.get_layer("backbone")
    names = [layer.name for layer in backbone.layers]
    first = names.index("block_16_expand")
    trainable = {layer.name for layer in backbone.layers if layer.trainable_weights}
    assert trainable == {"block_16_expand", "block_16_depthwise", "block_16_project", "Conv_1"}
    assert all(names.index(n) >= first for n in trainable)
    frozen, stats = values(backbone.variables), values(bn_stats(backbone))
    one_step(model)
    assert moved(frozen, backbone.variables) == {v.path for v in backbone.trainable_variables}
    assert not moved(stats, bn_stats(backbone))


def test_pattern_selects_layers_by_regex():
    model = build_model(mspec(freeze={"mode": "fine_tune", "pattern": r"_project$"}), 3, SIZE)
    trainable = [layer.name for layer in model.get_layer("backbone").layers if layer.trainable_weights]
    assert trainable and all(name.endswith("_project") for name in trainable)
    with pytest.raises(ConfigError, match="matches no weighted layer"):
        build_model(mspec(freeze={"mode": "fine_tune", "pattern": "nope"}), 3, SIZE)


@pytest.mark.parametrize("name,block,first_layer", [
    ("mobilenet_v2", "block_13", "block_13_expand"),
    ("efficientnet_b0", "block6", "block6a_expand_conv"),
    ("inception_v3", "mixed10", None),  # ends at the 'mixed10' concat; begins right after 'mixed9'
])
def test_block_starts_per_family(name, block, first_layer):
    from tl_ray.models.backbones import get_backbone

    entry = get_backbone(name)
    names = [layer.name for layer in entry.build((entry.min_size, entry.min_size, 3)).layers]
    start = entry.block_start(names, block)
    if first_layer:
        assert names[start] == first_layer
    else:
        assert names[start - 1] == "mixed9" and names.index("mixed10") > start
    with pytest.raises(ConfigError, match="from_block must name a block"):
        entry.block_start(names, "no_such_block")


def test_freeze_selectors_are_exclusive_in_the_spec():
    with pytest.raises(ValueError, match="only one of"):
        ModelSpec(backbone="mobilenet_v2", freeze={"mode": "fine_tune", "from_block": "block_1", "pattern": "x"})
    with pytest.raises(ValueError, match="applies to mode fine_tune only"):
        ModelSpec(backbone="mobilenet_v2", freeze={"mode": "full", "pattern": "x"})


# -- two phases through the loop ------------------------------------------------------------
class Snapshots(Callback):
    """Records which variables moved in each phase."""

    def __init__(self):
        self.moved: list[set[str]] = []
        self.stats_moved: list[bool] = []
        self.trainable: list[int] = []

    def on_phase_begin(self, phase, first_epoch, epochs):
        model = self.loop.model
        self._before = values(model.variables)
        self._stats = values(bn_stats(model.get_layer("backbone")))
        self.trainable.append(len(model.trainable_variables))

    def on_epoch_end(self, epoch, logs):
        model = self.loop.model
        self.moved.append(moved(self._before, model.variables))
        self.stats_moved.append(bool(moved(self._stats, bn_stats(model.get_layer("backbone")))))


def test_two_phases_head_first_then_fine_tune_at_a_lower_rate(store):
    spec = spec_for(store, train={"phases": [
        {"epochs": 1, "freeze": {"mode": "feature_extraction"}},
        {"epochs": 1, "freeze": {"mode": "fine_tune", "from_block": "block_16"}, "learning_rate": 1e-4},
    ]})
    assert spec.train.epochs == 2
    snaps = Snapshots()
    reporter = ListReporter()
    train(spec, reporter, callbacks=[snaps])
    head = {"predictions/kernel", "predictions/bias"}
    assert snaps.moved[0] == head  # phase 1: the head only
    assert snaps.moved[1] - head == {"block_16_expand/kernel", "block_16_depthwise/kernel",
                                     "block_16_project/kernel", "Conv_1/kernel"}
    assert snaps.stats_moved == [False, False]  # frozen BatchNorm stays in inference mode
    assert snaps.trainable == [2, 6]  # a fresh optimizer on each phase's trainable variables
    assert [h["learning_rate"] for h in reporter.history] == pytest.approx([1e-2, 1e-4])
    assert [h["steps"] for h in reporter.history] == [2, 4]


def test_lp_ft_probes_on_cached_features_then_fine_tunes_from_the_probe_at_a_lower_rate(store):
    spec = validate({**spec_for(store).to_dict(), "data": {"train": "datasets/train", "shuffle_buffer": 1,
                                                           "augment": {"flip": True}}})
    spec.model.freeze = {"mode": "fine_tune", "from_block": "block_16"}
    spec.train = {**spec.train.model_dump(), "recipe": "lp_ft", "epochs": 2, "probe_epochs": 1,
                  "finetune_lr_factor": 0.01}
    # The shorthand's two phases, as train.phases would spell them.
    assert [p.model_dump() for p in spec.phases()] == [
        {"epochs": 1, "freeze": {"mode": "feature_extraction", "unfreeze_top": 20, "from_block": None,
                                 "pattern": None}, "learning_rate": 1e-2, "augment": False},
        {"epochs": 1, "freeze": spec.model.freeze.model_dump(), "learning_rate": pytest.approx(1e-4),
         "augment": True},
    ]
    snaps = Snapshots()
    reporter = ListReporter()
    train(spec, reporter, callbacks=[snaps])
    head = {"predictions/kernel", "predictions/bias"}
    # The probe trains the head alone on cached features, although data.augment is on; fine-tuning
    # starts from the probed head (same model) with the top block trainable, on augmented images.
    assert reporter.history[0]["feature_cache"] in ("built", "read")  # an earlier test may have built it
    assert reporter.history[1]["feature_cache"] == "off"
    assert snaps.moved[0] == head
    assert snaps.moved[1] - head == {"block_16_expand/kernel", "block_16_depthwise/kernel",
                                     "block_16_project/kernel", "Conv_1/kernel"}
    assert [h["learning_rate"] for h in reporter.history] == pytest.approx([1e-2, 1e-4])
    assert [h["phase"] for h in reporter.history] == [0, 1]


def test_resume_inside_the_second_phase_ends_with_the_same_steps(store, tmp_path):
    phases = [{"epochs": 1, "freeze": {"mode": "feature_extraction"}},
              {"epochs": 2, "freeze": {"mode": "fine_tune", "unfreeze_top": 2}, "learning_rate": 1e-3}]
    spec = spec_for(store, train={"phases": phases})
    full = ListReporter(keep_checkpoints_in=tmp_path / "ck")
    train(spec, full)
    keras.backend.clear_session()
    resumed = ListReporter(restore=tmp_path / "ck" / "epoch_0002")
    train(spec, resumed)
    assert [h["epoch"] for h in resumed.history] == [3]
    assert resumed.history[-1]["steps"] == full.history[-1]["steps"] == 6
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-4)


def test_phase_epochs_must_add_up():
    with pytest.raises(ValueError, match="must equal the sum of train.phases"):
        TrainSpec(epochs=3, phases=[{"epochs": 1, "freeze": {"mode": "full"}}])


# -- discriminative rate, precision, heads, weights ----------------------------------------
def test_backbone_lr_multiplier_scales_the_backbone_rate_exactly(calibrated):
    # Adam ignores a gradient multiplier; tl-ray scales the rate, so 0 freezes the backbone.
    model = calibrated_model(calibrated, freeze={"mode": "full"})
    backbone = model.get_layer("backbone")
    opt = make_optimizer(TrainSpec(optimizer="adam"), 1e-2, trainable_variables=model.trainable_variables,
                         backbone_variables=backbone.trainable_variables, backbone_lr_multiplier=0.0)
    before, head = values(backbone.trainable_variables), values(model.get_layer("predictions").variables)
    one_step(model, opt)
    assert not moved(before, backbone.trainable_variables)
    assert moved(head, model.get_layer("predictions").variables)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_and_keeps_float32_outputs(store, precision):
    # The backbone runs (no feature cache): its layers compute in the policy's dtype.
    spec = spec_for(store, train={"precision": precision, "epochs": 1, "clip_norm": 1.0, "feature_cache": "off"})
    reporter = ListReporter()
    seen = {}

    class Peek(Callback):
        def on_train_end(self, logs):
            model = self.loop.model
            seen["compute"] = model.get_layer("backbone").layers[2].compute_dtype
            seen["out"] = model(np.zeros((1, *SIZE, 3), "float32")).dtype
            seen["opt"] = type(self.loop.optimizer).__name__

    train(spec, reporter, callbacks=[Peek()])
    assert np.isfinite(reporter.history[-1]["loss"])
    assert seen["compute"] == precision.split("_")[1] and str(seen["out"]) in ("float32", "<dtype: 'float32'>")
    assert seen["opt"] == ("LossScaleOptimizer" if precision == "mixed_float16" else "Adam")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_multi_label_head_learns_label_vectors_in_memory():
    model = build_model(mspec(head={"dropout": 0.0, "multi_label": True}, freeze={"mode": "full"}), 3, SIZE, seed=0)
    head = model.get_layer("predictions")
    assert head.units == 3 and head.activation.__name__ == "sigmoid"
    opt = make_optimizer(TrainSpec(optimizer="adam"), 1e-3, trainable_variables=model.trainable_variables)
    step = DistributedStep(tf.distribute.get_strategy(), model, opt, 8)
    assert step.kind == "multilabel"
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (8, *SIZE, 3)).astype("float32"))
    labels = tf.constant((rng.uniform(size=(8, 3)) > 0.5).astype("float32"))  # several classes on at once
    losses = [step.train_step((images, labels))[0].numpy() / 8 for _ in range(5)]
    assert losses[-1] < losses[0]


def test_class_weights_weigh_each_example_by_its_class():
    model = build_model(mspec(), 3, SIZE, seed=0)
    opt = make_optimizer(TrainSpec(), 1e-9, trainable_variables=model.trainable_variables)
    plain = DistributedStep(tf.distribute.get_strategy(), model, opt, 3)
    weighted = DistributedStep(tf.distribute.get_strategy(), model, opt, 3, class_weights=[1.0, 2.0, 0.0])
    probs = tf.constant([[0.2, 0.5, 0.3]] * 3)
    labels = tf.constant([0, 1, 2])
    np.testing.assert_allclose(weighted.per_example_loss(labels, probs).numpy(),
                               plain.per_example_loss(labels, probs).numpy() * [1.0, 2.0, 0.0], rtol=1e-6)


def test_balanced_class_weights_from_the_dataset(store):
    from tl_ray.data.manifest import read_manifest
    from tl_ray.train.loop import class_weight_vector

    spec = spec_for(store, train={"class_weights": "balanced"})
    assert class_weight_vector(spec, read_manifest(spec.resolve("datasets/train")), 3) == pytest.approx([1.0] * 3)
    spec = spec_for(store, train={"class_weights": {1: 3.0}})
    assert class_weight_vector(spec, read_manifest(spec.resolve("datasets/train")), 3) == [1.0, 3.0, 1.0]


# -- callbacks and the rate rules --------------------------------------------------------------
def test_lr_scaling_rules():
    assert lr_scale(TrainSpec(batch_size=512, base_batch_size=256)) == 1.0
    assert lr_scale(TrainSpec(batch_size=512, base_batch_size=256, lr_scaling="linear")) == 2.0
    assert lr_scale(TrainSpec(batch_size=64, base_batch_size=256, lr_scaling="sqrt")) == 0.5


def test_cosine_schedule_with_warmup():
    s = LearningRateSchedule("cosine", warmup_epochs=1, min_fraction=0.1)
    factors = [s.factor(i, 40, 10) for i in range(40)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # linear warm-up
    assert factors[10] == pytest.approx(1.0) and factors[-1] > 0.1 and factors[-1] < 0.12
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))  # then decays monotonically
    assert LearningRateSchedule("constant").factor(5, 10, 10) == 1.0


def test_early_stopping_stops_the_loop(store):
    spec = spec_for(store, train={"epochs": 5, "learning_rate": 1e-9,
                                  "early_stopping": {"monitor": "loss", "patience": 1, "min_delta": 0.5}})
    reporter = ListReporter()
    train(spec, reporter)
    assert [h["epoch"] for h in reporter.history] == [1, 2]  # no 0.5 improvement after epoch 1
    with pytest.raises(ValueError, match="not a metric of the loop"):
        stopper = EarlyStopping("val_nope")
        stopper.on_epoch_end(0, {"loss": 1.0})


# -- one process, many trials ----------------------------------------------------------------
def test_a_process_that_runs_trial_after_trial_keeps_no_traced_step_of_a_finished_trial():
    import gc

    from tl_ray.train.runtime import make_strategy

    def live_graphs():
        gc.collect()
        return sum(type(o).__name__ == "FuncGraph" for o in gc.get_objects())

    counts = []
    for trial in range(4):
        keras.backend.clear_session(free_memory=True)
        strategy = make_strategy(workers=1)
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
            opt = make_optimizer(TrainSpec(optimizer="adam"), 1e-2, trainable_variables=model.trainable_variables)
        step = DistributedStep(strategy, model, opt, 8)
        x = np.random.default_rng(trial).normal(size=(8, 4)).astype("float32")
        step.train_step((tf.constant(x), tf.constant(np.arange(8) % 3)))
        del model, opt, step
        counts.append(live_graphs())
    assert counts[-1] == counts[1], f"traced graphs alive after each trial: {counts}"
