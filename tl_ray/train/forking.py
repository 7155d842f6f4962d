"""Forking trial processes from a template process (Python's ``forkserver``), the actor's own or its node's.

``OwnProcess`` forks from this process's own template (started at its first use); ``connect`` gives the
class that forks from another process's template (the node's, ``tl_ray.train.node_template``). Both send
the child no main script. A child of the node's template writes to its actor's outputs (``Outputs``) and
exits with its actor (``exit_with_parent``).
"""

from __future__ import annotations

import os
import threading
from multiprocessing import context, forkserver, popen_forkserver, resource_tracker


class _Server(forkserver.ForkServer):
    """A client of the node's template: it connects to it and never starts one."""

    def __init__(self, info: dict):
        super().__init__()
        self._forkserver_address = info["address"]
        # Children keep this as the "alive" end of their own template's pipe; they never start one.
        self._forkserver_alive_fd = _devnull()
        if info.get("authkey") is not None:
            self._forkserver_authkey = info["authkey"]

    def ensure_running(self):
        resource_tracker.ensure_running()


_server: _Server | None = None  # this actor's connection to its node's template (connect)
_null_fd: int | None = None


def _devnull() -> int:
    global _null_fd
    if _null_fd is None:
        _null_fd = os.open(os.devnull, os.O_RDONLY)
    return _null_fd


def connect(info: dict):
    """The ``multiprocessing`` Process class whose instances are forked from the template in ``info``."""
    global _server
    _server = _Server(info)
    return NodeProcess


class _Popen(popen_forkserver.Popen):
    """``popen_forkserver.Popen`` without the requesting process's main script.

    Python's ``forkserver`` child runs the parent's main script again (as ``__mp_main__``) before it
    unpickles its target. A trial process's target lives in a module, and a Ray actor's main script is
    Ray's worker: running it would import Ray in every trial process for nothing (and a script that
    starts trials itself, without an ``if __name__ == "__main__":`` guard, would fail each child with
    Python's bootstrapping error). The child is sent everything else Python sends (``sys.path``, the
    working folder, the authentication key).
    """

    def _server(self):
        return forkserver._forkserver  # this process's own template, started here if not yet running

    def _launch(self, process_obj):  # popen_forkserver.Popen._launch, less the main script
        import io

        from multiprocessing import spawn, util
        from multiprocessing.context import reduction, set_spawning_popen

        prep_data = spawn.get_preparation_data(process_obj._name)
        prep_data.pop("init_main_from_path", None)
        prep_data.pop("init_main_from_name", None)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = self._server().connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # the child's sentinel of this process
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _NodePopen(_Popen):
    def _server(self):
        return _server  # the node's template (connect)


class OwnProcess(context.ForkServerProcess):
    """A process forked from this process's own template (``multiprocessing``'s ``forkserver``)."""

    @staticmethod
    def _Popen(process_obj):
        return _Popen(process_obj)


class NodeProcess(context.ForkServerProcess):
    """A process forked from the node's template (``connect`` first)."""

    @staticmethod
    def _Popen(process_obj):
        return _NodePopen(process_obj)


class Outputs:
    """The stdout and stderr of the process that pickles it (the actor), as the process that unpickles it (a
    trial process forked from the node's template) inherits them: its output then goes to the actor's log."""

    def __init__(self, fds: tuple[int, int] | None = None):
        self.fds = fds

    def __reduce__(self):
        from multiprocessing import reduction

        return _rebuild_outputs, (reduction.DupFd(1), reduction.DupFd(2))

    def attach(self) -> None:
        """Makes them this process's stdout and stderr."""
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        for fd, target in zip(self.fds, (1, 2)):
            os.dup2(fd, target)
            os.close(fd)


def _rebuild_outputs(out, err) -> Outputs:
    return Outputs((out.detach(), err.detach()))


def exit_with_parent() -> None:
    """In a forked trial process: exits when the process that asked for it (its actor) ends."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="tl-ray-actor-watch", daemon=True).start()
