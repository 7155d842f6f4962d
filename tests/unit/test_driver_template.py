"""The template a driver starts before its local Ray, and the node's NodeTemplate adopting it (without Ray:
the actor's class is used as a plain object, in a process of its own)."""

from __future__ import annotations

import multiprocessing
import os
import signal

from tl_ray.train import driver_template


def _adopt_then_lose(queue) -> None:
    from tl_ray.train.node_template import NodeTemplate

    out = {"stderr_fd_target": os.readlink("/proc/self/fd/2")}
    driver_template.start()
    info = driver_template.info()
    out["info"] = {k: info[k] for k in ("pid", "log")}
    out["parent"] = _ppid(info["pid"])
    out["log_exists"] = os.path.exists(info["log"])
    out["stderr_after"] = os.readlink("/proc/self/fd/2")  # this process's own stderr, back in place
    driver_template.bind("127.0.0.1:1")
    out["info_other_ray"] = driver_template.info("127.0.0.1:2")
    out["info_its_ray"] = driver_template.info("127.0.0.1:1")["pid"]
    host = NodeTemplate(0.0, adopt=info)
    out["adopted"] = host.connection()["pid"]
    out["status_pid"] = host.status()["pid"]
    os.kill(info["pid"], signal.SIGKILL)
    os.waitid(os.P_PID, info["pid"], os.WEXITED | os.WNOWAIT)  # dead; a zombie until reaped
    out["running_after_kill"] = driver_template.running(info["pid"])
    out["info_after_kill"] = driver_template.info()
    out["replacement"] = host.connection()["pid"]  # the actor's own, started now
    out["replacement_parent"] = _ppid(out["replacement"])
    queue.put(out)


def _start_then_stop(queue) -> None:
    driver_template.start()
    pid = driver_template.info()["pid"]
    driver_template.stop()
    out = {"pid": pid, "exists": os.path.exists(f"/proc/{pid}"), "info": driver_template.info()}
    driver_template.start()  # a later local Ray of the same driver
    out["again"] = driver_template.info()["pid"]
    queue.put(out)


def _dead_at_start(queue) -> None:
    from tl_ray.train.node_template import NodeTemplate

    host = NodeTemplate(0.0, adopt={"pid": 2**22 + 1, "address": "/nonexistent", "authkey": None})
    own = host.connection()["pid"]
    queue.put({"own": own, "parent": _ppid(own)})


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:  # "pid (name) state ppid ..."
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _run(target) -> tuple[dict, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue,))
    proc.start()
    out = queue.get(timeout=300)
    proc.join(timeout=60)
    return out, proc.pid


def test_a_node_template_adopts_the_drivers_and_starts_its_own_once_it_died():
    out, pid = _run(_adopt_then_lose)
    assert out["parent"] == pid  # the driver's own child
    assert out["log_exists"] and not os.path.exists(out["info"]["log"])  # removed when the driver exited
    assert out["stderr_after"] == out["stderr_fd_target"]
    assert out["info_other_ray"] is None and out["info_its_ray"] == out["info"]["pid"]
    assert out["adopted"] == out["status_pid"] == out["info"]["pid"]
    assert out["running_after_kill"] is False and out["info_after_kill"] is None
    assert out["replacement"] != out["info"]["pid"] and out["replacement_parent"] == pid


def test_a_node_template_whose_adopted_template_is_gone_at_its_start_starts_its_own():
    out, pid = _run(_dead_at_start)
    assert out["own"] != 2**22 + 1 and out["parent"] == pid


def test_stopping_the_drivers_template_ends_it_and_reaps_it():
    out, _ = _run(_start_then_stop)
    assert out["exists"] is False and out["info"] is None  # gone, not a zombie left to the driver's exit
    assert out["again"] not in (None, out["pid"])
