"""Object requests on S3 through the one boto3 client, each failure turned into a StorageError that names
the object, the endpoint, the cause and the fix. Listings do not trust the store's ``Delimiter`` support."""

from __future__ import annotations

import logging
from typing import Iterator

from tl_ray.errors import StorageError
from tl_ray.store.s3 import S3_MAX_ATTEMPTS, bucket_key, client, endpoint_name, endpoint_url, is_s3

ABSENT = ("NoSuchKey", "404", "NotFound")
CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
log = logging.getLogger(__name__)
_delimiter_works: dict[str | None, bool] = {}  # False for an endpoint once a delimited listing missed a name
_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                "AuthorizationHeaderMalformed")


def s3_error(uri: str, exc: Exception, action: str) -> StorageError:
    """The StorageError for ``exc`` raised by the client while trying to ``action`` ``uri``."""
    from botocore.exceptions import ClientError, ConnectionError, NoCredentialsError, ReadTimeoutError

    where = f"cannot {action} {uri!r} on {endpoint_name()}"
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{where}: no credentials found. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE, or an instance role).")
    if isinstance(exc, (ConnectionError, ReadTimeoutError)):
        return StorageError(f"{where}: the endpoint does not answer ({type(exc).__name__}) after {S3_MAX_ATTEMPTS} "
                            "attempts. Check AWS_ENDPOINT_URL (scheme, host and port) and that the server is up.")
    if not isinstance(exc, ClientError):
        return StorageError(f"{where}: {type(exc).__name__}: {exc}.")
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    bucket = bucket_key(uri)[0]
    if code in _CREDENTIALS:
        fix = "the credentials were refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)."
    elif code == "NoSuchBucket":
        fix = f"bucket {bucket!r} does not exist. Create it, or fix the bucket in the storage URI."
    elif code in ("AccessDenied", "403", "AllAccessDisabled"):
        fix = (f"access denied. Grant these credentials s3:GetObject, s3:PutObject, s3:DeleteObject and "
               f"s3:ListBucket on {bucket!r} and the prefix, or use a store root they may write.")
    elif code in CONFLICT:
        fix = "the object changed while it was being read. Another writer is replacing it; retry once it is done."
    elif status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
        fix = (f"the store kept failing ({code or status}) through {S3_MAX_ATTEMPTS} attempts with backoff. "
               "It is overloaded or down: retry later, or check the store's health.")
    else:
        fix = f"{code or status}: {error.get('Message') or exc}."
    return StorageError(f"{where}: {fix}")


def _call(uri: str, action: str, method: str, refused: tuple[str, ...] = (), **kwargs):
    """One request on the object at ``uri``: its response, or None when the store answers a ``refused`` code."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = bucket_key(uri)
    try:
        return getattr(client(), method)(Bucket=bucket, Key=key, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        if isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in refused:
            return None
        raise s3_error(uri, exc, action) from None


def put(uri: str, body, **conditions) -> dict | None:
    """PUTs ``body`` (bytes or a file) at ``uri``; None when a condition (``IfNoneMatch``, ``IfMatch``) refused it."""
    return _call(uri, "write", "put_object", CONFLICT if conditions else (), Body=body, **conditions)


def get(uri: str, if_match: str | None = None, refused: tuple[str, ...] = ABSENT) -> tuple[bytes, str] | None:
    """``(bytes, ETag)`` of the object at ``uri``; None when the store answers a ``refused`` code (absent).
    StorageError when the store cannot be read, or the object no longer has ETag ``if_match``."""
    from botocore.exceptions import BotoCoreError

    for attempt in range(S3_MAX_ATTEMPTS):
        obj = _call(uri, "read", "get_object", refused, **({"IfMatch": if_match} if if_match else {}))
        try:
            return None if obj is None else (obj["Body"].read(), obj["ETag"])
        except BotoCoreError as exc:  # the body broke off (a store replacing the object under the read)
            if attempt == S3_MAX_ATTEMPTS - 1:
                raise s3_error(uri, exc, "read") from None


def head(uri: str) -> dict | None:
    """The object's metadata (``ContentLength``, ``ETag``, ...); None when absent."""
    return _call(uri, "reach", "head_object", ABSENT)


def delete(uri: str, **conditions) -> bool:
    """Deletes the object; False when a condition (``IfMatch``) refused it. Missing is fine."""
    return _call(uri, "delete", "delete_object", CONFLICT if conditions else (), **conditions) is not None


def _pages(uri: str, **kwargs) -> Iterator[dict]:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = bucket_key(uri)
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    try:
        yield from client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(uri, exc, "list") from None


def list_objects(uri: str) -> list[tuple[str, str, int]]:
    """``(path below uri, ETag, size)`` of every object under ``uri``, sorted; folder markers left out."""
    cut = _cut(uri)
    out = [(o["Key"][cut:], o.get("ETag", ""), int(o.get("Size", 0)))
           for page in _pages(uri) for o in page.get("Contents", [])]
    return sorted(entry for entry in out if entry[0] and not entry[0].endswith("/"))


def list_names(uri: str) -> list[str]:
    """Names of the files and folders directly under ``uri``, sorted. A name a delimited listing missed (seen
    in a flat page) turns this process to flat listings."""
    endpoint, cut = endpoint_url(), _cut(uri)
    if _delimiter_works.get(endpoint) is False:
        return _first_names(uri, (o for page in _pages(uri) for o in page.get("Contents", [])))
    names = set()
    for page in _pages(uri, Delimiter="/"):
        names.update(p["Prefix"][cut:].split("/")[0] for p in page.get("CommonPrefixes", []))
        names.update(o["Key"][cut:].split("/")[0] for o in page.get("Contents", []))
    names.discard("")
    # One page of the flat listing checks every delimited answer: a store may collapse some prefixes right
    # and leave folders out of others, so a listing that once looked right proves nothing for the next.
    flat = next(_pages(uri, PaginationConfig={"MaxItems": 1000}), {}).get("Contents", [])
    if not set(_first_names(uri, flat)) <= names:
        _delimiter_works[endpoint] = False
        log.warning("the store at %s left folders out of a delimited listing of %s: listing without a "
                    "delimiter from now on", endpoint_name(), uri)
        return list_names(uri)
    return sorted(names)


def _cut(uri: str) -> int:
    key = bucket_key(uri)[1].strip("/")
    return len(key) + 1 if key else 0


def _first_names(uri: str, contents) -> list[str]:
    cut = _cut(uri)
    return sorted({o["Key"][cut:].split("/")[0] for o in contents} - {""})


def folder_exists(uri: str) -> bool:
    """True when at least one object lies under ``uri`` + '/'."""
    return any(page.get("Contents") for page in _pages(uri, MaxKeys=1, PaginationConfig={"MaxItems": 1}))


def ensure_bucket(uri: str) -> None:
    """Creates the bucket of an ``s3://`` URI if it does not exist (tests and first runs)."""
    if not is_s3(uri):
        return
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, s3c = bucket_key(uri)[0], client()
    try:
        s3c.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise s3_error(uri, exc, "reach") from None
        try:
            s3c.create_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            raise s3_error(uri, exc, "create the bucket of") from None
    except BotoCoreError as exc:
        raise s3_error(uri, exc, "reach") from None
