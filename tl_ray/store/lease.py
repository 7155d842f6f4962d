"""Leases: one holder at a time for a piece of work, kept while the holder renews it."""

from __future__ import annotations

import json
import time

from tl_ray.store.conditional import create_exclusive, delete_if, read_tagged, write_if


class Lease:
    """An exclusive claim on ``uri``, kept by renewing it. A waiter breaks it once it has seen it unchanged
    for ``stale_s`` by its own clock, so the clocks of holder and waiter need not agree. ``scope``: as for
    ``write_if``."""

    def __init__(self, uri: str, *, stale_s: float, scope: str | None = None):
        self.uri, self.stale_s, self.scope = uri, stale_s, scope
        self._seen, self._seen_at = None, time.monotonic()  # the holder's tag, and when it last changed

    def acquire(self, info: dict) -> bool:
        """Takes the lease, recording ``info`` in it; False when someone holds it."""
        return create_exclusive(self.uri, json.dumps(info).encode(), scope=self.scope)

    def renew(self, info: dict) -> None:
        """Rewrites the lease with ``info``: the heartbeat waiters watch."""
        _, tag = read_tagged(self.uri)
        if tag is not None:
            write_if(self.uri, json.dumps(info).encode(), tag, scope=self.scope)

    def release(self) -> None:
        """Gives the lease up, if it is still there."""
        _, tag = read_tagged(self.uri)
        if tag is not None:
            delete_if(self.uri, tag, scope=self.scope)

    def break_if_stale(self) -> bool:
        """On each poll of a waiter: deletes the lease once it has gone ``stale_s`` unchanged; True if it did."""
        _, tag = read_tagged(self.uri)
        if tag is not None and tag != self._seen:
            self._seen, self._seen_at = tag, time.monotonic()
        elif tag is not None and time.monotonic() - self._seen_at > self.stale_s:
            delete_if(self.uri, tag, scope=self.scope)
            return True
        return False
