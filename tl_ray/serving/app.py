"""The Ray Serve application: a FastAPI ``ModelServer`` deployment over a ``Predictor``.

Routes (under the application's route prefix):

- ``POST /predict``: ``application/json`` ``{"instances": [...]}`` or the bytes of
  one PNG/JPEG image; answers ``{"predictions": [...], "model": "name:vN"}``.
- ``GET /healthz``: ``{"status": "ok", "model": "name:vN"}``.
- ``GET /metadata``: the version's metadata.json plus batching statistics.

Requests are parsed and validated in the request handler, so a bad request
gets a 4xx ``{"error": ...}`` and never reaches the model. Valid batches of
many concurrent requests are concatenated by ``@serve.batch``, predicted in one
call and split again.

Run it from Python with ``run(storage, ref, serve_spec)``, or from a config file:

    serve run serve/config.yaml
"""

import asyncio
import logging
import os
import threading
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from tl_ray.errors import ConfigError
from tl_ray.serving.predictor import Predictor, RequestError, configure_threads
from tl_ray.spec import ServeSpec

logger = logging.getLogger(__name__)
api = FastAPI(title="tl-ray model server")


class BatchStats:
    """Counts of the batches ``@serve.batch`` formed in one replica."""

    def __init__(self):
        self._lock = threading.Lock()
        self.batches = 0
        self.requests = 0
        self.instances = 0
        self.largest_batch_requests = 0
        self.largest_batch_instances = 0

    def record(self, requests: int, instances: int) -> None:
        with self._lock:
            self.batches += 1
            self.requests += requests
            self.instances += instances
            self.largest_batch_requests = max(self.largest_batch_requests, requests)
            self.largest_batch_instances = max(self.largest_batch_instances, instances)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


# Defined before ModelServer: Serve serializes the class as it decorates it, so what it calls must exist by then.
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@serve.deployment(name="ModelServer", max_constructor_retry_count=3)
@serve.ingress(api)
class ModelServer:
    """One replica: a Predictor for a pinned registry version.

    Args:
        storage: the store root holding the registry.
        ref: the model reference, pinned to a version (``name:vN``).
        serve_settings: a ``ServeSpec`` as a dict.
    """

    def __init__(self, storage: str, ref: str, serve_settings: dict):
        self.spec = ServeSpec.model_validate(serve_settings)
        # Before TensorFlow starts: its thread pools are sized once, from this replica's CPUs.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", self.spec.cpus_per_replica)
        self.threads = configure_threads(cpus)
        self.predictor = Predictor.load(storage, ref)
        self.stats = BatchStats()
        self._predict_batch.set_max_batch_size(self.spec.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)

    @api.post("/predict")
    async def predict(self, request: Request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.spec.max_body_bytes:
            return _error(413, f"request body is {declared} bytes; the limit is {self.spec.max_body_bytes}.")
        body = await request.body()
        try:
            batch = self.predictor.parse(
                body,
                request.headers.get("content-type"),
                max_instances=self.spec.max_instances,
                max_body_bytes=self.spec.max_body_bytes,
            )
        except RequestError as exc:
            return _error(exc.status, exc.message)
        try:
            probs = await self._predict_batch(batch)
        except Exception as exc:  # noqa: BLE001 - answer, log, and keep the replica serving
            logger.exception("prediction failed for %s", self.predictor.ref)
            return _error(500, f"prediction failed in {self.predictor.ref}: {type(exc).__name__}: {exc}")
        return {"predictions": self.predictor.format(probs), "model": self.predictor.ref}

    @api.get("/healthz")
    def healthz(self):
        return {"status": "ok", "model": self.predictor.ref}

    @api.get("/metadata")
    def metadata(self):
        return {
            **self.predictor.metadata,
            "model": self.predictor.ref,
            "serving": {
                "max_batch_size": self.spec.max_batch_size,
                "batch_wait_timeout_s": self.spec.batch_wait_timeout_s,
                "max_instances": self.spec.max_instances,
                "tf_threads": self.threads,
                **self.stats.as_dict(),
            },
        }

    # The decorator's values are placeholders: __init__ sets the ServeSpec's.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(b) for b in batches]
        self.stats.record(len(batches), sum(sizes))
        # In a thread, so the event loop keeps parsing requests into the next batch meanwhile.
        probs = await asyncio.to_thread(self.predictor.predict, np.concatenate(batches))
        return np.split(probs, np.cumsum(sizes)[:-1])


def bind(storage: str, ref: str, serve_spec: ServeSpec) -> serve.Application:
    """The ModelServer application for ``ref``, with the ServeSpec's replicas, CPUs and autoscaling.

    The reference is resolved here, once: every replica then serves the same
    version even if the alias moves while the application scales.

    Raises:
        RegistryError: ``ref`` names no model, alias or version in ``storage``.
    """
    from tl_ray import storage as store
    from tl_ray.registry.store import Registry

    if not store.is_absolute(storage):  # replicas may run in another folder, or on another node
        storage = os.path.abspath(storage)
    name, version = Registry(storage).resolve(ref)
    auto = serve_spec.autoscaling
    return ModelServer.options(
        autoscaling_config={
            "min_replicas": auto.min_replicas,
            "initial_replicas": max(1, auto.min_replicas),
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
        },
        # Room for one batch being predicted while the next one fills.
        max_ongoing_requests=2 * serve_spec.max_batch_size,
        ray_actor_options={"num_cpus": serve_spec.cpus_per_replica},
    ).bind(storage, f"{name}:v{version}", serve_spec.model_dump(mode="json"))


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve config files (``import_path: tl_ray.serving.app:build_app``).

    Args:
        args: ``spec`` (a spec YAML whose ``storage``, ``serve`` and
            ``promote`` give the defaults), ``storage`` and ``model`` (required
            without ``spec``; ``model`` defaults to the spec's promote name and
            alias), and any ``ServeSpec`` field to override, e.g.
            ``max_batch_size: 16`` or ``autoscaling: {max_replicas: 4}``.

    Raises:
        ConfigError: an unknown key, a missing storage or model, or an invalid setting.
    """
    from tl_ray.spec import load_spec

    args, given = dict(args), sorted(args)
    allowed = {"spec", "storage", "model"} | set(ServeSpec.model_fields)
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise ConfigError(f"serve application args: unknown keys {unknown}. Allowed: {sorted(allowed)}.")
    settings: dict[str, Any] = {}
    storage, model = args.pop("storage", None), args.pop("model", None)
    if "spec" in args:
        spec = load_spec(args.pop("spec"))
        settings = spec.serve.model_dump(mode="json")
        storage = storage or spec.storage
        if model is None and spec.promote is not None:
            model = f"{spec.promote.name}:{spec.promote.alias}"
    if storage is None or model is None:
        raise ConfigError(
            "serve application args need 'storage' and 'model' (e.g. fashion-transfer:production), "
            f"or a 'spec' whose promote section names the model. Received keys: {given}."
        )
    if isinstance(args.get("autoscaling"), dict):
        args["autoscaling"] = {**settings.get("autoscaling", {}), **args["autoscaling"]}
    try:
        serve_spec = ServeSpec.model_validate({**settings, **args})
    except ValueError as exc:
        raise ConfigError(f"serve application args are invalid: {exc}") from None
    return bind(storage, model, serve_spec)


def run(storage: str, ref: str, serve_spec: ServeSpec, blocking: bool = False, name: str = "tl-ray") -> str:
    """Starts Serve on ``serve_spec.host:port`` and deploys ``ref``; returns the application's base URL.

    Args:
        storage: the store root holding the registry.
        ref: ``name``, ``name:alias`` or ``name:vN``; resolved to a version once, here.
        serve_spec: batching, limits, autoscaling, CPUs, host, port and route prefix.
        blocking: keep serving until Ctrl-C instead of returning. Defaults to False.
        name: the Serve application name. Defaults to "tl-ray".

    Raises:
        RegistryError: ``ref`` names no model, alias or version in ``storage``.
        RuntimeError: the replicas could not start (Serve's message says why).

    Example:

    >>> url = run("./tlray-store", "fashion-transfer:production", ServeSpec(port=8000))
    >>> requests.get(url + "/healthz").json()
    {'status': 'ok', 'model': 'fashion-transfer:v3'}
    """
    app = bind(storage, ref, serve_spec)
    serve.start(http_options={"host": serve_spec.host, "port": serve_spec.port})
    host = "127.0.0.1" if serve_spec.host in ("0.0.0.0", "::", "") else serve_spec.host
    url = f"http://{host}:{serve_spec.port}{serve_spec.route_prefix.rstrip('/')}"
    logger.info("serving %s at %s", ref, url)
    serve.run(app, name=name, route_prefix=serve_spec.route_prefix, blocking=blocking)
    return url
