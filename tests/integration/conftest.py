"""Integration tests: a real local Ray cluster, shared by a module."""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True)
    yield
    ray.shutdown()
