"""S3 connections: one boto3 client for object requests, pyarrow's ``S3FileSystem`` for streamed reads. On a
custom endpoint both checksum uploads only ``when_required``: pyarrow's C++ SDK otherwise sends an
``aws-chunked`` body, which a store that does not decode it keeps inside the object.
"""

from __future__ import annotations

import functools
import logging
import os

import pyarrow.fs as pafs

from tl_ray.errors import StorageError

# Bounded retries: an unreachable bucket fails in seconds, not minutes.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 20.0
S3_MAX_ATTEMPTS = 4  # the first try and three retries, with the SDKs' exponential backoff and jitter
CHECKSUM_CHOICES = ("when_supported", "when_required")
_CHECKSUM_VARIABLES = {
    "request_checksum_calculation": "AWS_REQUEST_CHECKSUM_CALCULATION",
    "response_checksum_validation": "AWS_RESPONSE_CHECKSUM_VALIDATION",
}
log = logging.getLogger(__name__)
_exported: dict[str, str] = {}  # the values export_checksum_settings put in the environment


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def bucket_key(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URI."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def endpoint_url() -> str | None:
    """The S3 endpoint the environment names; None for AWS's own."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def endpoint_name() -> str:
    """The endpoint as errors name it."""
    return endpoint_url() or "AWS S3"


def checksum_settings() -> dict[str, str]:
    """``request_checksum_calculation`` and ``response_checksum_validation`` in force: each from its AWS
    variable when set (StorageError unless a ``CHECKSUM_CHOICES`` value), else ``when_required`` on a custom
    endpoint and ``when_supported`` on AWS's own."""
    default = "when_required" if endpoint_url() else "when_supported"
    out = {}
    for setting, variable in _CHECKSUM_VARIABLES.items():
        value = os.environ.get(variable, "")
        value = "" if value == _exported.get(variable) else value.strip().lower()  # ours, not the user's
        value = value or default
        if value not in CHECKSUM_CHOICES:
            raise StorageError(f"{variable} must be one of {list(CHECKSUM_CHOICES)}. Received: {value!r}.")
        out[setting] = value
    return out


def export_checksum_settings() -> None:
    """Puts ``checksum_settings`` in the environment (unless the user set them), where pyarrow's C++ SDK
    reads them (pyarrow has no option). Also run on import, for Ray workers that unpickle a filesystem."""
    if not endpoint_url():
        return
    for setting, value in checksum_settings().items():
        variable = _CHECKSUM_VARIABLES[setting]
        if os.environ.get(variable) in (None, "", _exported.get(variable)):
            os.environ[variable] = _exported[variable] = value


def _path_style() -> bool:
    return bool(endpoint_url()) and os.environ.get("AWS_S3_FORCE_PATH_STYLE", "1") != "0"


@functools.lru_cache(maxsize=8)
def arrow_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """The pyarrow filesystem of ``endpoint``, made once per endpoint and region, with ``checksum_settings``."""
    export_checksum_settings()
    kwargs = dict(region=region, connect_timeout=S3_CONNECT_TIMEOUT_S, request_timeout=S3_REQUEST_TIMEOUT_S,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS))
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if _path_style():
            kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def client():
    """The boto3 S3 client of the current endpoint and settings, made once per process."""
    settings = checksum_settings()
    credentials = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"))
    return _client(endpoint_url(), os.getpid(), settings["request_checksum_calculation"],
                   settings["response_checksum_validation"], _path_style(), hash(credentials))


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, pid: int, request_checksums: str, response_checksums: str, path_style: bool,
            credentials: int):
    # Keyed by pid: a forked process must not share its parent's pooled connections; and by the credentials
    # in the environment, read when the client is made.
    import boto3
    from botocore.config import Config

    config = Config(
        request_checksum_calculation=request_checksums, response_checksum_validation=response_checksums,
        connect_timeout=S3_CONNECT_TIMEOUT_S, read_timeout=S3_REQUEST_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS},
        s3={"addressing_style": "path"} if path_style else None,
    )
    log.info("S3 client for %s: request_checksum_calculation=%s, response_checksum_validation=%s, path-style %s",
             endpoint or "AWS S3", request_checksums, response_checksums, path_style)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


try:
    export_checksum_settings()
except StorageError:
    pass  # a bad value is reported where the store is used
