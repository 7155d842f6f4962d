"""One trial template per node, started by the sweep's driver and shared by its trial actors.

Without it, each Tune trial actor starts its own template (``tl_ray.train.trial_process``) at its
first trial: every actor of a node imports TensorFlow once more, after Tune has started it, and
holds one more template's memory. With it, the driver starts a ``NodeTemplate`` actor (no CPUs
reserved) on every node first thing in the sweep, before it imports Tune. Its template imports
TensorFlow while the driver imports and starts Tune, and Tune starts its trial actors. Every trial
process on the node is forked from that one template. The actors of later sweeps and stages of the
same driver find it ready. It ends with the driver.

A trial process forked from a node template is a child of that template, not of its actor. So:

- the actor still talks to it over its own pipe and kills it by pid; the template reports its exit
  status to the actor as Python's ``forkserver`` does to the process that asked for the fork;
- it takes the actor's environment (Ray's ``CUDA_VISIBLE_DEVICES`` for the actor, the job's
  variables) before TensorFlow's runtime starts, and the actor's working folder per trial. What
  TensorFlow and Keras read at import (``KERAS_BACKEND``, ``TF_ENABLE_ONEDNN_OPTS``,
  ``TF_CPP_MIN_LOG_LEVEL``) is the template's, that is the job's;
- it exits when its actor does (it watches the actor's end of a pipe) and when the template does.

The driver also starts a template on each node that joins while the sweep runs
(``tl_ray.tune.templates.NodeTemplates``). An actor whose node has no template yet, or whose
template died, starts its own. A template that dies (out of memory) takes the trial processes
forked from it with it: each such trial fails as a killed process does and restarts from its
checkpoint (``train.max_failures``).
"""

from __future__ import annotations

import os
import threading
from multiprocessing import context, forkserver, popen_forkserver, resource_tracker

NAME = "tl-ray-trial-template:{node_id}"
_hosts: dict[str, object] = {}  # the driver's handles, by node id: the actors live as long as it holds them


class NodeTemplate:
    """The Ray actor that owns a node's template process (Python's ``forkserver``)."""

    def __init__(self):
        from tl_ray.train import trial_process

        trial_process.preload_template()
        forkserver.ensure_running()  # returns once the template runs; it imports TensorFlow meanwhile

    def connection(self) -> dict:
        """What an actor needs to fork from the template; restarts a template that died."""
        forkserver.ensure_running()
        server = forkserver._forkserver
        return {"address": server._forkserver_address, "pid": server._forkserver_pid,
                "authkey": getattr(server, "_forkserver_authkey", None)}


def start_node_templates() -> None:
    """Starts a template on every live node of the connected cluster that has none; does not wait."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(num_cpus=0, max_restarts=0)(NodeTemplate)
    # Nodes that can run trial processes: alive, with CPUs.
    alive = [node["NodeID"] for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
    for gone in set(_hosts) - set(alive):  # a lost node's, or an earlier cluster's
        del _hosts[gone]
    for node_id in alive:
        if node_id in _hosts:
            continue
        _hosts[node_id] = actor.options(
            name=NAME.format(node_id=node_id), get_if_exists=True, lifetime=None,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote()


def stop_node_templates(timeout: float = 30.0) -> None:
    """Ends the templates this driver started (they end with it anyway), and their trial processes; returns
    once their names are free for the next sweep's."""
    import time

    import ray

    names = [NAME.format(node_id=node_id) for node_id in _hosts]
    while _hosts:
        ray.kill(_hosts.popitem()[1])
    deadline = time.monotonic() + timeout
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name)
            except ValueError:
                break
            time.sleep(0.05)


def find(timeout: float = 30.0) -> dict | None:
    """In a trial actor: the connection to this node's template, None when the node has none."""
    try:
        import ray

        if not ray.is_initialized():  # not in a Ray actor
            return None
        handle = ray.get_actor(NAME.format(node_id=ray.get_runtime_context().get_node_id()))
        return ray.get(handle.connection.remote(), timeout=timeout)
    except Exception:  # no template on this node (or it died): the actor starts its own
        return None


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
