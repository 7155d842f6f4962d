"""The spec's ``promote`` and ``serve`` sections: registry promotion, the Serve endpoint, autoscaling, canary."""

from __future__ import annotations

from pydantic import Field, model_validator

from tl_ray.spec._base import PositiveInt, _Section


class PromoteSpec(_Section):
    """Promotion of the sweep's best model to the registry."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", description="Registry model name.")
    alias: str = Field(default="production", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Alias to move.")
    min_delta: float = Field(
        default=0.0, ge=0.0, description="How much the challenger must beat the current alias holder by.")
    holdout: str | None = Field(default=None, description=(
        "Dataset both models are scored on; not the one the sweep selected on. Defaults to data.test, then "
        "data.validation (with a warning)."))
    max_latency_ratio: float | None = Field(default=None, ge=1.0, description=(
        "Refuse a challenger whose p50 latency per batch "
        "exceeds the champion's times this. None: no check."))
    latency_batch_size: PositiveInt = Field(default=32, description="Batch size of the gate's latency probe.")
    latency_repeats: int = Field(default=20, ge=3, le=1000, description="Timed batches per model in the latency probe.")


class AutoscalingSpec(_Section):
    """Ray Serve autoscaling of the prediction deployment."""

    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas.")
    max_replicas: PositiveInt = Field(default=2, description="Most replicas.")
    target_ongoing_requests: float = Field(default=8, gt=0, description="Requests in flight per replica.")
    upscale_delay_s: float = Field(
        default=10.0, ge=0.0, le=3600.0,
        description="How long load must stay high before replicas are added.")
    downscale_delay_s: float = Field(
        default=120.0, ge=0.0, le=3600.0,
        description="How long load must stay low before replicas are removed.")
    look_back_period_s: float = Field(
        default=15.0, gt=10.0, le=600.0,
        description="Window the ongoing-request count is averaged over; above Serve's 10 s metrics interval.")

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingSpec":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


class CanarySpec(_Section):
    """A traffic split between the production alias and a canary alias, rolled back on bad figures."""

    alias: str = Field(default="canary", pattern=r"^[a-z][a-z0-9_-]{0,31}$", description="Alias of the canary version.")
    weight: float = Field(default=0.1, gt=0.0, lt=1.0, description="Fraction of requests routed to the canary.")
    max_error_rate: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Most canary 5xx answers per request over the window.")
    max_p99_ms: float = Field(default=1000.0, gt=0.0, description="Highest canary p99 latency over the window.")
    window_s: float = Field(default=60.0, gt=0.0, le=3600.0, description="Sliding window the bounds are checked over.")
    min_requests: PositiveInt = Field(
        default=20, description="Canary requests the window must hold before the bounds are judged.")


class ServeSpec(_Section):
    """The Ray Serve prediction endpoint."""

    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Autoscaling.")
    max_batch_size: PositiveInt = Field(default=32, description="Largest batch @serve.batch forms.")
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=5.0, description="Wait to fill a batch.")
    max_instances: PositiveInt = Field(default=256, description="Most instances one request may carry.")
    max_body_bytes: PositiveInt = Field(default=16 * 2**20, description="Largest request body accepted.")
    host: str = Field(default="127.0.0.1", description="HTTP host of the Serve proxy.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the Serve proxy.")
    route_prefix: str = Field(default="/", pattern=r"^/", description="Route prefix of the application.")
    cpus_per_replica: float = Field(default=1.0, gt=0.0, description="CPUs reserved per replica.")
    auth_token_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding a bearer token every request must carry. None: no auth.")
    canary: CanarySpec | None = Field(default=None, description="Canary traffic split. None: production only.")
    access_log: bool = Field(default=False, description="Ray Serve's log line per request (replicas' logs).")
    watch_interval_s: float = Field(
        default=5.0, gt=0.0, le=3600.0,
        description="`tl-ray serve --watch-alias`: seconds between alias checks.")
