"""The Serve application over real HTTP: predictions, bad requests, batching under a burst, a fuzz
of request bodies, hot swaps under steady load (good, tampered, unloadable), and a canary that errors
rolled back automatically. One Serve instance on one loopback port; the canary app has its own prefix."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tiny_models import CLASSES, SIZE, publish, request_body, small_model
from tl_ray.errors import ServingError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BAD_REQUESTS = yaml.safe_load((ROOT / "tests/data/requests/bad_requests.yaml").read_text())
BURST = 24
TOKEN_ENV, TOKEN = "TLRAY_TEST_SERVE_TOKEN", "integration-token"
APP = "tl-ray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory):
    """Registry cache and auth token; replicas inherit both (autouse: set before ray.init)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLRAY_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv(TOKEN_ENV, TOKEN)
        yield


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A MobileNetV2 (alpha 0.35, random weights) classifier published as tiny:production (v1)."""
    from tl_ray.models.build import build_model
    from tl_ray.registry.store import Registry
    from tl_ray.spec import ModelSpec

    spec = ModelSpec(backbone="mobilenet_v2", backbone_args={"alpha": 0.35}, weights="none")
    model = build_model(spec, len(CLASSES), SIZE, seed=0)
    store = str(tmp_path_factory.mktemp("store"))
    version = publish(store, model, tmp_path_factory.mktemp("export"))
    Registry(store).set_alias("tiny", "production", version)
    return store, model


@pytest.fixture(scope="module")
def port():
    return _free_port()


def serve_spec(port: int, **extra):
    from tl_ray.spec import ServeSpec

    return ServeSpec(
        port=port,
        max_batch_size=16,
        batch_wait_timeout_s=0.2,
        max_instances=64,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        **extra,
    )


@pytest.fixture(scope="module")
def url(ray_cluster, published, port):
    from ray import serve

    from tl_ray.serving.app import run

    yield run(published[0], "tiny:production", serve_spec(port), name=APP)
    serve.shutdown()


def expected(model, batch: np.ndarray) -> np.ndarray:
    return model.predict(batch, verbose=0)


def probabilities(predictions: list[dict]) -> np.ndarray:
    return np.array([p["probabilities"] for p in predictions])


def test_healthz_and_metadata(url):
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok", "model": "tiny:v1", "swap_error": None}
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
    as_one_multipart_request = predict_files(url, paths, multipart=True)
    assert np.allclose(probabilities(as_one_multipart_request), probabilities(predictions), atol=1e-6)


@pytest.mark.parametrize(
    "case", [c for c in BAD_REQUESTS if "max_body_bytes" not in c and not c.get("unit_only")], ids=lambda c: c["id"]
)
def test_bad_requests_get_4xx_json(url, case):
    body = request_body(case)
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


def replica_ids(deployment: str = "ModelReplica", app: str = APP) -> set[str]:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app_name=app)
    return {handle.status.remote().result(timeout_s=30)["replica"] for _ in range(4)}


bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps({"instances": v}).encode(), st.recursive(
        st.none() | st.booleans() | st.integers(-5, 300) | st.floats() | st.text(max_size=3),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=30,
    )),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
)
content_types = st.sampled_from(
    ["application/json", "image/png", "image/jpeg", "application/octet-stream", "multipart/form-data; boundary=x",
     "multipart/form-data", "text/plain", ""]
)


def test_fuzzed_bodies_never_get_a_5xx_and_the_replica_survives(url):
    before = replica_ids()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=bodies, content_type=content_types)
    def post(body, content_type):
        headers = {"Content-Type": content_type} if content_type else {}
        resp = requests.post(f"{url}/predict", data=body, headers=headers, timeout=30)
        assert resp.status_code < 500, (body[:80], content_type, resp.text[:200])
        if resp.status_code != 200:
            assert "error" in resp.json()

    post()
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    assert replica_ids() == before  # the same replica answered throughout: no restart


def test_openapi_is_served(url):
    doc = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert "multipart/form-data" in doc["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_metrics_reach_prometheus(url):
    """Ray's metrics agent exposes the replica's counters and histograms in Prometheus text format."""
    import ray

    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["Alive"])
    wanted = ("ray_tlray_requests_total", "ray_tlray_request_latency_ms_bucket", "ray_tlray_batch_size_bucket",
              "ray_tlray_request_errors_total")
    deadline, text = time.monotonic() + 45, ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not exported after 45s: {missing}"
    line = next(l for l in text.splitlines() if l.startswith("ray_tlray_requests_total") and 'status="200"' in l)
    assert 'deployment="ModelReplica"' in line and 'model="tiny:v1"' in line and float(line.rsplit(" ", 1)[1]) > 0


# -- hot swaps (these move tiny:production, so they run after the tests above) -------------
class SteadyLoad:
    """One client thread posting small JSON requests back to back (bounded in count) while a swap happens."""

    def __init__(self, url: str, limit: int = 3000, headers: dict | None = None):
        self.url, self.limit, self.headers = url, limit, headers or {}
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        body = json.dumps({"instances": [np.full((8, 8), 100).tolist()]}).encode()
        headers = {"Content-Type": "application/json", **self.headers}
        while not self._stop.is_set() and len(self.answers) < self.limit:
            try:
                r = requests.post(f"{self.url}/predict", data=body, headers=headers, timeout=30)
                self.answers.append((r.status_code, r.json().get("model", r.text[:100])))
            except requests.RequestException as exc:
                self.answers.append((-1, type(exc).__name__))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        time.sleep(0.5)  # some answers after the swap, too
        self._stop.set()
        self._thread.join(timeout=60)

    def failures(self) -> list:
        return [a for a in self.answers if a[0] != 200]


def test_swap_under_steady_load_drops_nothing(url, published, port, tmp_path):
    from tl_ray.registry.store import Registry
    from tl_ray.serving.app import served_refs, update

    store = published[0]
    v2 = publish(store, small_model(seed=2), tmp_path / "v2")
    Registry(store).set_alias("tiny", "production", v2)
    with SteadyLoad(url) as load:
        time.sleep(0.5)
        assert update(store, "tiny:production", serve_spec(port), name=APP) == {"ModelReplica": f"tiny:v{v2}"}
    assert load.failures() == [], load.failures()[:5]
    models = [m for _, m in load.answers]
    assert models[0] == "tiny:v1" and models[-1] == f"tiny:v{v2}", (len(models), models[:3], models[-3:])
    assert models.index(f"tiny:v{v2}") > 0 and "tiny:v1" not in models[models.index(f"tiny:v{v2}"):]
    assert served_refs(APP) == {"ModelReplica": f"tiny:v{v2}"}
    assert requests.get(f"{url}/healthz", timeout=30).json()["model"] == f"tiny:v{v2}"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(url, published, port, tmp_path):
    from tl_ray.registry.store import Registry
    from tl_ray.serving.app import served_refs, update

    store = published[0]
    registry = Registry(store)
    serving = requests.get(f"{url}/healthz", timeout=30).json()["model"]
    v3 = publish(store, small_model(seed=3), tmp_path / "v3")
    (Path(store) / f"registry/tiny/v{v3}/model.keras").write_bytes(b"tampered after publication")
    registry.set_alias("tiny", "production", v3)
    with SteadyLoad(url) as load:
        # The preflight in this process refuses it before any replica sees it ...
        with pytest.raises(ServingError, match=r"refused to swap .* file 'model.keras' does not match its sha256"):
            update(store, "tiny:production", serve_spec(port), name=APP)
        # ... and without the preflight the replica refuses it, keeps the old version and says why.
        with pytest.raises(ServingError, match=rf"replica .* could not load it: RegistryError: refusing to load tiny:v{v3}"):
            update(store, "tiny:production", serve_spec(port), name=APP, preflight=False)
    assert load.failures() == [] and {m for _, m in load.answers} == {serving}
    health = requests.get(f"{url}/healthz", timeout=30).json()
    assert health["model"] == serving and health["swap_error"]["model"] == f"tiny:v{v3}"
    assert served_refs(APP) == {"ModelReplica": serving}  # user_config reverted: new replicas start on the old one
    assert [e["kind"] for e in registry.events("tiny")][-2:] == ["swap_refused", "swap_refused"]


def test_canary_that_errors_is_rolled_back(url, published, port, tmp_path):
    from tl_ray.registry.store import Registry
    from tl_ray.serving.app import run

    store = published[0]
    registry = Registry(store)
    # Production is whatever the main app serves (the tampered version of the previous test is refused).
    production = int(requests.get(f"{url}/healthz", timeout=30).json()["model"].split(":v")[1])
    if registry.aliases("tiny")["production"] != production:
        registry.set_alias("tiny", "production", production)
    canary = publish(store, small_model(seed=4, nan=True), tmp_path / "nan")
    registry.set_alias("tiny", "canary", canary)
    spec = serve_spec(
        port, route_prefix="/canary-app", auth_token_env=TOKEN_ENV,
        canary={"weight": 0.5, "max_error_rate": 0.2, "max_p99_ms": 10000, "window_s": 60, "min_requests": 4},
    )
    curl = run(store, "tiny:production", spec, name="tl-ray-canary")
    body = json.dumps({"instances": [np.zeros((8, 8)).tolist()]}).encode()
    ok_headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}

    assert requests.post(f"{curl}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30).status_code == 401
    assert requests.post(f"{curl}/predict", data=body, headers={**ok_headers, "Authorization": "Bearer x"}, timeout=30).status_code == 401
    statuses = []
    for _ in range(60):
        r = requests.post(f"{curl}/predict", data=body, headers=ok_headers, timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 500:
            assert "non-finite probabilities" in r.json()["error"]
        if requests.get(f"{curl}/canary", timeout=30).json()["rolled_back"]:
            break
    state = requests.get(f"{curl}/canary", timeout=30).json()
    assert state["rolled_back"] and "error rate" in state["rolled_back"]["reason"], (statuses, state)
    assert state["weight"] == 0.0 and state["rolled_back"]["canary"] == f"tiny:v{canary}"
    after = [requests.post(f"{curl}/predict", data=body, headers=ok_headers, timeout=30) for _ in range(10)]
    assert [r.status_code for r in after] == [200] * 10
    assert {r.json()["model"] for r in after} == {f"tiny:v{production}"}
    assert "canary" not in registry.aliases("tiny")  # it had no earlier version, so it is removed
    event = registry.events("tiny")[-1]
    assert event["kind"] == "canary_rollback" and event["canary"] == f"tiny:v{canary}"
