"""Request bodies into pixel batches: JSON ``{"instances": [...]}``, one PNG/JPEG image, or a multipart batch.

A malformed body, however hostile, raises one ``RequestError`` naming the place (``instances[2][0][1]``),
the rule, what was received and the fix. Values are walked in Python only once numpy has refused an instance.
"""

from __future__ import annotations

import json
import re
import reprlib
import sys

import numpy as np

from tl_ray.errors import DataError, ServingError, first_line

JSON_TYPES = ("application/json",)
IMAGE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
MULTIPART_TYPES = ("multipart/form-data",)
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
_JSON_SHAPE = '{"instances": [image, ...]} with each image a nested list of pixel values 0..255'
_IMAGE_LEVELS = "an image is [H][W] or [H][W][C]: rows of pixels, each pixel a number or [R, G, B]"
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 30, 30
_short = _SHORT.repr  # a bounded repr, however large or deep the value
_EXPECTED = {"application/json": _JSON_SHAPE, "multipart/form-data": "one PNG or JPEG file per form part"}


class RequestError(ServingError):
    """A request the server refuses, with the 4xx HTTP status to answer it with (400, 413 or 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status

    def __reduce__(self):
        return (type(self), (self.status, self.message))


def parse_body(
    body: bytes, content_type: str | None, image_size: tuple[int, int], max_instances: int,
    max_body_bytes: int | None = None,
) -> np.ndarray:
    """Turns a request body into a float32 batch ``[N, H, W, 3]`` of pixels 0..255, resized to ``image_size``.

    Args:
        content_type: the Content-Type header (parameters such as charset are ignored).
        image_size: the model's ``(height, width)``.
        max_instances: the most instances (or multipart files) one request may carry.
        max_body_bytes: the largest body accepted. Defaults to no limit.

    Raises:
        RequestError: 400 malformed body, 413 too large, 415 unsupported content type.
    """
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise RequestError(413, body_too_large(len(body), max_body_bytes))
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in JSON_TYPES + IMAGE_TYPES + MULTIPART_TYPES:
        hint = ""
        if media == "application/x-www-form-urlencoded":
            hint = " (curl -d sends this type unless told otherwise: add -H 'Content-Type: application/json')"
        raise RequestError(415, f"unsupported Content-Type {content_type!r}{hint}. Send {JSON_TYPES[0]} "
                           f'{{"instances": [...]}}, the bytes of one image as one of {list(IMAGE_TYPES)}, '
                           "or several images as multipart/form-data.")
    if not body:
        expected = _EXPECTED.get(media, "the bytes of one PNG or JPEG image")
        raise RequestError(400, f"request body is empty; expected {expected}.")
    if media in JSON_TYPES:
        image = next((kind for magic, kind in _MAGIC.items() if body.startswith(magic)), None)
        if image is not None:
            raise RequestError(400, f"request body is a {image} image but Content-Type says {media}; send it as "
                               f"image/{image.lower()}, or send {_JSON_SHAPE}.")
        return parse_json(body, image_size, max_instances)
    if media in MULTIPART_TYPES:
        return _parse_multipart(body, content_type, image_size, max_instances)
    return parse_image(body, image_size)


def body_too_large(size: int | str, limit: int) -> str:
    return (f"request body is {size} bytes; the limit is {limit} (serve.max_body_bytes). "
            "Send fewer or smaller instances per request.")


class _Literal:
    """A ``NaN``, ``Infinity`` or ``-Infinity`` literal, which JSON does not have: kept as is, so the
    instance check that meets it can name its place."""

    def __init__(self, text: str):
        self.text = text


def parse_json(body: bytes, image_size: tuple[int, int], max_instances: int) -> np.ndarray:
    """``{"instances": [...]}`` into a batch; each instance ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``, any size.

    Raises:
        RequestError: 400 for a malformed body or instance, 413 for more than ``max_instances``.
    """
    doc = _loads(body)
    if not isinstance(doc, dict) or "instances" not in doc:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise RequestError(400, f"JSON body must be an object with key 'instances'. Received: {_short(got)}.")
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, f"'instances' must be a non-empty list of images. Received: {_short(instances)}.")
    if len(instances) > max_instances:
        raise RequestError(413, f"request has {len(instances)} instances; the limit is {max_instances}. "
                           "Split it into smaller requests.")
    # numpy reads true/false as 1/0 beside numbers; only a body that holds them needs the slow check.
    booleans = b"true" in body or b"false" in body
    arrays = [_instance(f"instances[{i}]", x, booleans) for i, x in enumerate(instances)]
    if len({a.shape for a in arrays}) == 1:  # the usual case: resize them all in one call
        return _prepare(np.stack(arrays), "instances", image_size)
    return np.concatenate([_prepare(a[np.newaxis], f"instances[{i}]", image_size) for i, a in enumerate(arrays)])


def _loads(body: bytes):
    try:
        return json.loads(body, parse_constant=_Literal)
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"request body is not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start} ({exc.reason}). Send the JSON encoded as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                           f"{exc.colno}; expected {_JSON_SHAPE}.") from None
    except RecursionError:
        depth, offset = _nesting(body)
        raise RequestError(400, f"request body nests arrays or objects {depth} levels deep (at byte "
                           f"{offset}), deeper than the JSON parser follows; {_IMAGE_LEVELS}, so "
                           '{"instances": [...]} needs 4 levels at most.') from None
    except ValueError as exc:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        digits = re.search(rb"\d{%d,}" % (sys.get_int_max_str_digits() + 1), body)
        if digits is None:
            raise RequestError(400, f"request body is not valid JSON ({exc}); expected {_JSON_SHAPE}.") from None
        raise RequestError(400, f"request body holds an integer of {len(digits.group())} digits at byte "
                           f"{digits.start()}; pixel values must be numbers 0..255.") from None


def _nesting(body: bytes) -> tuple[int, int]:
    """(deepest nesting of ``[`` and ``{``, its byte offset), for the error message only (brackets inside
    strings count too); in 1 MiB chunks, so a hostile 16 MiB body costs little memory."""
    codes = np.frombuffer(body, np.uint8)
    deepest, where, depth, step = 0, 0, 0, 1 << 20
    for start in range(0, len(codes), step):
        chunk = codes[start : start + step]
        levels = depth + np.cumsum(np.isin(chunk, _OPEN).astype(np.int32) - np.isin(chunk, _CLOSE))
        i = int(levels.argmax())
        if levels[i] > deepest:
            deepest, where = int(levels[i]), start + i
        depth = int(levels[-1])
    return deepest, where


def _instance(where: str, value, booleans: bool) -> np.ndarray:
    """One instance as a numeric array of at most 3 levels with values 0..255, or a RequestError naming
    the first place that is not."""
    try:
        array = np.array(value)
    except (ValueError, OverflowError):  # ragged, deeper than numpy's 32 dimensions, or ints numpy cannot hold
        array = None
    if array is None or array.dtype.kind not in "iuf" or booleans:
        problem = _why_not_an_image(value, where)
        if problem is not None:
            raise RequestError(400, problem)
        if array is None or array.dtype.kind not in "iuf":
            raise RequestError(400, f"{where} does not form one array of numbers; {_IMAGE_LEVELS}.")
    if array.ndim > 3:
        raise RequestError(400, f"{where} is nested {array.ndim} levels deep; {_IMAGE_LEVELS}.")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))) or 0 in array.shape[:2]:
        raise RequestError(400, f"{where} has shape {list(array.shape)}; expected [H, W], [H, W, 1] or "
                           "[H, W, 3] pixel values with H, W >= 1.")
    inside = (array >= 0) & (array <= 255)
    if not inside.all():
        place = tuple(int(k) for k in np.argwhere(~inside)[0])
        bad = array[place]
        what = "a number beyond the float range (read as infinity)" if np.isinf(bad) else f"{bad:g}"
        raise RequestError(400, f"{_path(where, place)} is {what}; pixel values must lie in 0..255 "
                           "(raw pixels, not normalised).")
    return array


def _why_not_an_image(value, where: str) -> str | None:
    """Why ``value`` is not an image of numbers nested at most 3 levels, naming the first place at fault;
    None when it is one. Walks one level at a time, never recursing, whatever the depth."""
    level, shape = [value], ()
    while True:
        is_list = [isinstance(v, list) for v in level]
        bad = next((i for i, v in enumerate(level) if not is_list[i] and not _is_pixel(v)), None)
        if bad is not None:
            return f"{_at(where, shape, bad)} is {_describe(level[bad])}; pixel values must be numbers 0..255."
        if not any(is_list):
            return None
        if not all(is_list):
            odd = is_list.index(not is_list[0])
            kinds = {True: "a list", False: "a number"}
            return (f"{where} is ragged: {_at(where, shape, odd)} is {kinds[is_list[odd]]} but "
                    f"{_at(where, shape, 0)} is {kinds[is_list[0]]}; {_IMAGE_LEVELS}.")
        lengths = [len(v) for v in level]
        odd = next((i for i, n in enumerate(lengths) if n != lengths[0]), None)
        if odd is not None:
            return (f"{where} is ragged: {_at(where, shape, odd)} has {lengths[odd]} values but "
                    f"{_at(where, shape, 0)} has {lengths[0]}; every row must have the same length.")
        if len(shape) == 3:
            depth, v = 0, value
            while isinstance(v, list) and v:
                depth, v = depth + 1, v[0]
            return f"{where} is nested {depth} levels deep; {_IMAGE_LEVELS}."
        shape += (lengths[0],)
        level = [x for v in level for x in v]


def _is_pixel(value) -> bool:
    return type(value) is float or (type(value) is int and -(2**63) <= value < 2**63)


def _describe(value) -> str:
    if isinstance(value, _Literal):
        return f"{value.text}, which JSON does not have"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return f"an integer of {len(str(abs(value)))} digits"
    kind = {str: "a string", dict: "an object"}.get(type(value), type(value).__name__)
    return f"{kind} ({_short(value)})"


def _at(where: str, shape: tuple[int, ...], flat_index: int) -> str:
    """The path of item ``flat_index`` of a level whose lists above have the lengths ``shape``."""
    return _path(where, np.unravel_index(flat_index, shape) if shape else ())


def _path(where: str, index) -> str:
    return where + "".join(f"[{int(k)}]" for k in index)


def _prepare(array: np.ndarray, where: str, image_size: tuple[int, int]) -> np.ndarray:
    from tl_ray.data.images import prepare_array

    try:
        return prepare_array(array, image_size)
    except DataError as exc:
        raise RequestError(400, f"{where}: {exc}") from None


def parse_image(body: bytes, image_size: tuple[int, int]) -> np.ndarray:
    """The bytes of one PNG or JPEG image into a batch of one.

    Raises:
        RequestError: 400 when the bytes are not a decodable PNG or JPEG.
    """
    import tensorflow as tf

    from tl_ray.data.images import decode_image

    if not any(body.startswith(magic) for magic in _MAGIC):
        hint = " It looks like JSON: send it as application/json." if body.lstrip()[:1] in (b"{", b"[") else ""
        raise RequestError(400, f"request body is not a PNG or JPEG image (it starts with {body[:8]!r}); "
                           f"send the file's bytes.{hint}")
    try:
        image = decode_image(tf.constant(body), image_size)
    except (DataError, tf.errors.InvalidArgumentError) as exc:
        raise RequestError(400, f"request body is not a decodable PNG or JPEG image: {first_line(exc)}") from None
    return np.asarray(image, dtype=np.float32)[np.newaxis]


def _parse_multipart(body: bytes, content_type: str, image_size: tuple[int, int], max_instances: int) -> np.ndarray:
    import email.parser
    import email.policy

    if "boundary=" not in content_type.lower():
        raise RequestError(400, "multipart/form-data needs a boundary parameter. "
                           f"Received Content-Type: {content_type!r}.")
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    if not parts:
        raise RequestError(400, "multipart/form-data body holds no parts; expected one image file per part.")
    if len(parts) > max_instances:
        raise RequestError(413, f"request has {len(parts)} images; the limit is {max_instances}. "
                           "Split it into smaller requests.")
    images = []
    for i, part in enumerate(parts):
        label = part.get_param("name", header="content-disposition") or f"part {i}"
        data = part.get_payload(decode=True) or b""
        try:
            images.append(parse_image(data, image_size))
        except RequestError as exc:
            raise RequestError(exc.status, f"multipart part {i} ({label!r}): {exc.message}") from None
    return np.concatenate(images)
