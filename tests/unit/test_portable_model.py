"""Portable models: stock-Keras preprocessing, older files, and exports that load where tl-ray is not importable."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import numpy as np
import pytest

from tl_ray.models.backbones import BACKBONES

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from tl_ray.cli import build_parser, main  # noqa: E402
from tl_ray.errors import ConfigError, ServingError  # noqa: E402
from tl_ray.models import build_model  # noqa: E402
from tl_ray.models.backbones import backbone_of  # noqa: E402
from tl_ray.models.export import FORMATS, export_as, export_model, load_model  # noqa: E402
from tl_ray.models.preprocess import BackbonePreprocess, preprocessing_layer, replace_legacy_preprocess  # noqa: E402
from tl_ray.registry.store import Registry  # noqa: E402
from tl_ray.spec import ModelSpec  # noqa: E402

SIZE = (32, 32)
# One backbone per keras.applications module: the preprocess_input each family brings.
FAMILIES = sorted({b.preprocess: name for name, b in sorted(BACKBONES.items(), reverse=True)}.values())


def tiny(seed: int = 1):
    spec = ModelSpec(backbone="mobilenet_v2", weights="none", backbone_args={"alpha": 0.35}, head={"dense": [8]})
    return build_model(spec, 3, SIZE, seed=seed)


def legacy_copy(model):
    """``model`` as tl-ray built it before: the same layers behind a ``BackbonePreprocess``."""
    return keras.models.clone_model(model, clone_function=lambda layer: BackbonePreprocess(
        backbone_of(model).name, name="preprocess") if layer.name == "preprocess" else layer)


def images(n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *SIZE, 3)).astype("float32")


def predict(model, x) -> np.ndarray:
    """Probabilities from a direct call: for one small batch, cheaper than tracing ``model.predict``."""
    return np.asarray(model(x, training=False))


def plain_model():
    """A small Keras classifier with no backbone: export_as takes any model."""
    inputs = keras.Input((*SIZE, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.fixture(autouse=True)
def _fresh_session(tmp_path, monkeypatch):
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    yield
    keras.backend.clear_session()


def test_every_family_is_covered():
    assert len(FAMILIES) == len({b.preprocess for b in BACKBONES.values()}) == 15
    assert {BACKBONES[n].preprocess_mode for n in FAMILIES} == {"caffe", "tf", "torch", "none"}


@pytest.mark.parametrize("name", FAMILIES)
def test_stock_layers_match_keras_preprocess_input(name):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(0, 256, (2, 8, 8, 3)), rng.uniform(0, 255, (2, 8, 8, 3))]).astype("float32")
    x[0, 0, 0], x[0, 0, 1] = [0, 127.5, 255], [255, 0, 1]
    expected = BACKBONES[name].preprocess_fn()(x.copy())  # it edits numpy input in place
    layer = preprocessing_layer(name)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-6, atol=1e-6)
    # What a .keras file holds: only Keras' own classes, restored in safe mode.
    config = keras.saving.serialize_keras_object(layer)
    assert "tl_ray" not in json.dumps(config)
    clone = keras.saving.deserialize_keras_object(config, safe_mode=True)
    np.testing.assert_allclose(np.asarray(clone(x)), expected, rtol=1e-6, atol=1e-6)
    keras.config.set_dtype_policy("mixed_float16")  # as train.precision sets it: still float32 arithmetic
    try:
        mixed = np.asarray(preprocessing_layer(name)(x))
    finally:
        keras.config.set_dtype_policy("float32")
    assert mixed.dtype == np.float32
    np.testing.assert_allclose(mixed, expected, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A registry with fashion:v1, written by older tl-ray (BackbonePreprocess), and fashion:v2 = production,
    published as a promotion does (export_model); both hold the same weights."""
    root = tmp_path_factory.mktemp("published")
    model = tiny()
    (root / "v1").mkdir()
    legacy_copy(model).save(root / "v1" / "model.keras")
    files = export_model(model, root / "v2")
    assert "model.keras" in files and "saved_model/saved_model.pb" in files
    assert all(len(digest) == 64 for digest in files.values())
    registry = Registry(str(root / "store"))
    for version in ("v1", "v2"):
        registry.publish("fashion", root / version, {"class_names": ["a", "b", "c"], "image_size": list(SIZE)})
    registry.set_alias("fashion", "production", 2)
    return {"root": root, "store": str(root / "store"), "probabilities": predict(model, images())}


def test_older_files_with_backbone_preprocess_still_load_and_are_made_portable(published):
    expected = published["probabilities"]
    loaded = load_model(published["root"] / "v1" / "model.keras")  # written with BackbonePreprocess
    assert isinstance(loaded.get_layer("preprocess"), BackbonePreprocess)
    assert backbone_of(loaded).name == "mobilenet_v2"  # what freeze.from_block and weight transfer read
    np.testing.assert_allclose(predict(loaded, images()), expected, atol=1e-6)
    migrated = replace_legacy_preprocess(loaded)
    assert type(migrated.get_layer("preprocess")) is keras.layers.Rescaling
    assert replace_legacy_preprocess(migrated) is migrated
    np.testing.assert_allclose(predict(migrated, images()), expected, atol=1e-6)


def test_export_formats_load_where_tl_ray_is_not_importable(published, tmp_path, capsys):
    """The registry's model.keras and each export, loaded by a fresh interpreter without tl_ray."""
    store, out = published["store"], tmp_path / "out"
    registry = Registry(store)

    def export(*argv) -> int:
        return main(["models", "export", *argv, "--storage", store])

    assert export("fashion:v1", str(out / "keras"), "--format", "keras") == 0
    assert export("fashion:production", str(out / "serving"), "--format", "tf_serving") == 0
    assert export("fashion:v2", str(out / "saved"), "--format", "saved_model") == 0
    assert "--model_base_path=" + str(out / "serving" / "fashion") in capsys.readouterr().out
    meta = json.loads((out / "serving" / "fashion" / "2" / "assets.extra" / "export.json").read_text())
    assert meta["class_names"] == ["a", "b", "c"] and meta["max_abs_difference"] <= 1e-4
    assert "tl_ray" not in zipfile.ZipFile(out / "keras" / "model.keras").read("config.json").decode()

    x = images()
    np.save(tmp_path / "x.npy", x)
    reference = {v: predict(load_model(registry.fetch(f"fashion:{v}") / "model.keras"), x) for v in ("v1", "v2")}
    np.testing.assert_array_equal(reference["v2"], published["probabilities"])
    v2 = registry.fetch("fashion:v2")
    paths = {"registry_keras": v2 / "model.keras", "registry_saved_model": v2 / "saved_model",
             "export_keras": out / "keras" / "model.keras", "tf_serving": out / "serving" / "fashion" / "2",
             "saved_model": out / "saved"}
    got = run_without_tl_ray(tmp_path, {k: str(v) for k, v in paths.items()},
                             legacy=str(registry.fetch("fashion:v1") / "model.keras"))
    assert got.pop("tl_ray_importable") is False
    assert "BackbonePreprocess" in got.pop("legacy_error")  # so the check can fail: older files need tl-ray
    for key, probabilities in got.items():
        expected = reference["v1" if key == "export_keras" else "v2"]
        np.testing.assert_allclose(np.array(probabilities), expected, atol=1e-4, err_msg=key)


def run_without_tl_ray(tmp_path, paths: dict, legacy: str) -> dict:
    """Loads each path in a new interpreter (-I -S, site-packages only: no tl_ray) and returns its probabilities.

    Also tries ``legacy``, a file with ``BackbonePreprocess``, and returns why it failed as ``legacy_error``.
    """
    script = tmp_path / "plain_load.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, json, sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        import numpy as np, keras, tensorflow as tf
        paths, x = {paths!r}, np.load({str(tmp_path / "x.npy")!r})
        out = {{"tl_ray_importable": importlib.util.find_spec("tl_ray") is not None}}
        for key, path in paths.items():
            if path.endswith(".keras"):
                probs = np.asarray(keras.saving.load_model(path, safe_mode=True)(x, training=False))
            else:
                signature = tf.saved_model.load(path).signatures["serving_default"]
                probs = signature(image=tf.constant(x))["probabilities"].numpy()
            out[key] = probs.tolist()
        try:
            keras.saving.load_model({legacy!r}, safe_mode=True)
            out["legacy_error"] = ""
        except Exception as exc:
            out["legacy_error"] = str(exc)
        assert not any(m.startswith("tl_ray") for m in sys.modules)
        print(json.dumps(out))
    """))
    done = subprocess.run([sys.executable, "-I", "-S", str(script)], capture_output=True, text=True, timeout=600,
                          env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_export_refuses_a_bad_reference_and_a_full_destination(published, tmp_path, capsys):
    argv = ["models", "export", "fashion:v9", str(tmp_path / "out"), "--format", "keras", "--storage", published["store"]]
    assert main(argv) == 5
    assert "has no version v9" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="is not empty. Choose an empty folder or pass --force"):
        export_as(plain_model(), "keras", tmp_path / "full", name="m", version=1)
    assert (tmp_path / "full" / "x").read_text() == "x"
    with pytest.raises(ConfigError, match=r"export format must be one of \['keras', 'saved_model', 'tf_serving'\]"):
        export_as(plain_model(), "onnx", tmp_path / "out", name="m", version=1)


def test_an_export_that_predicts_differently_is_not_written(tmp_path, monkeypatch):
    import tl_ray.models.export

    monkeypatch.setattr(tl_ray.models.export, "TOLERANCE", -1.0)  # any difference, even 0, is too much
    with pytest.raises(ServingError, match="export of m:v1 predicts up to"):
        export_as(plain_model(), "keras", tmp_path / "out", name="m", version=1)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_bytes_signature_matches_the_keras_model_on_raw_png(published):
    from PIL import Image

    from tl_ray.data.images import decode_image

    rng = np.random.default_rng(0)
    pngs = []
    for shape in [(32, 32, 3), (20, 28, 3), (40, 40)]:  # RGB, another size (resized), grey
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    v2 = Registry(published["store"]).fetch("fashion:v2")
    pixels = np.stack([decode_image(tf.constant(b), SIZE).numpy() for b in pngs])
    expected = predict(load_model(v2 / "model.keras"), pixels)
    signature = tf.saved_model.load(str(v2 / "saved_model")).signatures["serving_bytes"]
    out = signature(image_bytes=tf.constant(pngs))["probabilities"].numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_cli_takes_every_export_format_and_no_other(capsys):
    for fmt in FORMATS:
        assert build_parser().parse_args(["models", "export", "fashion:v1", "out", "--format", fmt]).format == fmt
    with pytest.raises(SystemExit):
        build_parser().parse_args(["models", "export", "fashion:v1", "out", "--format", "onnx"])
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
