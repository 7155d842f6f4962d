"""ModelReplica: a Serve replica of a registry version; ModelIngress: the same with the HTTP routes.

``reconfigure`` loads the version ``user_config`` names beside the old one, which answers until the swap;
one that fails to load is refused (``/healthz`` reports it). Requests are parsed before ``@serve.batch``.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in route signatures.
import asyncio
import logging
import threading
import time

import numpy as np
import ray
from fastapi import FastAPI, Request
from ray import serve
from ray.serve import metrics

from tl_ray.serving.parsing import RequestError
from tl_ray.serving.predictor import Predictor, configure_threads
from tl_ray.serving.schema import (
    PREDICT_OPENAPI, PREDICT_RESPONSES, ErrorResponse, Health, check_auth, error, load_token, read_body
)
from tl_ray.spec import ServeSpec

logger = logging.getLogger(__name__)
api = FastAPI(title="tl-ray model server",
              description="Image classification with a tl-ray registry model. Batches concurrent requests.")
LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class BatchStats:
    """Counts of requests, errors and the batches ``@serve.batch`` formed in one replica."""

    def __init__(self):
        self._lock = threading.Lock()
        self.batches = self.requests = self.instances = 0
        self.largest_batch_requests = self.largest_batch_instances = 0
        self.answered = self.client_errors = self.server_errors = 0
        self.in_flight = 0  # requests being parsed or predicted now

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def record(self, requests: int, instances: int) -> None:
        with self._lock:
            self.batches += 1
            self.requests += requests
            self.instances += instances
            self.largest_batch_requests = max(self.largest_batch_requests, requests)
            self.largest_batch_instances = max(self.largest_batch_instances, instances)

    def answer(self, status: int) -> None:
        with self._lock:
            self.answered += 1
            self.client_errors += 400 <= status < 500
            self.server_errors += status >= 500

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class _Metrics:
    """Per-deployment Prometheus metrics (Serve adds deployment, replica and application tags)."""

    def __init__(self):
        self.requests = metrics.Counter("tlray_requests", tag_keys=("model", "status"),
                                        description="Prediction requests answered, by HTTP status.")
        self.errors = metrics.Counter("tlray_request_errors", tag_keys=("model", "kind"),
                                      description="Requests answered 4xx (client) or 5xx (server).")
        self.latency = metrics.Histogram(
            "tlray_request_latency_ms", boundaries=LATENCY_MS, tag_keys=("model",),
            description="Time from request to answer inside the replica, ms.")
        self.batch = metrics.Histogram("tlray_batch_size", boundaries=BATCH_SIZES, tag_keys=("model",),
                                       description="Instances per batch run through the model.")
        self.swaps = metrics.Counter("tlray_model_swaps", tag_keys=("outcome",),
                                     description="Model swaps through reconfigure, by outcome.")

    def answered(self, model: str, status: int, started: float) -> None:
        self.requests.inc(tags={"model": model, "status": str(status)})
        if status >= 400:
            self.errors.inc(tags={"model": model, "kind": "client" if status < 500 else "server"})
        self.latency.observe((time.perf_counter() - started) * 1000, tags={"model": model})


class ModelReplica:
    """One replica: a Predictor for the registry version its ``user_config`` names, called through handles.

    Args:
        model: the model name (the version comes from ``user_config``).
        serve_settings: a ``ServeSpec`` as a dict.
    """

    def __init__(self, storage: str, model: str, serve_settings: dict):
        self.spec = ServeSpec.model_validate(serve_settings)
        self.storage, self.model = storage, model
        # Before TensorFlow starts: its thread pools are sized once, from this replica's CPUs.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", self.spec.cpus_per_replica)
        self.threads = configure_threads(cpus)
        self.token = load_token(self.spec.auth_token_env)
        self.predictor: Predictor | None = None
        self.swap_error: dict | None = None
        self.stats = BatchStats()
        self.metrics = _Metrics()
        self._predict_batch.set_max_batch_size(self.spec.max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)

    async def reconfigure(self, config: dict) -> None:
        """Loads ``config["model"]`` (``name:vN``) and swaps it in; keeps the old one if it fails."""
        ref = config["model"]
        if self.predictor is not None and ref == self.predictor.ref:
            return
        try:
            new = await asyncio.to_thread(self._load, ref)
        except Exception as exc:  # noqa: BLE001 - any failure to load must leave the old version serving
            if self.predictor is None:
                raise  # a starting replica has nothing else to serve; Serve reports the failure
            self.swap_error = {"model": ref, "error": f"{type(exc).__name__}: {exc}", "serving": self.predictor.ref}
            self.metrics.swaps.inc(tags={"outcome": "refused"})
            logger.error("refused to swap %s -> %s: %s", self.predictor.ref, ref, self.swap_error["error"])
            return
        old, self.predictor, self.swap_error = self.predictor, new, None
        self.metrics.swaps.inc(tags={"outcome": "swapped"})
        logger.info("serving %s (was %s)", new.ref, old.ref if old else "nothing")

    def _load(self, ref: str) -> Predictor:
        predictor = Predictor.load(self.storage, ref)  # sha256 check of every file, then safe_mode load
        predictor.warm_up()
        return predictor

    async def infer(self, body: bytes, content_type: str | None) -> tuple[int, dict]:
        """Parses, predicts and formats one request body; ``(HTTP status, JSON answer)``. Never raises."""
        started = time.perf_counter()
        predictor = self.predictor
        self.stats.begin()
        try:
            batch = predictor.parse(body, content_type, max_instances=self.spec.max_instances,
                                    max_body_bytes=self.spec.max_body_bytes)
            probs, used = await self._predict_batch((batch, predictor))
            status, answer = 200, {"predictions": used.format(probs), "model": used.ref}
        except RequestError as exc:
            status, answer = exc.status, {"error": exc.message}
        except Exception as exc:  # noqa: BLE001 - answer, log, and keep the replica serving
            logger.exception("prediction failed for %s", predictor.ref)
            status, answer = 500, {"error": f"prediction failed in {predictor.ref}: {type(exc).__name__}: {exc}"}
        finally:
            self.stats.end()
        self.stats.answer(status)
        self.metrics.answered(predictor.ref, status, started)
        return status, answer

    def serving(self) -> dict:
        spec = self.spec
        return {"max_batch_size": spec.max_batch_size, "batch_wait_timeout_s": spec.batch_wait_timeout_s,
                "max_instances": spec.max_instances, "tf_threads": self.threads, **self.stats.as_dict()}

    def status(self) -> dict:
        """What this replica serves, for ``app.update``'s check after a swap (called through a handle)."""
        replica = serve.get_replica_context().replica_id.unique_id
        return {"replica": replica, "model": self.predictor.ref, "swap_error": self.swap_error, **self.serving()}

    # The decorator's values are placeholders: __init__ sets the ServeSpec's.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, items: list[tuple[np.ndarray, Predictor]]) -> list[tuple[np.ndarray, Predictor]]:
        # A swap may land between parsing and batching: each request is predicted by the version that parsed it.
        out: list = [None] * len(items)
        for predictor in {id(p): p for _, p in items}.values():
            idx = [i for i, (_, p) in enumerate(items) if p is predictor]
            sizes = [len(items[i][0]) for i in idx]
            self.stats.record(len(idx), sum(sizes))
            self.metrics.batch.observe(sum(sizes), tags={"model": predictor.ref})
            # In a thread, so the event loop keeps parsing requests into the next batch meanwhile.
            probs = await asyncio.to_thread(predictor.predict, np.concatenate([items[i][0] for i in idx]))
            for i, part in zip(idx, np.split(probs, np.cumsum(sizes)[:-1])):
                out[i] = (part, predictor)
        return out


@serve.deployment  # app.py sets its name, replicas and user_config
@serve.ingress(api)
class ModelIngress(ModelReplica):
    """A ModelReplica with the HTTP routes: the ingress when no canary router stands in front."""

    @api.post("/predict", openapi_extra=PREDICT_OPENAPI, responses=PREDICT_RESPONSES)
    async def predict(self, request: Request):
        """Classify images: JSON ``{"instances": [...]}``, one PNG/JPEG body, or a multipart batch of files."""
        denied = check_auth(self.token, request.headers.get("authorization"))
        if denied is not None:
            self.stats.answer(401)
            return denied
        try:
            body = await read_body(request, self.spec.max_body_bytes)
        except RequestError as exc:
            self.stats.answer(exc.status)
            return error(exc.status, exc.message)
        status, answer = await self.infer(body, request.headers.get("content-type"))
        return answer if status == 200 else error(status, answer["error"])

    @api.get("/healthz", response_model=Health)
    def healthz(self):
        return {"status": "ok", "model": self.predictor.ref, "swap_error": self.swap_error}

    @api.get("/metadata", responses={200: {"description": "metadata.json plus serving figures"}, 401: {"model": ErrorResponse}})
    def metadata(self, request: Request):
        denied = check_auth(self.token, request.headers.get("authorization"))
        if denied is not None:
            return denied
        return {**self.predictor.metadata, "model": self.predictor.ref, "serving": self.serving()}
