"""The lifetime of ``tl-ray serve``: serve until SIGTERM or Ctrl-C, then drain and stop.

The first signal deletes the application, so each replica answers what it holds while the proxies stay up
(``serve.shutdown()`` would drop those requests), then the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

from tl_ray.spec import ServeSpec


class StopSignals:
    """A context in which SIGTERM and SIGINT set ``event`` instead of killing the process; a second signal
    raises KeyboardInterrupt. Enter it in the main thread, after ``ray.init`` (which installs handlers of its
    own); leaving it restores the previous handlers.
    """

    def __init__(self):
        self.event = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt(f"a second {signal.Signals(signum).name} while draining")
        self.received = signal.Signals(signum).name
        self.event.set()


def serve_until(
    stop: StopSignals, storage: str, ref: str, serve_spec: ServeSpec, name: str = "tl-ray",
    out: Callable[[str], None] = print, follow: bool = False,
) -> None:
    """Keeps the application ``name`` serving (with ``follow``, see ``app.follow``) until ``stop`` is set,
    then drains it."""
    from tl_ray.serving import app

    if follow:
        app.follow(storage, ref, serve_spec, name=name, out=out, stop=stop.event)
    else:
        stop.event.wait()
    drain(name, out, reason=stop.received or "stop")


def drain(name: str, out: Callable[[str], None] = print, reason: str = "stop") -> None:
    """Deletes the application ``name`` once its replicas have answered the requests they hold, then shuts
    Serve down unless other applications run on the cluster."""
    from ray import serve

    out(f"[serve] {reason}: answering the requests in flight, then stopping")
    serve.delete(name)  # blocks until every replica has drained and exited
    if not serve.status().applications:
        serve.shutdown()
    out("[serve] stopped")
