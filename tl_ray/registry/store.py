"""The versioned model registry under ``<storage>/registry/<name>/``: ``vN/`` folders, ``aliases/ALIAS.json``.

A version exists once its ``metadata.json`` (written last; every fetch checks the sha256s it records) does.
Versions are claimed by create-if-absent (``.claims/vN``) and aliases move by compare-and-swap, so
concurrent promotions never share a version and never lose an alias update.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from tl_ray import store
from tl_ray.errors import RegistryError, StorageError

_ANY = object()  # set_alias(expect=...) default: move the alias whatever it points at now

METADATA = "metadata.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_REF = re.compile(r"^(?:registry://)?(?P<name>[^:/]+)(?::(?P<tag>[^:/]+))?$")


class AliasConflict(RegistryError):
    """An alias moved between reading it and moving it (``set_alias(..., expect=...)``)."""


class Registry:
    """Versions and aliases of named models under ``<storage_root>/registry`` (a folder or ``s3://``)."""

    def __init__(self, storage_root: str):
        self.root = store.join(storage_root, "registry")

    # -- naming -------------------------------------------------------------
    def model_uri(self, name: str) -> str:
        return store.join(self.root, name)

    def version_uri(self, name: str, version: int) -> str:
        return store.join(self.root, name, f"v{version}")

    def names(self) -> list[str]:
        return [n for n in store.list_dir(self.root) if _NAME.match(n)]

    def versions(self, name: str) -> list[int]:
        """Published versions of ``name``, ascending."""
        folder = self.model_uri(name)
        return sorted(int(entry[1:]) for entry in store.list_dir(folder)
                      if re.fullmatch(r"v\d+", entry) and store.exists(store.join(folder, entry, METADATA)))

    def metadata(self, name: str, version: int) -> dict:
        uri = store.join(self.version_uri(name, version), METADATA)
        try:
            return json.loads(store.read_text(uri))
        except StorageError:
            raise RegistryError(
                f"model {name!r} has no version v{version}. Known versions: {self.versions(name)}."
            ) from None

    def aliases(self, name: str) -> dict[str, int]:
        entries = store.list_dir(store.join(self.model_uri(name), "aliases"))
        aliases = [e.removesuffix(".json") for e in entries if e.endswith(".json") and not e.startswith(".")]
        found = {alias: self._read_alias(name, alias)[0] for alias in aliases}
        return {alias: int(data["version"]) for alias, data in found.items() if data is not None}

    def alias_history(self, name: str, alias: str) -> list[int]:
        data, _ = self._read_alias(name, alias)
        return [] if data is None else list(data.get("previous", []))

    def _alias_uri(self, name: str, alias: str) -> str:
        return store.join(self.model_uri(name), "aliases", f"{alias}.json")

    def _read_alias(self, name: str, alias: str) -> tuple[dict | None, str | None]:
        raw, tag = store.read_tagged(self._alias_uri(name, alias))
        return (None, None) if raw is None else (json.loads(raw), tag)

    def resolve(self, ref: str) -> tuple[str, int]:
        """``name``, ``name:alias``, ``name:vN``, ``name:N`` or ``registry://...`` → (name, version); a bare
        name means its ``production`` alias."""
        m = _REF.match(ref.strip())
        if not m:
            raise RegistryError(
                f"model reference {ref!r} is malformed. Use NAME, NAME:ALIAS or NAME:vN, e.g. fashion:production."
            )
        name, tag = m.group("name"), m.group("tag") or "production"
        versions = self.versions(name)
        if not versions:
            raise RegistryError(
                f"no model named {name!r} in the registry at {self.root}. Known models: {self.names()}. "
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
                f"Promote one with: tl-ray models promote {name}:vN --alias {tag}"
            )
        return name, aliases[tag]

    # -- writing ------------------------------------------------------------
    def check_writable(self) -> None:
        """Proves that, on S3, the store honours conditional writes (or leases are set). Cached per process.

        Raises:
            StorageError: the store ignores conditional writes, or cannot be reached or written.
        """
        if store.is_s3(self.root):
            store.conditional_mode(self.root)

    def publish(self, name: str, local_dir: str | Path, metadata: dict) -> int:
        """Uploads the files of ``local_dir`` as the next version of ``name``; returns its number.

        ``metadata["files"]`` gets the sha256 of every file. The version number is claimed before the upload.
        """
        if not _NAME.match(name):
            raise RegistryError(
                f"model name must match {_NAME.pattern} (lower-case, digits, '_', '.', '-'). Received: {name!r}."
            )
        local_dir = Path(local_dir)
        files = {p.relative_to(local_dir).as_posix(): store.sha256_file(p)
                 for p in sorted(local_dir.rglob("*")) if p.is_file() and p.name != METADATA}
        version = self._claim_version(name)
        meta = dict(metadata, name=name, version=version, files=files, created=time.time())
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "v"
            shutil.copytree(local_dir, staged)
            (staged / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
            store.upload_dir(staged, self.version_uri(name, version), marker=METADATA)
        return version

    def _claim_version(self, name: str) -> int:
        """Atomically creates ``.claims/v<N>`` for the next free N (exclusive create)."""
        claims = store.join(self.model_uri(name), ".claims")
        taken = set(store.list_dir(claims)) | set(store.list_dir(self.model_uri(name)))
        n = 1 + max((int(e[1:]) for e in taken if re.fullmatch(r"v\d+", e)), default=0)
        for candidate in range(n, n + 1000):
            if store.create_exclusive(store.join(claims, f"v{candidate}"), uuid.uuid4().hex.encode(), scope=self.root):
                return candidate
        raise RegistryError(f"could not allocate a version for {name!r}: too many concurrent publications.")

    def set_alias(self, name: str, alias: str, version: int, expect=_ANY, note: str | None = None) -> int | None:
        """Points ``alias`` at ``version`` by compare-and-swap, keeping the history for rollback.

        Args:
            expect: the version the alias must point at now (None: the alias must not exist). Defaults to
                any: the move is retried on top of whatever a concurrent writer left.
            note: a reason recorded with the move. Defaults to none.

        Returns:
            The version the alias pointed at before (None if it is new).

        Raises:
            AliasConflict: ``expect`` is given and the alias points elsewhere.
            RegistryError: ``version`` is not published.
        """
        versions = self.versions(name)
        if version not in versions:
            raise RegistryError(f"model {name!r} has no version v{version}. Known versions: {versions}.")

        def move(old: dict | None) -> dict:
            previous = [] if old is None else list(old.get("previous", [])) + [int(old["version"])]
            return {"version": version, "previous": previous}

        old = self._swap_alias(name, alias, move, expect, note)
        return None if old is None else int(old["version"])

    def rollback(self, name: str, alias: str = "production", note: str | None = None) -> int:
        """Moves ``alias`` back to the version it pointed at before; returns that version."""

        def back(old: dict | None) -> dict:
            if old is None:
                raise RegistryError(f"model {name!r} has no alias {alias!r} to roll back.")
            previous = list(old.get("previous", []))
            if not previous:
                raise RegistryError(
                    f"alias {name}:{alias} has no earlier version to roll back to (it points at v{old['version']})."
                )
            return {"version": previous.pop(), "previous": previous}

        old = self._swap_alias(name, alias, back, _ANY, note)
        return int(old["previous"][-1])  # what this swap wrote, whatever a later writer did since

    def delete_alias(self, name: str, alias: str, expect=_ANY) -> bool:
        """Removes ``alias`` (if it still points at ``expect``, when given); False if it was not there."""
        for _ in range(50):
            data, tag = self._read_alias(name, alias)
            if data is None:
                return False
            if expect is not _ANY and int(data["version"]) != expect:
                raise AliasConflict(f"alias {name}:{alias} points at v{data['version']}, not v{expect}; left as is.")
            if store.delete_if(self._alias_uri(name, alias), tag, scope=self.root):
                return True
        raise RegistryError(f"alias {name}:{alias} kept changing; could not delete it.")

    def _swap_alias(self, name: str, alias: str, change, expect, note: str | None) -> dict | None:
        uri = self._alias_uri(name, alias)
        for _ in range(50):
            old, tag = self._read_alias(name, alias)
            current = None if old is None else int(old["version"])
            if expect is not _ANY and current != expect:
                raise AliasConflict(
                    f"alias {name}:{alias} points at {'v%d' % current if current else 'nothing'}, "
                    f"not {'v%d' % expect if expect else 'nothing'}: another writer moved it first."
                )
            new = dict(change(old), updated=time.time())
            if note:
                new["note"] = note
            if store.write_if(uri, json.dumps(new, indent=2).encode(), tag, scope=self.root):
                return old
            time.sleep(0.01)
        raise RegistryError(f"alias {name}:{alias} kept changing under 50 attempts to move it; try again.")

    def update_metadata(self, name: str, version: int, changes: dict) -> dict:
        """Merges ``changes`` into a version's metadata.json (never into its checked files)."""
        meta = {**self.metadata(name, version), **changes}
        store.publish_text(store.join(self.version_uri(name, version), METADATA),
                           json.dumps(meta, indent=2, sort_keys=True))
        return meta

    def record_event(self, name: str, event: dict) -> str:
        """Appends an event (a rollback, a refused swap) under ``<name>/events/``; returns its URI."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        uri = store.join(self.model_uri(name), "events", f"{stamp}-{uuid.uuid4().hex[:6]}.json")
        store.publish_text(uri, json.dumps({**event, "time": time.time()}, indent=2, sort_keys=True))
        return uri

    def events(self, name: str) -> list[dict]:
        folder = store.join(self.model_uri(name), "events")
        return [json.loads(store.read_text(store.join(folder, e))) for e in sorted(store.list_dir(folder))
                if e.endswith(".json")]

    def lineage(self, name: str, version: int) -> list[str]:
        """``name:vN`` then its parent, grandparent, ... (the model each was fine-tuned from)."""
        chain, seen = [f"{name}:v{version}"], set()
        meta = self.metadata(name, version)
        while meta.get("parent") and meta["parent"] not in seen:
            seen.add(meta["parent"])
            chain.append(meta["parent"])
            try:
                pname, pversion = self.resolve(meta["parent"])
                meta = self.metadata(pname, pversion)
            except RegistryError:
                break
        return chain

    def diff(self, ref_a: str, ref_b: str) -> dict:
        """Two versions side by side: ``{"a", "b", "metrics", "gate", "spec", "files_changed", "lineage"}``.

        ``metrics``, ``gate`` and ``spec`` map dotted keys to ``[a, b]``; ``spec`` only the keys that differ.
        """
        (na, va), (nb, vb) = self.resolve(ref_a), self.resolve(ref_b)
        ma, mb = self.metadata(na, va), self.metadata(nb, vb)

        def side_by_side(field: str, only_diff: bool = False) -> dict:
            fx, fy = _flatten(ma.get(field, {})), _flatten(mb.get(field, {}))
            keys = sorted(set(fx) | set(fy))
            return {k: [fx.get(k), fy.get(k)] for k in keys if not only_diff or fx.get(k) != fy.get(k)}

        return {"a": f"{na}:v{va}", "b": f"{nb}:v{vb}", "metrics": side_by_side("metrics"),
                "gate": side_by_side("gate"), "spec": side_by_side("spec", only_diff=True),
                "files_changed": sorted(side_by_side("files", only_diff=True)),
                "lineage": {"a": self.lineage(na, va), "b": self.lineage(nb, vb)}}

    # -- reading ------------------------------------------------------------
    def fetch(self, ref: str) -> Path:
        """A local, sha256-verified copy of the version ``ref`` names (cached per node)."""
        name, version = self.resolve(ref)
        meta = self.metadata(name, version)
        cache = store.local_cache_dir("registry", store.sha256_bytes(self.root.encode())[:16], name)
        final = cache / f"v{version}"
        if final.exists() and _verify(final, meta) is None:
            return final
        with store.staging(cache) as tmp:
            store.download_dir(self.version_uri(name, version), tmp)
            problem = _verify(tmp, meta)
            if problem is not None:
                raise RegistryError(
                    f"refusing to load {name}:v{version}: {problem}. The stored files were changed after "
                    "publication; promote a fresh version or restore the file."
                )
            shutil.rmtree(final, ignore_errors=True)
            store.publish_local(tmp, final)
        return final


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _verify(folder: Path, meta: dict) -> str | None:
    for rel, digest in meta.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            return f"file {rel!r} is missing"
        if store.sha256_file(path) != digest:
            return f"file {rel!r} does not match its sha256 in metadata.json"
    return None
