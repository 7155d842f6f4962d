"""The HTTP contract of the prediction endpoint: pydantic models for OpenAPI, errors and auth.

``/predict`` reads the raw body itself, so FastAPI cannot infer its request schema: ``PREDICT_OPENAPI``
describes every accepted content type instead, and ``PREDICT_RESPONSES`` the answers.
"""

from __future__ import annotations

import hmac
import os

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from tl_ray.errors import ServingError
from tl_ray.serving.parsing import IMAGE_TYPES, RequestError, body_too_large


class PredictRequest(BaseModel):
    """``application/json`` body of ``POST /predict``."""

    instances: list[list] = Field(
        description="Images as nested lists of pixel values 0..255, each [H, W], [H, W, 1] or [H, W, 3]; "
        "any size (resized to the model's).",
        min_length=1,
    )


class Prediction(BaseModel):
    class_: str = Field(alias="class", description="The most probable class name.")
    class_id: int = Field(description="Its index in the model's class_names.")
    probabilities: list[float] = Field(description="One probability per class, in class_names order.")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per instance or image, in request order.")
    model: str = Field(description="The registry version that answered, e.g. fashion-transfer:v3.")


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong with the request, what was received and what is expected.")


class Health(BaseModel):
    status: str = Field(description="ok")
    model: str = Field(description="The version this replica serves.")
    swap_error: dict | None = Field(default=None, description="The last refused model swap, if any.")


_BINARY = {"type": "string", "format": "binary"}
_FILES = {
    "type": "object",
    "properties": {"files": {"type": "array", "items": _BINARY}},
    "description": "Several PNG/JPEG files, one form part each (any field names); a batch.",
}
_CONTENT = {
    "application/json": {"schema": PredictRequest.model_json_schema()},
    **{media: {"schema": _BINARY} for media in IMAGE_TYPES},
    "multipart/form-data": {"schema": _FILES},
}
PREDICT_OPENAPI = {"requestBody": {"required": True, "content": _CONTENT}}
PREDICT_RESPONSES = {
    200: {"model": PredictResponse, "description": "Predictions."},
    400: {"model": ErrorResponse, "description": "Malformed body, wrong shape or dtype, not an image."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token (when auth is on)."},
    413: {"model": ErrorResponse, "description": "Body or instance count over the limit."},
    415: {"model": ErrorResponse, "description": "Unsupported Content-Type."},
    500: {"model": ErrorResponse, "description": "The model failed on a valid request."},
}


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; a 413 ``RequestError`` up front when Content-Length passes ``limit``, else (a
    chunked upload) as soon as more has arrived, without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, body_too_large(declared, limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, body_too_large(f"over {limit}", limit))
        chunks.append(chunk)
    return b"".join(chunks)


def load_token(env_name: str | None) -> str | None:
    """The bearer token from ``env_name`` (None: auth off).

    Raises:
        ServingError: ``env_name`` is set in the spec but not in this process's environment.
    """
    if env_name is None:
        return None
    token = os.environ.get(env_name, "")
    if not token:
        raise ServingError(f"serve.auth_token_env is {env_name!r} but that environment variable is empty or "
                           "unset on this node. Set it where the replicas run (e.g. a Kubernetes secret), "
                           "or remove auth_token_env.")
    return token


def check_auth(token: str | None, header: str | None) -> JSONResponse | None:
    """A 401 answer when ``token`` is required and ``header`` does not carry it; None when allowed."""
    if token is None:
        return None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        what = "no Authorization header" if not header else "a wrong or malformed bearer token"
        return error(401, f"this endpoint needs 'Authorization: Bearer <token>'; received {what}.",
                     headers={"WWW-Authenticate": "Bearer"})
    return None
