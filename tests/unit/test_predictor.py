"""The Ray-free Predictor: request parsing, the bad-request table, predictions and formatting."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tl_ray.errors import ConfigError, ServingError
from tl_ray.serving.predictor import Predictor, RequestError

ROOT = Path(__file__).resolve().parents[2]
BAD_REQUESTS = yaml.safe_load((ROOT / "tests/data/requests/bad_requests.yaml").read_text())
SIZE = (8, 8)
CLASSES = ["tee", "trouser", "bag"]


def tiny_model(num_classes: int = 3, seed: int = 0):
    """A functional model with the registry's input contract: float32 [None, 8, 8, 3] pixels 0..255."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SIZE, 3), dtype="float32")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = (
        keras.layers.Dense(1, activation="sigmoid")(x)
        if num_classes == 2
        else keras.layers.Dense(num_classes, activation="softmax")(x)
    )
    return keras.Model(inputs, outputs)


def export(model, out: Path, class_names: list[str]) -> dict:
    from tl_ray.models.export import export_model

    files = export_model(model, out)
    return {"name": "tiny", "version": 1, "files": files, "image_size": list(SIZE), "class_names": class_names}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    out = tmp_path_factory.mktemp("export")
    return model, out, export(model, out, CLASSES)


@pytest.fixture(scope="module")
def predictor(exported):
    _, out, meta = exported
    return Predictor(out, meta)


def png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def body_of(case: dict) -> bytes:
    """A case's body: ``nest`` and ``digits`` build the bodies too long to write out in the YAML."""
    if "nest" in case:
        return b'{"instances": ' + b"[" * case["nest"] + b"0" + b"]" * case["nest"] + b"}"
    if "digits" in case:
        return b'{"instances": [[[' + b"1" * case["digits"] + b"]]]}"
    return bytes.fromhex(case["body_hex"]) if "body_hex" in case else case["body"].encode()


# -- good requests --------------------------------------------------------------
def test_json_grey_instances_become_rgb_batch(predictor):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (2, 28, 28))
    batch = predictor.parse(json.dumps({"instances": grey.tolist()}).encode(), "application/json", 8)
    assert batch.shape == (2, *SIZE, 3) and batch.dtype == np.float32
    assert np.array_equal(batch[..., 0], batch[..., 2])


def test_json_mixed_shapes_and_charset(predictor):
    instances = [np.zeros((8, 8)).tolist(), np.full((5, 7, 1), 9).tolist(), np.full((8, 8, 3), 255.0).tolist()]
    body = json.dumps({"instances": instances}).encode()
    batch = predictor.parse(body, "application/json; charset=utf-8", 8)
    assert batch.shape == (3, *SIZE, 3)
    assert np.allclose(batch[1], 9) and np.allclose(batch[2], 255)


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_png_bytes_decode_like_json_pixels(predictor, content_type):
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    from_png = predictor.parse(png(pixels), content_type, 1)
    from_json = predictor.parse(json.dumps({"instances": [pixels.tolist()]}).encode(), "application/json", 1)
    assert from_png.shape == (1, *SIZE, 3)
    assert np.array_equal(from_png, from_json)  # PNG is lossless and no resize is needed


def test_jpeg_bytes_are_accepted(predictor):
    pixels = np.full((12, 10, 3), 128, dtype=np.uint8)
    batch = predictor.parse(png(pixels, "JPEG"), "image/jpeg", 1)
    assert batch.shape == (1, *SIZE, 3)
    assert np.allclose(batch, 128, atol=3)


# -- bad requests ----------------------------------------------------------------
@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c["id"] for c in BAD_REQUESTS])
def test_bad_request_table(predictor, case):
    with pytest.raises(RequestError) as info:
        predictor.parse(
            body_of(case),
            case["content_type"],
            max_instances=case.get("max_instances", 8),
            max_body_bytes=case.get("max_body_bytes"),
        )
    assert info.value.status == case["status"], info.value.message
    assert case["says"] in info.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=True) | st.text(max_size=3),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instances=json_values)
def test_any_json_is_a_batch_or_a_request_error(predictor, instances):
    body = json.dumps({"instances": instances}).encode()
    try:
        batch = predictor.parse(body, "application/json", max_instances=8)
    except RequestError as exc:
        assert 400 <= exc.status < 500
    else:
        assert batch.shape[1:] == (*SIZE, 3) and batch.dtype == np.float32


def test_request_error_pickles_with_status():
    err = pickle.loads(pickle.dumps(RequestError(413, "too big")))
    assert isinstance(err, ServingError) and (err.status, err.message) == (413, "too big")


# -- predictions -------------------------------------------------------------------
def test_predict_matches_model_predict(exported, predictor):
    model = exported[0]
    batch = np.random.default_rng(2).uniform(0, 255, (5, *SIZE, 3)).astype(np.float32)
    assert np.allclose(predictor.predict(batch), model.predict(batch, verbose=0), atol=1e-6)


def test_predict_in_chunks_matches_one_call(exported):
    _, out, meta = exported
    batch = np.random.default_rng(3).uniform(0, 255, (7, *SIZE, 3)).astype(np.float32)
    chunked = Predictor(out, meta, chunk_size=3).predict(batch)
    assert chunked.shape == (7, 3)
    assert np.allclose(chunked, Predictor(out, meta).predict(batch), atol=1e-6)


def test_format_softmax(predictor):
    out = predictor.format(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]))
    assert [p["class"] for p in out] == ["trouser", "tee"]
    assert [p["class_id"] for p in out] == [1, 0]
    assert out[0]["probabilities"] == pytest.approx([0.1, 0.7, 0.2])


def test_two_class_sigmoid_gives_two_probabilities(tmp_path):
    meta = export(tiny_model(num_classes=2), tmp_path, ["cat", "dog"])
    pred = Predictor(tmp_path, meta)
    probs = pred.predict(np.zeros((2, *SIZE, 3), np.float32))
    assert probs.shape == (2, 1)
    out = pred.format(np.array([[0.8], [0.1]]))
    assert [p["class"] for p in out] == ["dog", "cat"]
    assert out[0]["probabilities"] == pytest.approx([0.2, 0.8])


def test_metadata_that_does_not_match_the_model_is_refused(exported):
    _, out, meta = exported
    with pytest.raises(ServingError, match=r"input shape .* does not match image_size \[16, 16\]"):
        Predictor(out, {**meta, "image_size": [16, 16]})
    with pytest.raises(ServingError, match="does not match 5 class_names"):
        Predictor(out, {**meta, "class_names": list("abcde")})
    with pytest.raises(ServingError, match=r"lacks \['class_names'\]"):
        Predictor(out, {k: v for k, v in meta.items() if k != "class_names"})


def test_load_from_registry_is_verified(exported, tmp_path, monkeypatch):
    from tl_ray.errors import RegistryError
    from tl_ray.registry.store import Registry

    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    _, out, meta = exported
    registry = Registry(str(tmp_path / "store"))
    version = registry.publish("tiny", out, {k: meta[k] for k in ("image_size", "class_names")})
    registry.set_alias("tiny", "production", version)
    pred = Predictor.load(str(tmp_path / "store"), "tiny")
    assert pred.ref == "tiny:v1" and pred.class_names == CLASSES
    # A stored file changed after publication is refused on a fresh fetch.
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache2"))
    (tmp_path / "store/registry/tiny/v1/model.keras").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="sha256"):
        Predictor.load(str(tmp_path / "store"), "tiny:v1")


# -- Serve config -------------------------------------------------------------------
def test_serve_config_matches_the_serve_schema():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serve/config.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == "tl_ray.serving.app:build_app"
    assert set(app.args) == {"spec", "model"}


def test_build_app_rejects_unknown_and_missing_args():
    from tl_ray.serving.app import build_app

    with pytest.raises(ConfigError, match=r"unknown keys \['max_batch'\]"):
        build_app({"storage": "/tmp/x", "model": "m", "max_batch": 4})
    with pytest.raises(ConfigError, match="need 'storage' and 'model'"):
        build_app({"storage": "/tmp/x"})


def test_build_app_pins_the_version_and_applies_overrides(exported, tmp_path):
    from ray import serve

    from tl_ray.registry.store import Registry
    from tl_ray.serving.app import build_app

    _, out, meta = exported
    registry = Registry(str(tmp_path))
    version = registry.publish("tiny", out, {k: meta[k] for k in ("image_size", "class_names")})
    registry.set_alias("tiny", "production", version)
    app = build_app(
        {"storage": str(tmp_path), "model": "tiny", "max_batch_size": 4, "autoscaling": {"max_replicas": 3}}
    )
    assert isinstance(app, serve.Application)
    deployment = app._bound_deployment
    storage, name, settings = deployment.init_args
    assert (storage, name) == (str(tmp_path), "tiny")
    # The version rides in user_config, so a swap is a reconfigure, not a restart.
    assert deployment.user_config == {"model": "tiny:v1"}
    assert settings["max_batch_size"] == 4
    assert settings["autoscaling"]["max_replicas"] == 3 and settings["autoscaling"]["min_replicas"] == 1
    auto = deployment._deployment_config.autoscaling_config
    assert (auto.upscale_delay_s, auto.downscale_delay_s, auto.look_back_period_s) == (10.0, 120.0, 15.0)
    assert deployment.max_ongoing_requests == 8 and deployment.ray_actor_options["num_cpus"] == 1.0


def test_build_app_with_a_canary_puts_a_router_in_front(exported, tmp_path):
    from tl_ray.errors import RegistryError
    from tl_ray.registry.store import Registry
    from tl_ray.serving.app import build_app

    _, out, meta = exported
    registry = Registry(str(tmp_path))
    for _ in range(2):
        registry.publish("tiny", out, {k: meta[k] for k in ("image_size", "class_names")})
    registry.set_alias("tiny", "production", 1)
    args = {"storage": str(tmp_path), "model": "tiny", "canary": {"weight": 0.25, "window_s": 5}}
    with pytest.raises(RegistryError, match="tiny:canary does not exist"):
        build_app(args)
    registry.set_alias("tiny", "canary", 2)
    router = build_app(args)._bound_deployment
    assert router.name == "CanaryRouter"
    production, canary = router.init_args[:2]
    assert production._bound_deployment.user_config == {"model": "tiny:v1"}
    assert canary._bound_deployment.name == "ModelReplicaCanary"
    assert canary._bound_deployment.user_config == {"model": "tiny:v2"}
    assert router.init_args[4]["canary"]["weight"] == 0.25


def test_build_app_from_the_quickstart_spec(exported, tmp_path):
    from tl_ray.registry.store import Registry
    from tl_ray.serving.app import build_app

    _, out, meta = exported
    registry = Registry(str(tmp_path))
    version = registry.publish("fashion-transfer", out, {k: meta[k] for k in ("image_size", "class_names")})
    registry.set_alias("fashion-transfer", "production", version)
    config = yaml.safe_load((ROOT / "serve/config.yaml").read_text())
    args = {**config["applications"][0]["args"], "spec": str(ROOT / "jobs/quickstart/target.yaml")}
    app = build_app({**args, "storage": str(tmp_path), "batch_wait_timeout_s": 0.05})
    storage, name, settings = app._bound_deployment.init_args
    assert name == "fashion-transfer" and app._bound_deployment.user_config == {"model": "fashion-transfer:v1"}
    assert settings["max_batch_size"] == 32 and settings["batch_wait_timeout_s"] == 0.05
    assert settings["autoscaling"]["max_replicas"] == 2


# -- multipart, broken models, the HTTP contract ---------------------------------------
def multipart(parts: list[tuple[str, bytes, str]], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b""
    for name, data, ctype in parts:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
            f"Content-Type: {ctype}\r\n\r\n"
        ).encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_batch_decodes_each_file_in_order(predictor):
    rng = np.random.default_rng(4)
    pixels = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    body, ctype = multipart([(f"f{i}", png(p), "image/png") for i, p in enumerate(pixels)])
    batch = predictor.parse(body, ctype, max_instances=8)
    assert batch.shape == (3, *SIZE, 3)
    for i, p in enumerate(pixels):
        assert np.array_equal(batch[i], predictor.parse(png(p), "image/png", 1)[0])


def test_a_model_answering_nan_is_a_server_error(exported, tmp_path):
    model = tiny_model(seed=1)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    meta = export(model, tmp_path, CLASSES)
    with pytest.raises(ServingError, match="non-finite probabilities"):
        Predictor(tmp_path, meta).predict(np.zeros((1, *SIZE, 3), np.float32))


def test_openapi_describes_predict():
    from tl_ray.serving.server import api

    doc = api.openapi()
    post = doc["paths"]["/predict"]["post"]
    assert set(post["requestBody"]["content"]) == {
        "application/json", "image/png", "image/jpeg", "application/octet-stream", "multipart/form-data"
    }
    assert post["requestBody"]["content"]["application/json"]["schema"]["required"] == ["instances"]
    assert {"200", "400", "401", "413", "415", "500"} <= set(post["responses"])
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("PredictResponse")
    assert "Prediction" in doc["components"]["schemas"] and "ErrorResponse" in doc["components"]["schemas"]


def test_bearer_auth(monkeypatch):
    from tl_ray.serving.schema import check_auth, load_token

    assert load_token(None) is None and check_auth(None, None) is None
    monkeypatch.delenv("TLRAY_TEST_TOKEN", raising=False)
    with pytest.raises(ServingError, match="TLRAY_TEST_TOKEN"):
        load_token("TLRAY_TEST_TOKEN")
    monkeypatch.setenv("TLRAY_TEST_TOKEN", "s3cret")
    token = load_token("TLRAY_TEST_TOKEN")
    assert check_auth(token, "Bearer s3cret") is None
    for header in (None, "Bearer nope", "Basic s3cret", "s3cret"):
        resp = check_auth(token, header)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"


def test_canary_window_figures():
    from tl_ray.serving.router import Window

    w = Window(60)
    assert w.figures() == {"requests": 0, "error_rate": 0.0, "p99_ms": 0.0}
    for i in range(100):
        w.add(ok=i % 10 != 0, latency_ms=float(i))
    f = w.figures()
    assert f["requests"] == 100 and f["error_rate"] == pytest.approx(0.1) and f["p99_ms"] == 99.0
