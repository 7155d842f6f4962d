"""The Serve application over real HTTP: predictions, bad requests, batching under a burst."""

from __future__ import annotations

import io
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from tl_ray.errors import ServingError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BAD_REQUESTS = yaml.safe_load((ROOT / "tests/data/requests/bad_requests.yaml").read_text())
SIZE = (32, 32)
CLASSES = ["sandal", "shirt", "sneaker"]
BURST = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory):
    """Registry fetches (here and in replicas, which inherit it at ray.init) go to a temporary cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLRAY_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A MobileNetV2 (alpha 0.35, random weights) classifier published as tiny:production."""
    from tl_ray.models.build import build_model
    from tl_ray.models.export import export_model
    from tl_ray.registry.store import Registry
    from tl_ray.spec import ModelSpec

    spec = ModelSpec(backbone="mobilenet_v2", backbone_args={"alpha": 0.35}, weights="none")
    model = build_model(spec, len(CLASSES), SIZE, seed=0)
    out = tmp_path_factory.mktemp("export")
    export_model(model, out)
    store = str(tmp_path_factory.mktemp("store"))
    registry = Registry(store)
    version = registry.publish("tiny", out, {"image_size": list(SIZE), "class_names": CLASSES})
    registry.set_alias("tiny", "production", version)
    return store, model


@pytest.fixture(scope="module")
def url(ray_cluster, published):
    from ray import serve

    from tl_ray.serving.app import run
    from tl_ray.spec import ServeSpec

    spec = ServeSpec(
        port=_free_port(),
        max_batch_size=16,
        batch_wait_timeout_s=0.2,
        max_instances=64,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
    )
    yield run(published[0], "tiny:production", spec, name="tl-ray-test")
    serve.shutdown()


def expected(model, batch: np.ndarray) -> np.ndarray:
    return model.predict(batch, verbose=0)


def probabilities(predictions: list[dict]) -> np.ndarray:
    return np.array([p["probabilities"] for p in predictions])


def test_healthz_and_metadata(url):
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok", "model": "tiny:v1"}
    meta = requests.get(f"{url}/metadata", timeout=30).json()
    assert meta["class_names"] == CLASSES and meta["image_size"] == list(SIZE)
    assert meta["serving"]["max_batch_size"] == 16 and meta["serving"]["tf_threads"] == 1


def test_json_predictions_match_the_model(url, published):
    from tl_ray.serving.client import predict_instances

    batch = np.random.default_rng(0).integers(0, 256, (3, *SIZE, 3)).astype(np.float32)
    predictions = predict_instances(url, batch)
    assert [p["class"] for p in predictions] == [CLASSES[p["class_id"]] for p in predictions]
    assert np.allclose(probabilities(predictions), expected(published[1], batch), atol=1e-5)


def test_png_files_match_the_model(url, published, tmp_path):
    import tensorflow as tf

    from tl_ray.data.images import decode_image
    from tl_ray.serving.client import predict_files

    rng = np.random.default_rng(1)
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
        paths.append(str(path))
    predictions = predict_files(url, paths)
    batch = np.stack([decode_image(tf.constant(Path(p).read_bytes()), SIZE).numpy() for p in paths])
    assert np.allclose(probabilities(predictions), expected(published[1], batch), atol=1e-5)


@pytest.mark.parametrize("case", [c for c in BAD_REQUESTS if "max_body_bytes" not in c], ids=lambda c: c["id"])
def test_bad_requests_get_4xx_json(url, case):
    body = bytes.fromhex(case["body_hex"]) if "body_hex" in case else case["body"].encode()
    if "max_instances" in case:  # the server allows 64
        body = json.dumps({"instances": [[[0]]] * 65}).encode()
    headers = {"Content-Type": case["content_type"]} if case["content_type"] else {}
    resp = requests.post(f"{url}/predict", data=body, headers=headers, timeout=30)
    assert resp.status_code == case["status"], resp.text
    assert case["says"] in resp.json()["error"]


def test_oversized_body_is_413_and_server_stays_healthy(url):
    resp = requests.post(
        f"{url}/predict", data=b"0" * (16 * 2**20 + 1), headers={"Content-Type": "application/json"}, timeout=60
    )
    assert resp.status_code == 413 and "limit is" in resp.json()["error"]
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"


def test_client_errors_name_the_url_and_the_server_message(url):
    from tl_ray.serving.client import predict_instances

    with pytest.raises(ServingError, match=r"/predict refused .* HTTP 400: instances\[0\] has shape \[2\]"):
        predict_instances(url, np.zeros((1, 2)))
    dead = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServingError, match=f"cannot reach {dead}/predict"):
        predict_instances(dead, np.zeros((1, 4, 4)))


def test_concurrent_burst_is_batched(url, published):
    from tl_ray.data.images import prepare_array

    images = np.random.default_rng(2).integers(0, 256, (BURST, 28, 28), dtype=np.uint8)
    before = requests.get(f"{url}/metadata", timeout=30).json()["serving"]["batches"]
    start = threading.Barrier(BURST)

    def post(image: np.ndarray) -> requests.Response:
        body = json.dumps({"instances": [image.tolist()]}).encode()
        start.wait()  # all requests leave together
        return requests.post(f"{url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=60)

    with ThreadPoolExecutor(BURST) as pool:
        responses = list(pool.map(post, images))
    assert [r.status_code for r in responses] == [200] * BURST
    got = probabilities([r.json()["predictions"][0] for r in responses])
    assert np.allclose(got, expected(published[1], prepare_array(images, SIZE)), atol=1e-5)
    serving = requests.get(f"{url}/metadata", timeout=30).json()["serving"]
    assert serving["largest_batch_requests"] > 1, serving
    assert serving["batches"] - before < BURST
