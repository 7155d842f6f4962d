"""The end-to-end job on the second S3 API implementation (s3rver): ingest → upstream model → sweep →
promotion → test accuracy → Serve. s3rver ignores conditional writes, so the registry and the feature cache
run under the documented opt-in, the spec's ``storage: {uri: ..., locking: lease}``, which trials read from
their spec (no environment variable is set)."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from test_pipeline import write_specs

from tl_ray import store as storage
from tl_ray.spec import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3rver_ray(s3rver_server):
    """A local Ray started with the environment pointing at s3rver."""
    import ray

    env = dict(s3rver_server.env)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.shutdown()  # a Ray of an earlier module would hold the other server's environment
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield s3rver_server
    ray.shutdown()
    storage.use_locking(None)  # the spec set this process's locking
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_run_pipeline_end_to_end_on_s3rver(s3rver_ray, tmp_path):
    from ray import serve

    from tl_ray.pipeline import run_pipeline
    from tl_ray.registry.store import Registry

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"s3://tlray-e2e-{uuid.uuid4().hex[:8]}/store"
    storage.ensure_bucket(store)
    assert "TLRAY_STORAGE_LOCKING" not in os.environ
    spec = load_spec(write_specs(tmp_path, {"uri": store, "locking": "lease"}, port))
    assert (spec.storage, spec.storage_locking) == (store, "lease")
    try:
        figures = run_pipeline(spec, out=lambda line: None)
    finally:
        serve.shutdown()
    registry = Registry(store)
    assert registry.aliases("tiny-target") == {"production": 1} and figures["promoted"] == "tiny-target:v1"
    assert storage.read_text(storage.join(store, "datasets/tgt/train/_manifest.json")).startswith("{")
    assert figures["http_test_accuracy"] == pytest.approx(figures["test_accuracy"], abs=1 / 3000)
