"""CanaryRouter: the ingress that splits traffic between the production and canary ModelReplica deployments.

When the canary's window breaks ``serve.canary``'s bounds, all traffic goes to production, the canary alias
moves back (or is removed) and an event records the figures. 4xx answers never count against the canary.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in route signatures.
import asyncio
import logging
import random
import time
from collections import deque

from fastapi import FastAPI, Request
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from tl_ray.serving.parsing import RequestError
from tl_ray.serving.schema import PREDICT_OPENAPI, PREDICT_RESPONSES, check_auth, error, load_token, read_body
from tl_ray.spec import ServeSpec

logger = logging.getLogger(__name__)
router_api = FastAPI(
    title="tl-ray model server (canary)",
    description="Image classification; a share of requests is answered by the canary version.",
)


class Window:
    """(time, ok, latency ms) of recent answers, pruned to the last ``seconds``."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.items: deque[tuple[float, bool, float]] = deque()

    def add(self, ok: bool, latency_ms: float) -> None:
        self.items.append((time.monotonic(), ok, latency_ms))
        self._prune()

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.seconds
        while self.items and self.items[0][0] < cutoff:
            self.items.popleft()

    def figures(self) -> dict:
        self._prune()
        n = len(self.items)
        if n == 0:
            return {"requests": 0, "error_rate": 0.0, "p99_ms": 0.0}
        latencies = sorted(x[2] for x in self.items)
        p99 = latencies[min(n - 1, int(0.99 * n))]
        return {"requests": n, "error_rate": sum(not x[1] for x in self.items) / n, "p99_ms": p99}


@serve.deployment(
    name="CanaryRouter", num_replicas=1, ray_actor_options={"num_cpus": 0}, graceful_shutdown_wait_loop_s=0.5
)
@serve.ingress(router_api)
class CanaryRouter:
    """Routes ``/predict`` to production or canary by weight; rolls the canary back on bad figures.

    Args:
        production, canary: handles of the two ModelReplica deployments.
        storage, model: the store root and the model name (a rollback moves the canary alias there).
        serve_settings: a ``ServeSpec`` as a dict, with ``canary`` set.
    """

    def __init__(self, production: DeploymentHandle, canary: DeploymentHandle, storage: str, model: str,
                 serve_settings: dict):
        self.spec = ServeSpec.model_validate(serve_settings)
        self.bounds = self.spec.canary
        self.targets = {"production": production, "canary": canary}
        self.storage, self.model = storage, model
        self.token = load_token(self.spec.auth_token_env)
        self.weight = self.bounds.weight
        self.windows = {k: Window(self.bounds.window_s) for k in self.targets}
        self.rolled_back: dict | None = None
        self.served = {"production": 0, "canary": 0}
        self.routed = metrics.Counter("tlray_canary_routed", tag_keys=("target", "status"),
                                      description="Requests routed, by target and status class.")

    @router_api.post("/predict", openapi_extra=PREDICT_OPENAPI, responses=PREDICT_RESPONSES)
    async def predict(self, request: Request):
        """Classify images: JSON ``{"instances": [...]}``, one PNG/JPEG body, or a multipart batch of files."""
        denied = check_auth(self.token, request.headers.get("authorization"))
        if denied is not None:
            return denied
        try:
            body = await read_body(request, self.spec.max_body_bytes)
        except RequestError as exc:
            return error(exc.status, exc.message)
        target = "canary" if random.random() < self.weight else "production"
        started = time.perf_counter()
        try:
            status, answer = await self.targets[target].infer.remote(body, request.headers.get("content-type"))
        except Exception as exc:  # noqa: BLE001 - a dead replica is the target's failure, answered as 503
            status, answer = 503, {"error": f"the {target} deployment failed: {type(exc).__name__}"}
        latency_ms = (time.perf_counter() - started) * 1000
        self.served[target] += 1
        self.routed.inc(tags={"target": target, "status": f"{status // 100}xx"})
        self.windows[target].add(status < 500, latency_ms)
        if target == "canary" and self.rolled_back is None:
            await self._judge()
        return answer if status == 200 else error(status, answer["error"])

    async def _judge(self) -> None:
        figures = self.windows["canary"].figures()
        if figures["requests"] < self.bounds.min_requests:
            return
        broken = []
        if figures["error_rate"] > self.bounds.max_error_rate:
            broken.append(f"error rate {figures['error_rate']:.3f} > max_error_rate {self.bounds.max_error_rate}")
        if figures["p99_ms"] > self.bounds.max_p99_ms:
            broken.append(f"p99 {figures['p99_ms']:.0f} ms > max_p99_ms {self.bounds.max_p99_ms}")
        if not broken:
            return
        self.weight = 0.0  # first, so no further request reaches the canary
        canary_ref = (await self.targets["canary"].status.remote())["model"]
        self.rolled_back = {"canary": canary_ref, "reason": "; ".join(broken), "window": figures}
        logger.error("canary %s rolled back: %s", canary_ref, self.rolled_back["reason"])
        try:
            self.rolled_back["registry"] = await asyncio.to_thread(self._record, canary_ref)
        except Exception as exc:  # noqa: BLE001 - traffic is already safe; report what failed
            self.rolled_back["registry"] = f"could not update the registry: {type(exc).__name__}: {exc}"

    def _record(self, canary_ref: str) -> str:
        from tl_ray.registry.store import AliasConflict, Registry

        registry = Registry(self.storage)
        alias = self.bounds.alias
        version = int(canary_ref.rsplit(":v", 1)[1])
        note = f"automatic canary rollback: {self.rolled_back['reason']}"
        try:
            if registry.alias_history(self.model, alias):
                registry.rollback(self.model, alias, note=note)
                outcome = f"{self.model}:{alias} moved back to v{registry.aliases(self.model)[alias]}"
            else:
                registry.delete_alias(self.model, alias, expect=version)
                outcome = f"{self.model}:{alias} removed (it had no earlier version)"
        except AliasConflict:
            outcome = f"{self.model}:{alias} had already moved on; left as is"
        registry.record_event(self.model, {"kind": "canary_rollback", **self.rolled_back, "outcome": outcome})
        return outcome

    @router_api.get("/healthz")
    async def healthz(self):
        production = await self.targets["production"].status.remote()
        return {"status": "ok", "model": production["model"], "swap_error": production["swap_error"]}

    @router_api.get("/canary")
    async def canary(self):
        """The split, each side's window figures and the rollback, if one happened."""
        return {"weight": self.weight, "configured_weight": self.bounds.weight, "served": dict(self.served),
                "windows": {k: w.figures() for k, w in self.windows.items()}, "rolled_back": self.rolled_back}
