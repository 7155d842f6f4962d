"""One trial template per node, started by the sweep's driver and shared by its trial actors.

Without it, each Tune trial actor starts its own template (``tl_ray.train.trial_process``) at its
first trial: every actor of a node imports TensorFlow once more, after Tune has started it, and
holds one more template's memory. With it, the driver starts a ``NodeTemplate`` actor (no CPUs
reserved) on every node first thing in the sweep, before it imports Tune. Its template imports
TensorFlow while the driver imports and starts Tune, and Tune starts its trial actors. Every trial
process on the node is forked from that one template. The actors of later sweeps and stages of the
same driver find it ready.

How long it stays is ``tune.template_keep_alive_s`` (600 s by default). Above 0 the actor is detached
(Ray namespace ``tl-ray``): it outlives the job, and the cluster's next sweeps (later ``tl-ray tune``
jobs on a ``ray start`` cluster) fork from it without importing TensorFlow again, as Ray's own idle
workers and SageMaker's warm pools spare a job its start. It ends by itself once it has had no trial
process for that long, and with the cluster. It is named after ``template_key``: tl-ray's code, the
packages the template imported, Python, and the job's Ray runtime environment. A job with any of them
changed starts a template of its own and leaves the other to expire. With 0, the template ends with
the driver, as a local cluster started by the driver (``tl-ray tune`` without ``RAY_ADDRESS``) does
anyway.

A trial process forked from a node template is a child of that template, not of its actor. So:

- the actor still talks to it over its own pipe and kills it by pid; the template reports its exit
  status to the actor as Python's ``forkserver`` does to the process that asked for the fork;
- it takes the actor's environment (Ray's ``CUDA_VISIBLE_DEVICES`` for the actor, the job's
  variables) before TensorFlow's runtime starts, and the actor's working folder per trial. What
  TensorFlow and Keras read at import (``KERAS_BACKEND``, ``TF_ENABLE_ONEDNN_OPTS``,
  ``TF_CPP_MIN_LOG_LEVEL``) is the template's: the cluster's and the runtime environment's of the job
  that started it, which is in its key;
- it exits when its actor does (it watches the actor's end of a pipe) and when the template does.

A driver that starts a local Ray starts its node's template before Ray (``tl_ray.train.driver_template``),
so that TensorFlow's import runs while Ray starts. The sweep then starts no ``NodeTemplate`` on that node:
its trial actors find the driver's template in the cluster's key-value store. Once that template has
ended, the sweep starts a ``NodeTemplate`` there as on any node.

The driver also starts a template on each node that joins while the sweep runs
(``tl_ray.tune.templates.NodeTemplates``). An actor whose node has no template yet, or whose
template died, starts its own. A template that dies (out of memory) takes the trial processes
forked from it with it: each such trial fails as a killed process does and restarts from its
checkpoint (``train.max_failures``).
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing import forkserver

NAME = "tl-ray-trial-template:{node_id}"
KEPT_NAME = "tl-ray-trial-template:{node_id}:{key}"
KEPT_NAMESPACE = "tl-ray"  # kept templates outlive the job that started them: a namespace every job can look in
_hosts: dict[str, object] = {}  # the driver's handles, by node id: the actors live as long as it holds them


class NodeTemplate:
    """The Ray actor that owns a node's template process (Python's ``forkserver``).

    With ``keep_alive_s`` > 0 it is detached: it outlives the job that started it and ends by itself once its
    template has had no trial process for ``keep_alive_s`` seconds (the last sweep's value).
    """

    def __init__(self, keep_alive_s: float = 0.0):
        from tl_ray.train import trial_process

        trial_process.preload_template()
        forkserver.ensure_running()  # returns once the template runs; it imports TensorFlow meanwhile
        self._keep_alive = keep_alive_s
        self._used = time.monotonic()
        self._lock = threading.Lock()
        self._expired = False
        if keep_alive_s > 0:
            threading.Thread(target=self._watch, name="tl-ray-template-keep-alive", daemon=True).start()

    def connection(self) -> dict:
        """What an actor needs to fork from the template; restarts a template that died."""
        if not self._use():  # ending: the caller's actor starts a template of its own
            raise RuntimeError("this trial template is ending (idle for its keep-alive)")
        forkserver.ensure_running()
        server = forkserver._forkserver
        return {"address": server._forkserver_address, "pid": server._forkserver_pid,
                "authkey": getattr(server, "_forkserver_authkey", None)}

    @staticmethod
    def _pid() -> int | None:
        return forkserver._forkserver._forkserver_pid

    def ready(self) -> None:
        """Returns once the template has imported what a trial needs: it forks a process that exits at once,
        which the template serves only after its imports."""
        from tl_ray.train import forking

        proc = forking.OwnProcess(target=_exit_at_once, name="tl-ray-template-probe")
        proc.start()
        proc.join()

    def touch(self, keep_alive_s: float) -> bool:
        """A sweep starts that will use this template: its keep-alive counts from now, and is the sweep's.
        False when it is ending (the sweep's actors then start templates of their own)."""
        return self._use(keep_alive_s)

    def status(self) -> dict:
        """The template's process, its memory, its trial processes, and how long until it expires (kept ones)."""
        import psutil

        with self._lock:
            pid = self._pid()
            children = _children(pid)
            idle = 0.0 if children else time.monotonic() - self._used
            try:
                rss = psutil.Process(pid).memory_info().rss / 2**20 if pid else 0.0
            except psutil.Error:  # gone: the next trial's connection starts it again
                rss = 0.0
            return {"pid": pid, "rss_mb": rss, "trial_processes": children, "idle_s": idle,
                    "keep_alive_s": self._keep_alive, "ending": self._expired}

    def _use(self, keep_alive_s: float = 0.0) -> bool:
        with self._lock:
            if self._expired:
                return False
            self._used = time.monotonic()
            if keep_alive_s > 0:
                self._keep_alive = keep_alive_s
            return True

    def _watch(self) -> None:
        """Ends this actor, and its template with it, once the template has been idle for its keep-alive."""
        import ray

        while True:
            time.sleep(min(10.0, max(0.5, self._keep_alive / 4)))
            with self._lock:
                children = _children(self._pid())
                if children:
                    self._used = time.monotonic()  # the keep-alive counts from the last trial process's end
                if not _idle_for(self._keep_alive, self._used, children):
                    continue
                self._expired = True
            # Ray ends the worker and the processes it started: its own template goes with it.
            try:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            except Exception:  # noqa: BLE001 - Ray unreachable: the process ends itself, its template with it
                os._exit(0)
            return


def _exit_at_once() -> None:
    """The target of ``NodeTemplate.ready``'s probe."""


def _idle_for(keep_alive_s: float, used: float, children: int, now: float | None = None) -> bool:
    """Whether a kept template expires: no trial process, and none asked for in ``keep_alive_s`` seconds."""
    now = time.monotonic() if now is None else now
    return keep_alive_s > 0 and children == 0 and now - used >= keep_alive_s


def _children(pid: int | None) -> int:
    """How many processes ``pid`` has (a template's: its trial processes); 0 when it has gone."""
    if not pid:
        return 0
    try:
        import psutil

        return len(psutil.Process(pid).children())
    except Exception:  # noqa: BLE001 - gone
        return 0


def template_key() -> str:
    """What a kept template must share with a sweep that forks from it: tl-ray's code, the installed
    packages (every distribution's name and version on ``sys.path``), Python, and the job's Ray runtime
    environment (working_dir, pip, env_vars, ...). A sweep with any of them changed starts a template of
    its own."""
    import hashlib
    import json
    import sys
    from pathlib import Path

    import ray

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent  # the tl_ray package
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    runtime_env = dict(ray.get_runtime_context().runtime_env or {}) if ray.is_initialized() else {}
    digest.update(json.dumps({"packages": _distributions(), "python": [sys.version, sys.prefix],
                              "runtime_env": runtime_env}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _driver_key() -> str:
    """This driver's ``template_key``, computed once per Ray job: every sweep and stage it runs looks in one
    place, whatever is edited on disk meanwhile."""
    import ray

    job = ray.get_runtime_context().get_job_id() if ray.is_initialized() else None
    if _keys.get("job", "") != job:
        _keys.update(job=job, key=template_key())
    return _keys["key"]


def _distributions() -> list[str]:
    """The installed distributions, as their metadata folders name them (``numpy-2.1.3.dist-info``). Not the
    folder the command started from (``sys.path[0]``: the script's, or the working directory with ``-m``),
    whose build leftovers (``tl_ray.egg-info``) would give one environment two keys."""
    import sys

    found = set()
    for entry in sys.path if sys.flags.safe_path else sys.path[1:]:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip, or gone
            continue
        found.update(n for n in names if n.endswith((".dist-info", ".egg-info")))
    return sorted(found)


_keys: dict = {}  # this driver's template_key and the Ray job it was computed in (_driver_key)


def locator(keep_alive_s: float) -> dict:
    """Where the sweep's trial actors find their node's template: the name (``{node_id}`` to fill) and the
    Ray namespace. A template kept for later sweeps is named after the driver's ``template_key``, in a
    namespace of its own; one that ends with the driver is the job's."""
    if keep_alive_s > 0:
        return {"name": KEPT_NAME.replace("{key}", _driver_key()), "namespace": KEPT_NAMESPACE,
                "keep_alive_s": keep_alive_s}
    return {"name": NAME, "namespace": None, "keep_alive_s": 0.0}


def start_node_templates(where: dict | None = None) -> None:
    """Starts a template on every live node of the connected cluster that has none; does not wait for it.

    ``where`` is the sweep's ``locator`` (default: templates that end with the driver). A kept template that
    is already up is told that a sweep starts (its keep-alive counts from now), and its answer awaited: one
    that is ending is replaced once it has gone. Where a kept template starts, the node's kept templates of
    other keys that have no trial process end (``_end_idle_kept``).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from tl_ray.train import driver_template

    where = where or locator(0.0)
    keep_alive = where["keep_alive_s"]
    # The template this driver started before the local Ray it started serves this node: no actor here.
    context = ray.get_runtime_context()
    here = context.get_node_id() if driver_template.info(context.gcs_address) else None
    actor = ray.remote(num_cpus=0, max_restarts=0)(NodeTemplate)
    # Nodes that can run trial processes: alive, with CPUs.
    alive = [node["NodeID"] for node in ray.nodes() if node.get("Alive") and node.get("Resources", {}).get("CPU", 0) > 0]
    for gone in set(_hosts) - set(alive):  # a lost node's, or an earlier cluster's
        del _hosts[gone]
    started = []
    for node_id in alive:
        if node_id == here:
            driver_template.publish(node_id, keep_alive)
            continue
        if keep_alive <= 0 and node_id in _hosts:
            continue
        name = where["name"].format(node_id=node_id)
        if keep_alive > 0 and _touch(name, where["namespace"], keep_alive):
            continue  # kept from an earlier sweep, and told that this one starts
        handle = actor.options(
            name=name, namespace=where["namespace"], get_if_exists=True,
            lifetime="detached" if keep_alive > 0 else None,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(keep_alive)
        if keep_alive <= 0:
            _hosts[node_id] = handle
        else:
            started.append(name)
    if started:
        _end_idle_kept(started)


def _end_idle_kept(started: list[str], timeout: float = 5.0) -> list[str]:
    """Ends the kept templates of other keys, on the nodes of the ``started`` ones, that have no trial process;
    returns their names. A node keeps one idle template: the newest key's (tl-ray's code, the packages or the
    job's runtime environment changed). Each holds about 0.6 GB; one with trial processes, another job's, stays.
    """
    import ray

    nodes = {name.split(":")[1] for name in started}  # tl-ray-trial-template:{node_id}:{key}
    others = [n for n in _kept_names() if n.split(":")[1] in nodes and n not in started]
    ended = []
    for row in kept_templates(timeout, others) if others else []:
        status = row["status"]
        if status is None or status["trial_processes"] or status["ending"]:
            continue
        try:
            ray.kill(ray.get_actor(row["name"], namespace=KEPT_NAMESPACE))
        except ValueError:  # expired meanwhile
            continue
        ended.append(row["name"])
    return ended


def _touch(name: str, namespace: str, keep_alive_s: float, timeout: float = 10.0) -> bool:
    """Tells a kept template up under ``name`` that a sweep starts (its keep-alive counts from now); False
    when there is none, or none any more once one that was ending has gone (its name is free again)."""
    import ray

    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    try:
        if ray.get(handle.touch.remote(keep_alive_s), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001, S110 - died meanwhile (its name is freed), or too busy: a new one
        pass
    _wait_gone([name], namespace, timeout)
    return False


def stop_node_templates(timeout: float = 30.0) -> None:
    """Ends the templates this driver started and holds (they end with it anyway), and their trial processes;
    returns once their names are free for the next sweep's. Kept templates (``keep_alive_s``) are the
    cluster's, not the driver's: ``stop_kept_templates`` ends those."""
    import ray

    from tl_ray.train import driver_template

    names = [NAME.format(node_id=node_id) for node_id in _hosts]
    while _hosts:
        ray.kill(_hosts.popitem()[1])
    _wait_gone(names, None, timeout)
    driver_template.stop()  # the one this driver started before its local Ray


def stop_kept_templates(timeout: float = 30.0) -> int:
    """Ends every kept template of the connected cluster, whatever its key, and their trial processes;
    returns how many there were."""
    import ray

    from tl_ray.train import driver_template

    names = _kept_names()
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=KEPT_NAMESPACE))
        except ValueError:  # expired meanwhile
            pass
    _wait_gone(names, KEPT_NAMESPACE, timeout)
    driver_template.stop()  # the one this driver started before its local Ray
    return len(names)


def _kept_names() -> list[str]:
    from ray.util import list_named_actors

    return sorted(a["name"] for a in list_named_actors(all_namespaces=True)
                  if a.get("namespace") == KEPT_NAMESPACE and a["name"].startswith(KEPT_NAME.split("{")[0]))


def kept_templates(timeout: float = 10.0, names: list[str] | None = None) -> list[dict]:
    """Every kept template of the connected cluster (or those of ``names``): its name, node, key and
    ``NodeTemplate.status``; ``status`` None for one that did not answer within ``timeout`` (starting, or
    ending). All are asked at once."""
    import ray

    asked = {}
    for name in _kept_names() if names is None else names:
        try:
            asked[name] = ray.get_actor(name, namespace=KEPT_NAMESPACE).status.remote()
        except ValueError:  # expired meanwhile
            continue
    done, _ = ray.wait(list(asked.values()), num_returns=len(asked), timeout=timeout) if asked else ([], [])
    rows = []
    for name, ref in asked.items():
        _, node_id, key = name.split(":")
        status = None
        if ref in done:
            try:
                status = ray.get(ref)
            except Exception:  # noqa: BLE001, S110 - died while answering: shown as not answering
                pass
        rows.append({"name": name, "node_id": node_id, "key": key, "status": status})
    return rows


def start_kept_templates(keep_alive_s: float, timeout: float = 120.0) -> list[str]:
    """Starts a kept template (``keep_alive_s`` > 0) on every live node that has none for this process's
    ``template_key``, as a sweep's start would, and returns once each has imported what a trial needs;
    returns their node ids. A cluster's first sweep then forks from them at once, if its key is the same: the
    same tl-ray, packages and Python, and a job without a runtime environment of its own (``tl-ray tune`` run
    on a node of the cluster)."""
    import ray

    if keep_alive_s <= 0:
        raise ValueError(f"a kept template needs a keep-alive above 0 s. Received: {keep_alive_s}")
    where = locator(keep_alive_s)
    start_node_templates(where)
    started = []
    handles = {}
    for node in ray.nodes():
        node_id = node["NodeID"]
        try:
            handles[node_id] = ray.get_actor(where["name"].format(node_id=node_id), namespace=where["namespace"])
        except ValueError:  # no CPUs, gone, or joined after the start: its first sweep starts one
            continue
    waits = {node_id: handle.ready.remote() for node_id, handle in handles.items()}  # all nodes at once
    for node_id, waiting in waits.items():
        try:
            ray.get(waiting, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - its start failed or hangs: say which node
            from tl_ray.errors import ClusterError

            raise ClusterError(f"the trial template on node {node_id} did not start within {timeout:g} s "
                               f"({type(exc).__name__}: {exc}). Check that node's Ray logs (raylet.err, "
                               "worker-*.err), or end it with `tl-ray templates stop`.") from None
        started.append(node_id)
    return started


def _wait_gone(names: list[str], namespace: str | None, timeout: float) -> None:
    import ray

    deadline = time.monotonic() + timeout
    for name in names:
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=namespace)
            except ValueError:
                break
            time.sleep(0.05)


def find(where: dict | None = None, timeout: float = 30.0) -> dict | None:
    """In a trial actor: the connection to this node's template (``where``: the sweep's ``locator``), None
    when the node has none."""
    try:
        import ray

        if not ray.is_initialized():  # not in a Ray actor
            return None
        from tl_ray.train import driver_template

        where = where or locator(0.0)
        node_id = ray.get_runtime_context().get_node_id()
        mine = driver_template.lookup(node_id)  # the template of the driver that started this local Ray
        if mine is not None:
            return mine
        name = where["name"].format(node_id=node_id)
        handle = ray.get_actor(name, namespace=where["namespace"])
        return ray.get(handle.connection.remote(), timeout=timeout)
    except Exception:  # no template on this node (or it died): the actor starts its own
        return None
