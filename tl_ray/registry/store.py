"""The versioned model registry, kept in object storage.

Layout under ``<storage>/registry/<name>/``::

    v1/model.keras  v1/saved_model/...  v1/metadata.json
    aliases/production.json      {"version": 1, "previous": [...], "updated": ...}

A version exists once its ``metadata.json`` does: that file is written last,
so a half-uploaded version is never listed or loaded. ``metadata.json``
records the sha256 of every other file, and every fetch checks them.

Example:

>>> reg = Registry("./tlray-store")
>>> version = reg.publish("fashion", "/tmp/export", {"metrics": {"val_accuracy": 0.9}})
>>> reg.set_alias("fashion", "production", version)
>>> reg.fetch("fashion:production")  # a verified local copy
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from tl_ray import storage
from tl_ray.errors import RegistryError, StorageError

METADATA = "metadata.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_REF = re.compile(r"^(?:registry://)?(?P<name>[^:/]+)(?::(?P<tag>[^:/]+))?$")


class Registry:
    """Versions and aliases of named models under ``<storage>/registry``.

    Args:
        storage_root: the store root, a local folder or ``s3://bucket/prefix``.
    """

    def __init__(self, storage_root: str):
        self.storage_root = storage_root
        self.root = storage.join(storage_root, "registry")

    # -- naming -------------------------------------------------------------
    def model_uri(self, name: str) -> str:
        return storage.join(self.root, name)

    def version_uri(self, name: str, version: int) -> str:
        return storage.join(self.root, name, f"v{version}")

    def names(self) -> list[str]:
        return [n for n in storage.list_dir(self.root) if _NAME.match(n)]

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending."""
        out = []
        for entry in storage.list_dir(self.model_uri(name)):
            if re.fullmatch(r"v\d+", entry) and storage.exists(
                storage.join(self.model_uri(name), entry, METADATA)
            ):
                out.append(int(entry[1:]))
        return sorted(out)

    def metadata(self, name: str, version: int) -> dict:
        uri = storage.join(self.version_uri(name, version), METADATA)
        try:
            return json.loads(storage.read_text(uri))
        except StorageError:
            raise RegistryError(
                f"model {name!r} has no version v{version}. Known versions: {self.versions(name)}."
            ) from None

    def aliases(self, name: str) -> dict[str, int]:
        out = {}
        for entry in storage.list_dir(storage.join(self.model_uri(name), "aliases")):
            if entry.endswith(".json"):
                data = json.loads(storage.read_text(storage.join(self.model_uri(name), "aliases", entry)))
                out[entry[: -len(".json")]] = int(data["version"])
        return out

    def alias_history(self, name: str, alias: str) -> list[int]:
        uri = storage.join(self.model_uri(name), "aliases", f"{alias}.json")
        if not storage.exists(uri):
            return []
        return list(json.loads(storage.read_text(uri)).get("previous", []))

    def resolve(self, ref: str) -> tuple[str, int]:
        """``name``, ``name:alias``, ``name:vN``, ``name:N`` or ``registry://...`` → (name, version).

        A bare name means its ``production`` alias.
        """
        m = _REF.match(ref.strip())
        if not m:
            raise RegistryError(
                f"model reference {ref!r} is malformed. Use NAME, NAME:ALIAS or NAME:vN, e.g. fashion:production."
            )
        name, tag = m.group("name"), m.group("tag") or "production"
        versions = self.versions(name)
        if not versions:
            known = self.names()
            raise RegistryError(
                f"no model named {name!r} in the registry at {self.root}. Known models: {known}. "
                "Run a sweep with a promote section first (tl-ray tune SPEC, tl-ray run SPEC)."
            )
        if re.fullmatch(r"v?\d+", tag):
            version = int(tag.lstrip("v"))
            if version not in versions:
                raise RegistryError(f"model {name!r} has no version v{version}. Known versions: {versions}.")
            return name, version
        aliases = self.aliases(name)
        if tag not in aliases:
            raise RegistryError(
                f"model {name!r} has no alias {tag!r}. Aliases: {aliases or 'none'}; versions: {versions}. "
                f"Promote one with: tl-ray models promote {name} vN --alias {tag}"
            )
        return name, aliases[tag]

    # -- writing ------------------------------------------------------------
    def publish(self, name: str, local_dir: str | Path, metadata: dict) -> int:
        """Uploads the files of ``local_dir`` as the next version of ``name``; returns its number.

        ``metadata["files"]`` is filled with the sha256 of every file. The
        version number is claimed before the upload, so two concurrent
        publications get distinct versions.
        """
        if not _NAME.match(name):
            raise RegistryError(
                f"model name must match {_NAME.pattern} (lower-case, digits, '_', '.', '-'). Received: {name!r}."
            )
        local_dir = Path(local_dir)
        files = {
            p.relative_to(local_dir).as_posix(): storage.sha256_file(p)
            for p in sorted(local_dir.rglob("*"))
            if p.is_file() and p.name != METADATA
        }
        version = self._claim_version(name)
        meta = dict(metadata, name=name, version=version, files=files, created=time.time())
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "v"
            shutil.copytree(local_dir, staged)
            (staged / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
            storage.upload_dir(staged, self.version_uri(name, version), marker=METADATA)
        return version

    def _claim_version(self, name: str) -> int:
        """Atomically creates ``.claims/v<N>`` for the next free N (exclusive create)."""
        claims = storage.join(self.model_uri(name), ".claims")
        taken = set(storage.list_dir(claims)) | set(storage.list_dir(self.model_uri(name)))
        n = 1 + max((int(e[1:]) for e in taken if re.fullmatch(r"v\d+", e)), default=0)
        for candidate in range(n, n + 1000):
            if _create_exclusive(storage.join(claims, f"v{candidate}")):
                return candidate
        raise RegistryError(f"could not allocate a version for {name!r}: too many concurrent publications.")

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Points ``alias`` at ``version`` (one atomic write), keeping the history for rollback."""
        if version not in self.versions(name):
            raise RegistryError(f"model {name!r} has no version v{version}. Known versions: {self.versions(name)}.")
        uri = storage.join(self.model_uri(name), "aliases", f"{alias}.json")
        previous = []
        if storage.exists(uri):
            old = json.loads(storage.read_text(uri))
            previous = list(old.get("previous", [])) + [int(old["version"])]
        storage.write_text(
            uri, json.dumps({"version": version, "previous": previous, "updated": time.time()}, indent=2)
        )

    def rollback(self, name: str, alias: str = "production") -> int:
        """Moves ``alias`` back to the version it pointed at before; returns that version."""
        uri = storage.join(self.model_uri(name), "aliases", f"{alias}.json")
        if not storage.exists(uri):
            raise RegistryError(f"model {name!r} has no alias {alias!r} to roll back.")
        data = json.loads(storage.read_text(uri))
        previous = list(data.get("previous", []))
        if not previous:
            raise RegistryError(
                f"alias {name}:{alias} has no earlier version to roll back to (it points at v{data['version']})."
            )
        target = previous.pop()
        storage.write_text(
            uri, json.dumps({"version": target, "previous": previous, "updated": time.time()}, indent=2)
        )
        return target

    # -- reading ------------------------------------------------------------
    def fetch(self, ref: str) -> Path:
        """A local, sha256-verified copy of the version ``ref`` names (cached per node)."""
        name, version = self.resolve(ref)
        meta = self.metadata(name, version)
        cache = storage.local_cache_dir("registry", _cache_key(self.root), name)
        final = cache / f"v{version}"
        if final.exists() and _verify(final, meta) is None:
            return final
        tmp = cache / f".tmp-{uuid.uuid4().hex[:8]}"
        storage.download_dir(self.version_uri(name, version), tmp)
        problem = _verify(tmp, meta)
        if problem is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RegistryError(
                f"refusing to load {name}:v{version}: {problem}. The stored files were changed after "
                "publication; promote a fresh version or restore the file."
            )
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final


def _create_exclusive(uri: str) -> bool:
    """Creates ``uri`` only if it does not exist (O_EXCL locally, If-None-Match on S3)."""
    token = uuid.uuid4().hex.encode()
    if storage.is_s3(uri):
        import boto3
        from botocore.exceptions import ClientError

        bucket, _, key = uri[len("s3://") :].partition("/")
        client = boto3.client("s3", endpoint_url=storage.endpoint_url())
        try:
            client.put_object(Bucket=bucket, Key=key, Body=token, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise StorageError(f"cannot write {uri!r}: {exc}") from None
    _, path = storage.filesystem(uri)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(token)
    return True


def _cache_key(root: str) -> str:
    return storage.sha256_bytes(root.encode())[:16]


def _verify(folder: Path, meta: dict) -> str | None:
    for rel, digest in meta.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            return f"file {rel!r} is missing"
        if storage.sha256_file(path) != digest:
            return f"file {rel!r} does not match its sha256 in metadata.json"
    return None
