"""Serving's edges without Ray: hostile JSON bodies, a body read with a size cap, the signals that stop
`tl-ray serve` and its loop following an alias (the first three over real HTTP and a real process too:
tests/integration/test_serving.py and test_serve_process.py)."""

from __future__ import annotations

import asyncio
import json
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tl_ray.serving.parsing import RequestError, parse_body
from tl_ray.serving.process import StopSignals

SIZE = (8, 8)

# Bracket soup and number edges: unbalanced, deep, huge, NaN-like, half-written.
soup = st.text(alphabet='[]{},:"0123456789.eE+-aINfinty \\', max_size=200)


@settings(max_examples=200, deadline=None)
@given(depth=st.sampled_from([0, 1, 3, 4, 33, 2000, 20000]), inner=soup, closed=st.booleans())
def test_any_bracket_soup_is_a_batch_or_a_4xx(depth, inner, closed):
    body = '{"instances": ' + "[" * depth + inner + ("]" * depth + "}" if closed else "")
    try:
        batch = parse_body(body.encode(), "application/json", SIZE, max_instances=8)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message
    else:
        assert batch.shape[1:] == (*SIZE, 3) and np.isfinite(batch).all()


def test_a_valid_body_nested_three_levels_still_parses():
    body = json.dumps({"instances": [np.full((4, 4, 3), 7).tolist(), np.zeros((5, 3)).tolist()]}).encode()
    assert parse_body(body, "application/json", SIZE, max_instances=8).shape == (2, *SIZE, 3)


def _request(chunks: list[bytes], headers: dict[str, str]):
    """A Starlette request whose body arrives in ``chunks`` (a chunked upload); counts the chunks read."""
    from starlette.requests import Request

    sent = []

    async def receive():
        if len(sent) == len(chunks):
            return {"type": "http.disconnect"}
        sent.append(chunks[len(sent)])
        return {"type": "http.request", "body": sent[-1], "more_body": len(sent) < len(chunks)}

    scope = {"type": "http", "method": "POST", "path": "/predict",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    return Request(scope, receive), sent


def test_a_chunked_body_over_the_limit_is_refused_without_reading_the_rest():
    from tl_ray.serving.schema import read_body

    request, sent = _request([b"x" * 1000] * 50, {"transfer-encoding": "chunked"})
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(request, limit=2500))
    assert info.value.status == 413 and "over 2500 bytes; the limit is 2500 (serve.max_body_bytes)" in info.value.message
    assert len(sent) == 3  # stopped at the chunk that passed the limit, 47 left unread

    request, sent = _request([b"x" * 10], {"content-length": "99999"})
    with pytest.raises(RequestError, match="99999 bytes; the limit is 2500"):
        asyncio.run(read_body(request, limit=2500))
    assert sent == []  # refused on the header alone

    request, _ = _request([b'{"instances": ', b"[[[0]]]}"], {})
    assert asyncio.run(read_body(request, limit=2500)) == b'{"instances": [[[0]]]}'


def test_sigterm_and_sigint_ask_to_stop_and_a_second_signal_interrupts():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for first in (signal.SIGTERM, signal.SIGINT):
        with StopSignals() as stop:
            signal.raise_signal(first)
            assert stop.event.is_set() and stop.received == first.name
            with pytest.raises(KeyboardInterrupt, match="a second SIGTERM while draining"):
                signal.raise_signal(signal.SIGTERM)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_following_an_alias_retries_after_a_failed_read_and_refuses_a_failed_swap_once(monkeypatch):
    """`tl-ray serve --watch-alias`'s loop, with the registry and the application scripted: a moment where the
    application cannot be read is not a refusal; a version that fails to swap is printed once and not retried
    until the alias moves again."""
    import threading

    from tl_ray.errors import ServingError
    from tl_ray.serving import app
    from tl_ray.spec.serve import ServeSpec

    gone = ServingError("no Serve application named 'tl-ray' is running")
    # (the alias, what the application serves) at each check; the alias moves to v3 at the fourth.
    checks = iter([("m:v2", gone), ("m:v2", "m:v1"), ("m:v2", "m:v1"), ("m:v3", "m:v1")])
    stop, now, swaps, lines = threading.Event(), {}, [], []

    def resolve(storage, ref, serve_spec):
        now["alias"], now["served"] = next(checks, (None, None))
        if now["alias"] is None:
            stop.set()
            raise ServingError("stopped")
        return {"ModelReplica": now["alias"]}

    def served(name):
        if isinstance(now["served"], Exception):
            raise now["served"]
        return {"ModelReplica": now["served"]}

    def update(storage, ref, serve_spec, name):
        swaps.append(now["alias"])
        if now["alias"] == "m:v2":
            raise ServingError("m:v2 failed to load on a replica; still serving m:v1")
        return {"ModelReplica": now["alias"]}

    monkeypatch.setattr(app, "resolve_refs", resolve)
    monkeypatch.setattr(app, "served_refs", served)
    monkeypatch.setattr(app, "update", update)
    app.follow("/store", "m:production", ServeSpec(watch_interval_s=0.001), out=lines.append, stop=stop)
    assert swaps == ["m:v2", "m:v3"]  # v2 once, after the failed read; v3 once the alias moved
    assert lines.count("[serve] m:v2 failed to load on a replica; still serving m:v1") == 1
    assert "[serve] swapped to {'ModelReplica': 'm:v3'} (was {'ModelReplica': 'm:v1'})" in lines
