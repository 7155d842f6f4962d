"""The Ray Serve application: build it, run it, and swap the model it serves without downtime.

Each deployment's version is in its ``user_config``, so when the alias moves the args stay the same and
Serve swaps versions by calling ``reconfigure`` on the running replicas.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import ray
from ray import serve
from ray.serve.context import _get_global_client
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

from tl_ray import store
from tl_ray.errors import ConfigError, RegistryError, ServingError
from tl_ray.registry.store import Registry
from tl_ray.serving.predictor import Predictor
from tl_ray.serving.router import CanaryRouter
from tl_ray.serving.server import ModelIngress, ModelReplica
from tl_ray.spec import ServeSpec, load_spec

logger = logging.getLogger(__name__)
IMPORT_PATH = "tl_ray.serving.app:build_app"
PRODUCTION, CANARY = "ModelReplica", "ModelReplicaCanary"

__all__ = ["ModelReplica", "ModelIngress", "CanaryRouter", "bind", "build_app", "run", "update", "follow"]


def _absolute(storage: str) -> str:
    """Replicas may run in another folder, or on another node."""
    return storage if store.is_absolute(storage) else os.path.abspath(storage)


def _replicas(serve_spec: ServeSpec, name: str, ref: str, ingress: bool):
    """The deployment ``name`` serving ``ref``; a ModelIngress with ``ingress`` (Serve allows one FastAPI
    ingress per application, so behind the canary router the replicas have no HTTP routes)."""
    auto = serve_spec.autoscaling
    return (ModelIngress if ingress else serve.deployment(ModelReplica)).options(
        name=name, max_constructor_retry_count=3,
        # A stopping replica checks for requests still in flight this often (Serve's default: 2 s).
        graceful_shutdown_wait_loop_s=0.5,
        logging_config={"enable_access_log": serve_spec.access_log},
        # AutoscalingSpec's fields are Serve's autoscaling_config keys.
        autoscaling_config={**auto.model_dump(), "initial_replicas": max(1, auto.min_replicas)},
        # Room for one batch being predicted while the next one fills.
        max_ongoing_requests=2 * serve_spec.max_batch_size,
        ray_actor_options={"num_cpus": serve_spec.cpus_per_replica}, user_config={"model": ref},
    )


def resolve_refs(storage: str, ref: str, serve_spec: ServeSpec) -> dict[str, str]:
    """``{deployment name: "name:vN"}`` for production and, with ``serve.canary``, the canary.

    Raises:
        RegistryError: ``ref`` (or the canary alias) names no version.
    """
    registry = Registry(storage)
    name, version = registry.resolve(ref)
    refs = {PRODUCTION: f"{name}:v{version}"}
    if serve_spec.canary is not None:
        alias = serve_spec.canary.alias
        try:
            _, canary = registry.resolve(f"{name}:{alias}")
        except RegistryError:
            raise RegistryError(f"serve.canary is set but {name}:{alias} does not exist. Point it at a "
                                f"version first: tl-ray models promote {name}:vN --alias {alias}") from None
        refs[CANARY] = f"{name}:v{canary}"
    return refs


def bind(storage: str, ref: str, serve_spec: ServeSpec) -> serve.Application:
    """The application for ``ref``: a ModelIngress, or with ``serve.canary`` a CanaryRouter over two
    ModelReplica deployments. The versions resolved here are only defaults: ``run`` and ``update`` deploy
    the versions they resolve.

    Raises:
        RegistryError: ``ref`` names no model, alias or version in ``storage``.
    """
    storage = _absolute(storage)
    refs = resolve_refs(storage, ref, serve_spec)
    args = (storage, refs[PRODUCTION].split(":")[0], serve_spec.model_dump(mode="json"))
    if serve_spec.canary is None:
        return _replicas(serve_spec, PRODUCTION, refs[PRODUCTION], ingress=True).bind(*args)
    production = _replicas(serve_spec, PRODUCTION, refs[PRODUCTION], ingress=False).bind(*args)
    canary = _replicas(serve_spec, CANARY, refs[CANARY], ingress=False).bind(*args)
    return CanaryRouter.bind(production, canary, *args)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve config files (``import_path: tl_ray.serving.app:build_app``).

    Args:
        args: ``spec`` (a spec YAML whose ``storage``, ``serve`` and ``promote`` give the defaults),
            ``storage`` and ``model`` (required without ``spec``), and any ``ServeSpec`` field to
            override, e.g. ``max_batch_size: 16`` or ``autoscaling: {max_replicas: 4}``.

    Raises:
        ConfigError: an unknown key, a missing storage or model, or an invalid setting.
    """
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
        raise ConfigError("serve application args need 'storage' and 'model' (e.g. "
                          "fashion-transfer:production), or a 'spec' whose promote section names the model. "
                          f"Received keys: {given}.")
    for section in ("autoscaling", "canary"):
        if isinstance(args.get(section), dict) and isinstance(settings.get(section), dict):
            args[section] = {**settings[section], **args[section]}
    try:
        serve_spec = ServeSpec.model_validate({**settings, **args})
    except ValueError as exc:
        raise ConfigError(f"serve application args are invalid: {exc}") from None
    return bind(storage, model, serve_spec)


def _app_configs() -> dict:
    """The controller's config of each declaratively deployed application, by name."""
    return ray.get(_get_global_client()._controller.get_app_configs.remote())


def _deploy(storage: str, ref: str, serve_spec: ServeSpec, name: str, refs: dict[str, str]) -> None:
    """Deploys the application ``name`` serving ``refs`` declaratively, beside the other live applications."""
    app = {
        "name": name,
        "route_prefix": serve_spec.route_prefix,
        "import_path": IMPORT_PATH,
        "args": {"storage": storage, "model": ref, **serve_spec.model_dump(mode="json", exclude={"host", "port"})},
        "deployments": [{"name": dep, "user_config": {"model": r}} for dep, r in refs.items()],
    }
    # The controller's config checkpoint can still hold deleted applications (serve.delete), so only
    # those Serve reports as present are kept.
    live = {n for n, a in serve.status().applications.items() if a.status != "DELETING"}
    apps = [c.model_dump(exclude_unset=True) for n, c in _app_configs().items() if n != name and n in live]
    http_options = {"host": serve_spec.host, "port": serve_spec.port}
    config = ServeDeploySchema.model_validate({"http_options": http_options, "applications": [*apps, app]})
    _get_global_client().deploy_apps(config)


def _wait_running(name: str, timeout_s: float) -> None:
    client, deadline = _get_global_client(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_serve_status(name).app_status
        if status.status == ApplicationStatus.RUNNING:
            return
        if status.status == ApplicationStatus.DEPLOY_FAILED:
            raise ServingError(f"Serve application {name!r} failed to deploy: {status.message}")
        time.sleep(0.2)
    raise ServingError(f"Serve application {name!r} is not running after {timeout_s:.0f}s; see `serve status`.")


def run(storage: str, ref: str, serve_spec: ServeSpec, blocking: bool = False, name: str = "tl-ray") -> str:
    """Starts Serve on ``serve_spec.host:port`` and deploys ``ref``; returns the application's base URL.

    Args:
        ref: ``name``, ``name:alias`` or ``name:vN``; resolved to a version here (``update`` re-resolves).
        blocking: keep serving until Ctrl-C instead of returning. Defaults to False.

    Raises:
        RegistryError: ``ref`` names no model, alias or version in ``storage``.
        ServingError: the replicas could not start (Serve's message says why).
    """
    storage = _absolute(storage)
    refs = resolve_refs(storage, ref, serve_spec)
    serve.start(http_options={"host": serve_spec.host, "port": serve_spec.port})
    _deploy(storage, ref, serve_spec, name, refs)
    _wait_running(name, timeout_s=180)
    host = "127.0.0.1" if serve_spec.host in ("0.0.0.0", "::", "") else serve_spec.host
    url = f"http://{host}:{serve_spec.port}{serve_spec.route_prefix.rstrip('/')}"
    logger.info("serving %s at %s", refs, url)
    if blocking:
        while True:
            time.sleep(3600)
    return url


def update(
    storage: str, ref: str, serve_spec: ServeSpec, name: str = "tl-ray", preflight: bool = True,
    timeout_s: float = 120,
) -> dict[str, str]:
    """Re-resolves ``ref`` (and the canary alias) and swaps the running application to it, without downtime;
    returns ``{deployment: "name:vN"}`` now served.

    Args:
        storage, ref, serve_spec, name: as given to ``run``.
        preflight: load and check the new version in this process first, so a version that cannot
            load never reaches the replicas. Defaults to True.
        timeout_s: how long the replicas may take to swap, in seconds.

    Raises:
        ServingError: the new version failed to load (in the preflight or on a replica); the application
            keeps serving the old one, and the refusal is recorded as a registry event.
    """
    storage = _absolute(storage)
    refs = resolve_refs(storage, ref, serve_spec)
    served = served_refs(name)
    if refs == served:
        return refs
    model = refs[PRODUCTION].split(":")[0]
    changed = {dep: r for dep, r in refs.items() if served.get(dep) != r}

    def refuse(dep: str, why: str) -> ServingError:
        event = {"kind": "swap_refused", "deployment": dep, "model": changed[dep], "serving": served.get(dep)}
        Registry(storage).record_event(model, {**event, "error": why})
        return ServingError(f"refused to swap {dep} from {served.get(dep)} to {changed[dep]}: {why}. "
                            f"{served.get(dep)} keeps serving.")

    if preflight:
        for dep, r in changed.items():
            try:
                Predictor.load(storage, r)  # sha256 check, safe_mode load, shape checks
            except Exception as exc:  # noqa: BLE001 - whatever it is, the replicas must not get it
                raise refuse(dep, f"{type(exc).__name__}: {exc}") from None
    _deploy(storage, ref, serve_spec, name, refs)
    failure = _wait_swapped(name, changed, timeout_s)
    if failure is not None:
        dep, why = failure
        # Back to what was served, so replicas started later (autoscaling) do not try the broken version.
        _deploy(storage, ref, serve_spec, name, {**refs, **served})
        raise refuse(dep, why)
    return refs


def served_refs(name: str) -> dict[str, str]:
    """``{deployment: "name:vN"}`` from the running application's user_configs."""
    config = _app_configs().get(name)
    if config is None:
        raise ServingError(f"no Serve application named {name!r} is running; start it with run() first.")
    return {d.name: d.user_config["model"] for d in config.deployments if d.user_config}


def _wait_swapped(name: str, changed: dict[str, str], timeout_s: float) -> tuple[str, str] | None:
    """Polls each changed deployment's replicas until they all serve the new version (None) or one refuses."""
    deadline = time.monotonic() + timeout_s
    for dep, target in changed.items():
        handle = serve.get_deployment_handle(dep, app_name=name)
        confirmed: set[str] = set()
        while True:
            if time.monotonic() > deadline:
                return dep, f"replicas did not report {target} within {timeout_s:.0f}s"
            app = serve.status().applications.get(name)
            deployment = app.deployments.get(dep) if app is not None else None
            replicas = deployment.replica_states.get("RUNNING", 0) if deployment is not None else 0
            status = handle.status.remote().result(timeout_s=30)
            error = status["swap_error"]
            if error and error["model"] == target:
                return dep, f"replica {status['replica']} could not load it: {error['error']}"
            if status["model"] == target:
                confirmed.add(status["replica"])
            if replicas and len(confirmed) >= replicas:
                break
            time.sleep(0.05)
    return None


def follow(
    storage: str, ref: str, serve_spec: ServeSpec, name: str = "tl-ray", out: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> None:
    """Swaps the application whenever ``ref``'s alias (or the canary's) moves, until ``stop`` is set. A
    refused swap is printed once and the old version keeps serving until the alias moves again."""
    stop = stop or threading.Event()
    refused: dict[str, str] | None = None
    while not stop.is_set():
        swapping = None  # only a failed swap is a refusal, not a failed read of the alias or the app
        try:
            wanted = resolve_refs(storage, ref, serve_spec)
            before = served_refs(name)
            if wanted != before and wanted != refused:
                swapping = wanted
                now = update(storage, ref, serve_spec, name=name)
                out(f"[serve] swapped to {now} (was {before})")
        except (ServingError, RegistryError) as exc:
            refused = swapping if swapping and isinstance(exc, ServingError) else refused
            out(f"[serve] {exc}")
        stop.wait(serve_spec.watch_interval_s)
