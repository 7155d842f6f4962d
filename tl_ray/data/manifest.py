"""``_manifest.json`` lists a dataset folder's Parquet or TFRecord shards and names their format. It is
written last, so a folder without one is not a dataset; its ``digest`` identifies a model's training data."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from tl_ray import store
from tl_ray.data.tfrecord import RecordParser
from tl_ray.errors import DataError, StorageError

MANIFEST_NAME = "_manifest.json"
FORMATS = ("parquet", "tfrecord")
SHARD_SUFFIX = {"parquet": ".parquet", "tfrecord": ".tfrecord"}


@dataclass
class Shard:
    """One data file of a dataset: its name in the dataset folder, rows, sha256 and size in bytes."""

    path: str
    rows: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    """Describes a dataset folder: label ``i`` is ``class_names[i]``; ``image_shape`` is ``[H, W, C]`` when
    all images share it, else None; ``shards`` are in dataset order; ``source`` is free-form provenance."""

    format: str
    num_rows: int
    class_names: list[str]
    image_shape: list[int] | None
    shards: list[Shard]
    source: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> "Manifest":
        """Parses a manifest; ``where`` (its URI) is named in errors. DataError when the text is not JSON,
        lacks a required field or is inconsistent."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc}). Re-run `tl-ray data ingest` to rewrite it.") from None
        if not isinstance(data, dict):
            raise DataError(f"{where} must hold a JSON object. Received: {type(data).__name__}.")
        try:
            shards = [Shard(**s) for s in data["shards"]]
            manifest = cls(
                format=str(data["format"]), num_rows=int(data["num_rows"]),
                class_names=[str(c) for c in data["class_names"]],
                image_shape=list(data["image_shape"]) if data.get("image_shape") is not None else None,
                shards=shards, source=dict(data.get("source") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where} is malformed: {type(exc).__name__}: {exc}. A manifest needs format, "
                            "num_rows, class_names, image_shape and shards (path, rows, sha256, bytes). "
                            "Re-run `tl-ray data ingest`.") from None
        if manifest.format not in FORMATS:
            raise DataError(f"{where}: format must be one of {list(FORMATS)}. Received: {manifest.format!r}.")
        if (total := sum(s.rows for s in shards)) != manifest.num_rows:
            raise DataError(f"{where}: num_rows ({manifest.num_rows}) differs from the sum of shard rows "
                            f"({total}). Re-run `tl-ray data ingest`.")
        return manifest

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON: the "data manifest hash" recorded with a model."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return store.sha256_bytes(canonical.encode("utf-8"))


def manifest_uri(uri: str) -> str:
    return store.join(uri, MANIFEST_NAME)


def has_manifest(uri: str) -> bool:
    """True when ``uri`` holds a dataset (its manifest exists)."""
    return store.exists(manifest_uri(uri))


def read_manifest(uri: str) -> Manifest:
    """Reads ``<uri>/_manifest.json``: DataError when there is none (so no dataset) or it is malformed."""
    where = manifest_uri(uri)
    if not store.exists(where):
        raise DataError(f"no dataset at {uri!r}: {MANIFEST_NAME} is missing (a folder without it is not a "
                        "dataset, or its ingest did not finish). "
                        f"Create it with `tl-ray data ingest ... --to {uri}`.")
    return Manifest.from_json(store.read_text(where), where=where)


def write_manifest(uri: str, manifest: Manifest) -> None:
    """Writes the manifest atomically (read back on S3); call it after every shard is written."""
    store.publish_text(manifest_uri(uri), manifest.to_json())


def count_rows(data: bytes, fmt: str, name: str) -> int:
    """Rows in one shard's bytes, checking the format's own integrity (Parquet footer, TFRecord CRCs);
    DataError when they are not a readable shard of ``fmt``."""
    if fmt == "tfrecord":
        parser = RecordParser(name)
        parser.feed(data)
        parser.finish()
        return parser.records
    try:
        return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"shard {name!r} is not a readable Parquet file ({exc}).") from None


def verify(uri: str) -> list[str]:
    """Re-checks every shard's size, sha256, row count (and TFRecord CRCs) against the manifest; returns one
    line per problem (none: the dataset is intact). DataError when there is no readable manifest."""
    manifest = read_manifest(uri)
    problems = []
    for shard in manifest.shards:
        shard_uri = store.join(uri, shard.path)
        if not store.exists(shard_uri):
            problems.append(f"{shard_uri}: missing (manifest lists {shard.rows} rows).")
            continue
        try:
            data = store.read_bytes(shard_uri)
        except StorageError as exc:
            problems.append(f"{shard_uri}: unreadable ({exc}).")
            continue
        digest = store.sha256_bytes(data)
        if digest != shard.sha256:
            problems.append(f"{shard_uri}: sha256 is {digest}, manifest says {shard.sha256} (file changed or corrupt).")
        if len(data) != shard.bytes:
            problems.append(f"{shard_uri}: size is {len(data)} bytes, manifest says {shard.bytes}.")
        try:
            rows = count_rows(data, manifest.format, shard_uri)
        except DataError as exc:
            problems.append(f"{shard_uri}: {exc}")
            continue
        if rows != shard.rows:
            problems.append(f"{shard_uri}: holds {rows} rows, manifest says {shard.rows}.")
    return problems
