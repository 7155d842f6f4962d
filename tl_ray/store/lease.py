"""Leases: one holder at a time for a piece of work, kept while the holder renews it."""

from __future__ import annotations

import json
import time

from tl_ray.errors import StorageError
from tl_ray.store.conditional import create_exclusive, delete_if, read_tagged, write_if


class LeaseLost(StorageError):
    """The holder's lease went stale and a waiter broke it: the work is someone else's now."""


class Lease:
    """An exclusive claim on ``uri``, kept by renewing it. A waiter breaks it once it has seen it unchanged
    for ``stale_s`` by its own clock, so the clocks of holder and waiter need not agree. ``scope``: as for
    ``write_if``."""

    def __init__(self, uri: str, *, stale_s: float, scope: str | None = None):
        self.uri, self.stale_s, self.scope = uri, stale_s, scope
        self._seen, self._seen_at = None, time.monotonic()  # the holder's tag, and when it last changed
        self._held: bytes | None = None  # what this holder last wrote

    def acquire(self, info: dict) -> bool:
        """Takes the lease, recording ``info`` in it; False when someone holds it."""
        data = json.dumps(info).encode()
        self._held = data if create_exclusive(self.uri, data, scope=self.scope) else None
        return self._held is not None

    def renew(self, info: dict) -> None:
        """Rewrites the lease with ``info``: the heartbeat waiters watch. LeaseLost once it is not ours."""
        current, tag = read_tagged(self.uri)
        data = json.dumps(info).encode()
        if self._held is None or current != self._held or not write_if(self.uri, data, tag, scope=self.scope):
            self._held = None
            raise LeaseLost(f"{self.uri}: lease lost (a waiter broke it after {self.stale_s:.0f} s without a "
                            "renewal)")
        self._held = data

    def release(self) -> None:
        """Gives the lease up, if this holder still has it."""
        current, tag = read_tagged(self.uri)
        if self._held is not None and current == self._held:
            delete_if(self.uri, tag, scope=self.scope)
        self._held = None

    def break_if_stale(self) -> bool:
        """On each poll of a waiter: deletes the lease once it has gone ``stale_s`` unchanged; True if it did."""
        _, tag = read_tagged(self.uri)
        if tag is not None and tag != self._seen:
            self._seen, self._seen_at = tag, time.monotonic()
        elif tag is not None and time.monotonic() - self._seen_at > self.stale_s:
            delete_if(self.uri, tag, scope=self.scope)
            return True
        return False
