"""The backbones table: every keras.applications family builds at its minimum size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tl_ray.errors import ConfigError
from tl_ray.models.backbones import BACKBONES, get_backbone

# More than ~60M parameters: a few seconds each to build on 2 cores.
SLOW = {"efficientnet_b7", "efficientnet_v2_l", "nasnet_large", "convnext_base", "convnext_large",
        "convnext_xlarge"}


def test_table_imports_without_tensorflow():
    code = ("import sys, tl_ray.models, tl_ray.models.backbones; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_lists_the_same_backbones():
    from tl_ray.spec.model import BACKBONE_NAMES

    assert sorted(BACKBONE_NAMES) == sorted(BACKBONES)


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match=r"Received: 'mobilenetv2'\. Did you mean 'mobilenet_v2'\?"):
        get_backbone("mobilenetv2")


def test_table_covers_every_keras_application():
    import keras

    constructors = {n for n in dir(keras.applications) if n[0].isupper()}
    assert {b.constructor.rsplit(".", 1)[1] for b in BACKBONES.values()} == constructors


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BACKBONES]
)
def test_builds_at_min_size_and_runs(name):
    import keras

    from tl_ray.models import build_model
    from tl_ray.spec import ModelSpec

    b = BACKBONES[name]
    model = build_model(ModelSpec(backbone=name, weights="none"), 3, (b.min_size, b.min_size))
    out = model(np.full((1, b.min_size, b.min_size, 3), 128.0, "float32"), training=False)
    assert out.shape == (1, 3)
    assert np.isfinite(np.asarray(out)).all()
    # Every family names its blocks, in network order, so freeze.from_block can start at any of them.
    names = [layer.name for layer in model.get_layer("backbone").layers]
    starts = b.block_starts(names)
    assert len(starts) >= 3, starts
    assert list(starts.values()) == sorted(starts.values()) and 0 < min(starts.values())
    last = list(starts)[-1]
    assert b.block_start(names, last) == starts[last]
    del model
    keras.backend.clear_session()


@pytest.mark.parametrize("name", ["xception", "inception_v3", "mobilenet_v2"])
def test_image_below_min_size_is_a_config_error(name):
    from tl_ray.models import build_model
    from tl_ray.spec import ModelSpec

    size = BACKBONES[name].min_size - 1
    with pytest.raises(ConfigError, match=rf"data.image_size must be at least {size + 1}x{size + 1}"):
        build_model(ModelSpec(backbone=name, weights="none"), 3, (size, size))


def test_preprocessing_in_model_matches_keras():
    identity = {n for n, b in BACKBONES.items() if b.preprocessing_in_model}
    assert {n.rsplit("_", 1)[0] for n in identity} >= {"efficientnet", "convnext", "mobilenet_v3"}
    x = np.arange(6, dtype="float32")
    for name in identity:
        np.testing.assert_array_equal(get_backbone(name).preprocess_fn()(x), x)


def test_backbone_args_reserved_and_unknown():
    b = get_backbone("mobilenet_v2")
    with pytest.raises(ConfigError, match="may not set 'pooling'"):
        b.build((32, 32, 3), None, pooling="avg")
    with pytest.raises(ConfigError, match="Received: 'alhpa'. Did you mean 'alpha'"):
        b.build((32, 32, 3), None, alhpa=0.5)
