"""S3 connections: pyarrow's ``S3FileSystem`` for reads and plain writes, one boto3 client for the rest.

Both honour the AWS credential chain and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``),
so the same code talks to S3, MinIO or a test server.
"""

from __future__ import annotations

import functools
import os

import pyarrow.fs as pafs

# Bounded retries: an unreachable bucket fails in seconds, not minutes.
S3_CONNECT_TIMEOUT_S = 3.0
S3_REQUEST_TIMEOUT_S = 20.0
S3_MAX_ATTEMPTS = 4


def is_s3(uri: str) -> bool:
    """True for an ``s3://`` URI."""
    return uri.startswith("s3://")


def bucket_key(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URI."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def endpoint_url() -> str | None:
    """The S3 endpoint the environment names; None for AWS's own."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def arrow_filesystem(endpoint: str | None, region: str) -> pafs.S3FileSystem:
    """The pyarrow filesystem of ``endpoint``, made once per endpoint and region."""
    kwargs = dict(region=region, connect_timeout=S3_CONNECT_TIMEOUT_S, request_timeout=S3_REQUEST_TIMEOUT_S,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_MAX_ATTEMPTS))
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        if os.environ.get("AWS_S3_FORCE_PATH_STYLE", "1") != "0":
            kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


def client():
    """The boto3 S3 client of the current endpoint, made once per process: every boto3 call goes through it."""
    return _client(endpoint_url(), os.getpid())


@functools.lru_cache(maxsize=8)
def _client(endpoint: str | None, pid: int):
    # Keyed by pid: a forked process must not share its parent's pooled connections.
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint)
