"""Serving: a Ray-free ``Predictor`` and the Ray Serve application around it.

``tl_ray.serving.app`` (imported on demand) builds, runs and hot-swaps the
application; ``server`` holds ModelReplica (one replica of the model
deployment) and ModelIngress (the same with HTTP routes), ``router`` the
canary router, ``schema`` the HTTP contract, ``parsing`` the request bodies;
``tl_ray.serving.client`` talks to it over HTTP.
"""

from tl_ray.serving.parsing import RequestError
from tl_ray.serving.predictor import Predictor

__all__ = ["Predictor", "RequestError"]
