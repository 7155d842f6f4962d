"""The store on the S3 API (moto's server on loopback): conditional writes and leases. No Ray."""

from __future__ import annotations

import json
import time

import pytest

from tl_ray import store

pytestmark = pytest.mark.integration


def test_conditional_writes_are_honoured(s3_store):
    uri = store.join(s3_store, "cas/object.json")
    assert store.create_exclusive(uri, b"one")
    assert not store.create_exclusive(uri, b"two")  # If-None-Match: *
    data, tag = store.read_tagged(uri)
    assert data == b"one"
    assert store.write_if(uri, b"three", tag)  # If-Match: the ETag just read
    assert not store.write_if(uri, b"four", tag)  # stale ETag
    assert store.read_tagged(uri)[0] == b"three"
    assert not store.delete_if(uri, tag)
    assert store.delete_if(uri, store.read_tagged(uri)[1])
    assert store.read_tagged(uri) == (None, None)


def test_a_lease_on_s3_is_renewed_broken_when_stale_taken_over_and_lost_to_its_old_holder(s3_store):
    uri = store.join(s3_store, "cache/entry/_building.json")
    holder, waiter = store.Lease(uri, stale_s=0.5), store.Lease(uri, stale_s=0.5)
    assert holder.acquire({"rows": 0}) and not waiter.acquire({"rows": 0})
    assert not waiter.break_if_stale()
    holder.renew({"rows": 3})
    assert json.loads(store.read_text(uri)) == {"rows": 3}
    time.sleep(0.6)
    assert not waiter.break_if_stale()  # renewed since it last looked: the clock restarts
    time.sleep(0.6)
    assert waiter.break_if_stale() and not store.exists(uri)
    assert waiter.acquire({"rows": 0})
    with pytest.raises(store.LeaseLost):
        holder.renew({"rows": 4})
    holder.release()
    assert json.loads(store.read_text(uri)) == {"rows": 0}
    waiter.release()
    assert store.read_tagged(uri) == (None, None)
