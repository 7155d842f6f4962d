"""Serving: a Ray-free ``Predictor`` and, in ``tl_ray.serving.app`` (imported on demand: it needs Ray), the
Ray Serve application around it; ``tl_ray.serving.client`` talks to it over HTTP."""

from tl_ray.serving.parsing import RequestError
from tl_ray.serving.predictor import Predictor

__all__ = ["Predictor", "RequestError"]
