"""The lifetime of a serving process (``tl-ray serve``): serve until SIGTERM or Ctrl-C, then drain and stop.

Kubernetes and systemd stop a process with SIGTERM, and SIGKILL it after a grace period. Left to
Ray, the driver answers SIGTERM with a native stack dump and exit status 15, and
``serve.shutdown()`` stops the HTTP proxies at once, dropping the requests they carry. Here the
first SIGTERM or SIGINT deletes the application instead (``serve.delete``): each replica
finishes the requests it holds, up to the deployment's ``graceful_shutdown_timeout_s``, while the
proxies stay up to deliver the answers; then Serve shuts down (unless other applications still
run on the cluster) and the process exits 0. A second signal stops at once (KeyboardInterrupt).

Example:

>>> ray.init()                          # first: ray.init installs signal handlers of its own
>>> with StopSignals() as stop:
...     url = app.run(storage, "fashion-transfer:production", serve_spec)
...     serve_until(stop, storage, "fashion-transfer:production", serve_spec)
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

from tl_ray.spec import ServeSpec

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """A context in which SIGTERM and SIGINT ask the process to stop (``event`` is set) instead of killing
    it; a second signal raises KeyboardInterrupt. Leaving the context restores the previous handlers.

    Enter it in the main thread, after ``ray.init``.
    """

    def __init__(self):
        self.event = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for sig in SIGNALS:
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
    """Keeps the running application ``name`` serving (swapping versions with ``follow``, see
    ``app.follow``) until ``stop`` is set, then drains it and stops Serve."""
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
