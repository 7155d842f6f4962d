"""The template a driver starts before its local Ray (without Ray; each case in a process of its own)."""

from __future__ import annotations

import multiprocessing
import os
import signal

from tl_ray.train import driver_template


def _start_then_lose(queue) -> None:
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
    os.kill(info["pid"], signal.SIGKILL)
    os.waitid(os.P_PID, info["pid"], os.WEXITED | os.WNOWAIT)  # dead; a zombie until reaped
    out["running_after_kill"] = driver_template.running(info["pid"])
    out["info_after_kill"] = driver_template.info()
    queue.put(out)


def _idle_then_busy(queue) -> None:
    """A keep-alive ends the template only once it has had no trial process for that long."""
    import time
    from multiprocessing import forkserver

    from tl_ray.train import forking

    driver_template.start()
    info = driver_template.info()
    pid = info["pid"]
    # A trial process of the template keeps it: the template's child, alive for three keep-alives.
    forking.connect({k: info[k] for k in ("address", "pid", "authkey")})
    child = forking.NodeProcess(target=time.sleep, args=(3.0,), daemon=True)
    child.start()
    driver_template.keep_alive(1.0)
    out = {"child_of_template": _ppid(child.pid) == pid}
    child.join()
    idle_from = time.monotonic()
    out["alive_after_child"] = driver_template.running(pid) and driver_template.info() is not None
    deadline = idle_from + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:  # ended and reaped
        time.sleep(0.05)
    out["idle_s"] = time.monotonic() - idle_from
    out["ended"] = not os.path.exists(f"/proc/{pid}") and driver_template.info() is None
    out["forkserver_reset"] = forkserver._forkserver._forkserver_pid is None
    queue.put(out)


def _start_then_stop(queue) -> None:
    driver_template.start()
    pid = driver_template.info()["pid"]
    driver_template.stop()
    out = {"pid": pid, "exists": os.path.exists(f"/proc/{pid}"), "info": driver_template.info()}
    driver_template.start()  # a later local Ray of the same driver
    out["again"] = driver_template.info()["pid"]
    queue.put(out)


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


def test_the_drivers_template_is_its_child_bound_to_its_ray_and_known_gone_once_it_died():
    out, pid = _run(_start_then_lose)
    assert out["parent"] == pid  # the driver's own child
    assert out["log_exists"] and not os.path.exists(out["info"]["log"])  # removed when the driver exited
    assert out["stderr_after"] == out["stderr_fd_target"]
    assert out["info_other_ray"] is None and out["info_its_ray"] == out["info"]["pid"]
    assert out["running_after_kill"] is False and out["info_after_kill"] is None


def test_a_keep_alive_ends_the_template_once_it_has_had_no_trial_process_for_that_long():
    out, _ = _run(_idle_then_busy)
    assert out["child_of_template"]
    assert out["alive_after_child"]  # 3 s of a trial process outlasted three keep-alives of 1 s
    assert out["ended"] and out["forkserver_reset"]
    # Ended once idle for the keep-alive (1 s, counted from the watcher's last look at the child, every 0.25 s),
    # not as soon as its last child ended.
    assert out["idle_s"] >= 0.75


def test_stopping_the_drivers_template_ends_it_and_reaps_it():
    out, _ = _run(_start_then_stop)
    assert out["exists"] is False and out["info"] is None  # gone, not a zombie left to the driver's exit
    assert out["again"] not in (None, out["pid"])
