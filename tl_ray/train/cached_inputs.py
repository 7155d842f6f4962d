"""Inputs of the phases that train the head on the backbone's cached outputs (``tl_ray.feature_cache``)."""

from __future__ import annotations

from tl_ray import feature_cache
from tl_ray.data.manifest import read_manifest
from tl_ray.spec import Spec
from tl_ray.train.checkpoint import head_recipe


def open_dataset(source, **kwargs):
    """``make_dataset`` for a dataset URI, or the same batches from a ``MemoryRows``."""
    if isinstance(source, MemoryRows):
        return source.dataset(**kwargs)
    from tl_ray.data.reader import make_dataset

    return make_dataset(source, **kwargs)


def trains_on_cache(spec: Spec, phases: list) -> bool:
    """Whether every one of ``phases`` (each with ``freeze`` and ``augment``) trains on cached features."""
    return bool(phases) and all(feature_cache.usable(spec, p.freeze, p.augment)[0] for p in phases)


class MemoryRows:
    """A small feature-cache entry held in memory, streamed each epoch in the reader's order.

    The process keeps the newest entries (``MAX_BYTES`` in all): a reused Tune actor reads an entry once for
    all its trials (an entry never changes once its manifest, whose digest is in the key, exists).
    """

    MAX_BYTES = 512 * 2**20
    _held: dict = {}

    def __init__(self, uri: str, manifest):
        key = (uri, manifest.digest)
        if key not in MemoryRows._held:
            import tensorflow as tf

            from tl_ray.data.reader import load_rows

            values, labels, manifest = load_rows(uri)
            MemoryRows._held[key] = (tf.constant(values), tf.constant(labels), manifest, {})
            # The oldest entries go first; the new one stays, whatever its size.
            while len(MemoryRows._held) > 1 and sum(
                int(v[0].shape.num_elements()) * 4 for v in MemoryRows._held.values()
            ) > self.MAX_BYTES:
                MemoryRows._held.pop(next(iter(MemoryRows._held)))
        self.uri = uri
        self.values, self.labels, self.manifest, self._unshuffled = MemoryRows._held[key]

    def dataset(self, *, image_size=None, augment=None, **kwargs):
        from tl_ray.data.reader import in_memory_dataset

        if kwargs.get("shuffle"):
            return in_memory_dataset(self.values, self.labels, self.manifest, **kwargs)
        args = tuple(sorted(kwargs.items()))
        if args not in self._unshuffled:
            self._unshuffled[args] = in_memory_dataset(self.values, self.labels, self.manifest, **kwargs)
        return self._unshuffled[args]


class CachedInputs:
    """The head-on-features model and cached datasets for the phases that can use them.

    ``model``: the trial's full model, whose layers the head shares; None: the head is built alone.
    """

    def __init__(self, spec: Spec, strategy, weights_file: str | None, num_classes: int, events=None):
        self.spec, self.strategy, self.weights_file, self.num_classes = spec, strategy, weights_file, num_classes
        self.events = events  # the loop's callbacks, told when this worker builds or waits for an entry
        self.model = None
        self.statuses: dict[str, str] = {}  # per role: "built" here, "waited" for another builder, or "read"
        self.feature_shape: list[int] | None = None
        self._head = None
        self._recipe: dict | None = None
        self._uris: dict = {}

    def head(self, train_uri: str, val_uri: str | None):
        """The head model (entries for both datasets are found or built first: they give its input shape)."""
        if self._head is None:
            self._datasets(train_uri, val_uri)
            with self.strategy.scope():
                if self.model is not None:
                    self._head = feature_cache.head_model(self.model)
                else:
                    from tl_ray.models.build import build_head

                    self._head = build_head(self.spec.model.head, self.num_classes, self.feature_shape,
                                            seed=self.spec.train.seed, name=f"tlray_{self.spec.model.backbone}_head")
        return self._head

    def recipe(self) -> dict:
        """``head_of`` of this trial's head-only checkpoints."""
        if self._recipe is None:
            self._recipe = head_recipe(self.spec, self.num_classes, self.feature_shape,
                                       feature_cache.backbone_digest(self.spec, self.weights_file))
        return self._recipe

    def for_phase(self, phase, train_uri: str, val_uri: str | None):
        """``(model to step, train dataset, validation dataset, on the cache)`` for a phase."""
        use, why = feature_cache.usable(self.spec, phase.freeze, phase.augment)
        if not use:
            if phase.freeze.mode == "feature_extraction" and self.spec.train.feature_cache == "auto":
                print(f"feature cache not used: {why}")
            return self.model, train_uri, val_uri, False
        head = self.head(train_uri, val_uri)
        return head, self._uris[train_uri], self._uris.get(val_uri) if val_uri else None, True

    def _datasets(self, train_uri: str, val_uri: str | None) -> None:
        from tl_ray.data.reader import feature_shape

        for role, uri in (("train", train_uri), ("validation", val_uri)):
            if uri is not None and uri not in self._uris:
                entry = feature_cache.ensure_features(self.spec, uri, self.weights_file, events=self.events)
                manifest = read_manifest(entry.uri)
                self.feature_shape = feature_shape(manifest)
                small = sum(s.bytes for s in manifest.shards) <= MemoryRows.MAX_BYTES
                self._uris[uri] = MemoryRows(entry.uri, manifest) if small else entry.uri
                self.statuses[role] = entry.status
