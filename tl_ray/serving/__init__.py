"""Serving: a Ray-free ``Predictor`` and the Ray Serve application around it.

``tl_ray.serving.app`` (imported on demand) holds the deployment and
``run``/``build_app``; ``tl_ray.serving.client`` talks to it over HTTP.
"""

from tl_ray.serving.predictor import Predictor, RequestError

__all__ = ["Predictor", "RequestError"]
