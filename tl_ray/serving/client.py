"""A small HTTP client for the tl-ray prediction endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import requests

from tl_ray.errors import ServingError

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def predict_files(url: str, paths: list[str], timeout: float = 30, token: str | None = None,
                  multipart: bool = False) -> list[dict]:
    """Posts image files to ``url/predict``; returns one prediction per file.

    Args:
        url: the application's base URL, e.g. ``http://127.0.0.1:8000``.
        paths: PNG or JPEG files (other extensions are sent as application/octet-stream).
        timeout: seconds to wait for each answer.
        token: a bearer token, for an endpoint with ``serve.auth_token_env``.
        multipart: send all files in one multipart/form-data request instead of one request each.

    Raises:
        ServingError: a file cannot be read, the server cannot be reached, or it refuses the request.
    """
    files = []
    for path in paths:
        try:
            body = Path(path).read_bytes()
        except OSError as exc:
            raise ServingError(f"cannot read image {str(path)!r}: {exc.strerror}.") from None
        content_type = CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")
        files.append((Path(path).name, body, content_type))
    if multipart:
        what = f"{len(paths)} files"
        return _post(url, None, None, timeout, what=what, token=token, files=[("files", f) for f in files])
    out = []
    for (_, body, content_type), path in zip(files, paths):
        out.extend(_post(url, body, content_type, timeout, what=str(path), token=token))
    return out


def predict_instances(url: str, array, timeout: float = 30, token: str | None = None) -> list[dict]:
    """Posts ``{"instances": array}`` (``[N, H, W]`` or ``[N, H, W, C]`` pixels 0..255) to ``url/predict``.

    Raises:
        ServingError: the server cannot be reached or refuses the request.
    """
    body = json.dumps({"instances": np.asarray(array).tolist()}).encode()
    return _post(url, body, "application/json", timeout, what=f"{len(array)} instances", token=token)


def _post(url: str, body: bytes | None, content_type: str | None, timeout: float, what: str,
          token: str | None = None, files=None) -> list[dict]:
    endpoint = url.rstrip("/") + "/predict"
    headers = {"Content-Type": content_type} if content_type else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = requests.post(endpoint, data=body, files=files, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise ServingError(f"cannot reach {endpoint} ({type(exc).__name__}); "
                           "check the URL and that the Serve application is running.") from None
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    if resp.status_code != 200:
        message = payload.get("error") if isinstance(payload, dict) else None
        raise ServingError(f"{endpoint} refused {what} with HTTP {resp.status_code}: {message or resp.text[:200]!s}")
    if not isinstance(payload, dict) or "predictions" not in payload:
        raise ServingError(f"{endpoint} answered {what} without 'predictions': {resp.text[:200]!r}")
    return payload["predictions"]
