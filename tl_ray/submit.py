"""Submitting ``python -m tl_ray.cli COMMAND SPEC`` to a Ray cluster through Ray's Job Submission SDK.

The working directory holds the spec and the upstream specs it names. Credentials travel by name in the
job's runtime environment; only their names are ever printed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import tl_ray
from tl_ray import store
from tl_ray.errors import ClusterError, ConfigError, first_line
from tl_ray.spec import load_spec
from tl_ray.tune.cluster import WORKER_ENV

COMMANDS = ("run", "tune", "train", "serve")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_S3_FORCE_PATH_STYLE",
               "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION", "TLRAY_STORAGE_LOCKING")


def _auth_headers() -> dict[str, str]:
    """Ray's auth token, from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str):
    """A JobSubmissionClient for ``address``; ClusterError when the job API does not answer."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=_auth_headers() or None)
    except Exception as exc:  # the SDK raises ConnectionError, RuntimeError or ValueError
        raise ClusterError(
            f"cannot reach the Ray job API at {address!r}: {first_line(exc).rstrip('.')}. Check the address (the "
            "dashboard port, 8265 by default, e.g. http://HEAD:8265) and that the cluster is up (`ray status`)."
        ) from None


def _stage_specs(spec_path: Path, dest: Path) -> str:
    """Copies the spec and every upstream spec it names into ``dest``; returns the spec's name there."""
    root = spec_path.resolve().parent
    seen, todo = set(), [spec_path.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        spec = load_spec(path)  # validates before anything leaves this machine
        target = dest / (path.relative_to(root) if path.is_relative_to(root) else path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        if spec.run.upstream:
            todo.append((path.parent / spec.run.upstream).resolve())
    return spec_path.name


def runtime_env(work_dir: Path, package: str, pip_requirement: str | None, env_names: list[str]) -> dict:
    """The job's runtime environment (values of ``env_names`` come from this process's environment)."""
    env: dict = {"working_dir": str(work_dir), "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", **WORKER_ENV}}
    if package == "source":
        env["py_modules"] = [str(Path(tl_ray.__file__).parent)]
    elif package == "pip":
        env["pip"] = [pip_requirement or f"tl-ray=={tl_ray.__version__}"]
    else:
        raise ConfigError(f"--package must be 'source' or 'pip'. Received: {package!r}.")
    env["env_vars"].update({name: os.environ[name] for name in env_names if name in os.environ})
    return env


def submit(spec_path: str | os.PathLike, address: str, command: str = "run",
           overrides: list[str] | None = None, package: str = "source", pip_requirement: str | None = None,
           env_names: list[str] | None = None, out: Callable[[str], None] = print) -> str:
    """Submits ``tl-ray COMMAND SPEC`` as a Ray Job; returns the job ID.

    Args:
        spec_path: the experiment spec (validated locally first).
        address: the cluster's job API, e.g. ``http://HEAD:8265``.
        overrides: ``--set`` values passed on. Defaults to none.
        package: ``source`` ships this tl-ray as source; ``pip`` installs ``pip_requirement``.
        pip_requirement: e.g. ``tl-ray==0.1.0``. Defaults to this version.
        env_names: environment variables forwarded by name (storage credentials).
            Defaults to the standard AWS variables that are set here.

    Raises:
        ConfigError: bad command, package or spec.
        ClusterError: the cluster cannot be reached or rejects the job.
    """
    if command not in COMMANDS:
        raise ConfigError(f"submit command must be one of {list(COMMANDS)}. Received: {command!r}.")
    spec_path = Path(spec_path)
    spec = load_spec(spec_path, overrides=overrides or None)
    if not store.is_s3(spec.storage) and not _is_local(address):
        out(f"warning: storage {spec.storage!r} is a local path: nodes of a remote cluster do not share it; "
            "pass --set storage=s3://bucket/prefix")
    names = list(env_names) if env_names is not None else [n for n in DEFAULT_ENV if n in os.environ]
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="tlray-job-") as tmp:
        work = Path(tmp)
        spec_name = _stage_specs(spec_path, work)
        entry = ["python", "-m", "tl_ray.cli", command, spec_name, *(w for o in overrides or [] for w in ("--set", o))]
        env = runtime_env(work, package, pip_requirement, names)
        try:
            job_id = jobs.submit_job(entrypoint=shlex.join(entry), runtime_env=env,
                                     metadata={"tl-ray": tl_ray.__version__, "spec": spec.name})
        except Exception as exc:
            raise ClusterError(f"the cluster at {address} rejected the job: {first_line(exc).rstrip('.')}") from None
    out(f"submitted {job_id}: {shlex.join(entry)}")
    out(f"  tl-ray {'source' if package == 'source' else env['pip'][0]}; env forwarded by name: {names or 'none'}")
    out(f"  follow: tl-ray jobs logs {job_id} --address {address} --follow")
    return job_id


def _is_local(address: str) -> bool:
    return any(h in address for h in ("127.0.0.1", "localhost", "[::1]"))


def wait(address: str, job_id: str, timeout_s: float = 24 * 3600, poll_s: float = 1.0) -> str:
    """Polls until the job ends; returns its final status, raising ClusterError unless it SUCCEEDED."""
    jobs = client(address)
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id)).split(".")[-1]
        if status in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"job {job_id} still {status} after {timeout_s:.0f}s.")
        time.sleep(poll_s)
    if status != "SUCCEEDED":
        raise ClusterError(f"job {job_id} {status}: {jobs.get_job_info(job_id).message or 'no message'}. "
                           f"Logs: tl-ray jobs logs {job_id} --address {address}")
    return status


def follow(address: str, job_id: str, out: Callable[[str], None] = print) -> str:
    """Streams the job's logs until it ends; returns the final status (ClusterError unless SUCCEEDED)."""
    import asyncio

    jobs = client(address)

    async def tail():
        async for chunk in jobs.tail_job_logs(job_id):
            out(chunk.rstrip("\n"))

    asyncio.run(tail())
    return wait(address, job_id)


def list_jobs(address: str) -> list[dict]:
    rows = [{"id": job.submission_id or job.job_id, "status": str(job.status).split(".")[-1],
             "entrypoint": job.entrypoint, "start": job.start_time} for job in client(address).list_jobs()]
    return sorted(rows, key=lambda r: r["start"] or 0)


def _job_call(address: str, job_id: str, what: str, call):
    """Runs one SDK call on a job, turning SDK errors into ClusterError naming the job."""
    jobs = client(address)
    try:
        return call(jobs)
    except Exception as exc:
        raise ClusterError(f"{what} job {job_id!r} at {address}: {first_line(exc).rstrip('.')}") from None


def logs(address: str, job_id: str) -> str:
    return _job_call(address, job_id, "no logs for", lambda jobs: jobs.get_job_logs(job_id))


def stop(address: str, job_id: str) -> bool:
    return _job_call(address, job_id, "cannot stop", lambda jobs: jobs.stop_job(job_id))
