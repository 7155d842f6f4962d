"""Each trial in its own process, forked from a template that has TensorFlow imported.

``tune.trial_process: fork`` (the default for single-worker trials). A Tune trial actor stays
light: it never imports TensorFlow, and Tune reuses it from trial to trial. The first trial of
an actor starts a template process (Python's ``forkserver``) that imports TensorFlow, Keras and
tl-ray's training modules, and nothing else: TensorFlow's runtime (its thread pools, devices)
never starts there. Every trial then trains in a child forked from the template, which starts
TensorFlow's runtime with the threads and devices of that trial, reports each epoch to the actor
over a pipe, and exits. Its memory goes back to the system with it, however many trials an
actor runs, and a trial costs a fork instead of a Ray worker start and a TensorFlow import.

The actor forwards each report to Tune and answers once Tune has stored the checkpoint, so a
child never deletes a checkpoint before it is kept. When Tune stops the trial, the actor kills
the child. A child killed (or out of memory) fails the trial like a dead worker would, so
``train.max_failures`` restarts it from its last checkpoint. A child outlives neither the
template nor the actor: the template exits with the actor, and the child is killed with it.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tl_ray.errors import TLRayError
from tl_ray.spec import Spec

# What the template imports once: everything a trial would otherwise import itself.
PRELOAD = [
    # The actor's main script (Ray's worker), imported once here instead of once per child.
    "tl_ray.train._template",
    "tensorflow",
    "keras",
    "pyarrow.parquet",
    "tl_ray.train.loop",
    "tl_ray.train.step",
    "tl_ray.train.checkpoint",
    "tl_ray.train.callbacks",
    "tl_ray.train.optimizers",
    "tl_ray.models.build",
    "tl_ray.models.freeze",
    "tl_ray.data.reader",
    "tl_ray.features",
]
_started_here = False  # this process started a template (an actor's first trial)


class TrialProcessDied(TLRayError):
    """A trial's process ended without finishing or raising (killed, out of memory)."""


class ChildTraceback(Exception):
    """The traceback of an exception raised in a trial's process, as text."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\n(in the trial's process)\n{self.text}"


def _context():
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    if not _started_here:
        ctx.set_forkserver_preload(PRELOAD)
        main = getattr(sys.modules["__main__"], "__file__", None)
        if main and getattr(sys.modules["__main__"], "__spec__", None) is None:  # a script, not ``-m``
            os.environ["TLRAY_TEMPLATE_MAIN"] = os.path.abspath(main)  # the template inherits it
    return ctx


def run(spec: Spec, reporter, *, threads: int, cpu_devices: int = 0, marks: dict | None = None) -> None:
    """Runs ``train(spec)`` in a child of this process's template, forwarding its reports to ``reporter``.

    ``reporter`` is the actor's (``TuneReporter``): it reports each epoch and gives the checkpoint to
    restore. ``marks`` holds the actor's start-up times (``runtime.startup_times`` in the child).

    Raises:
        the exception the trial raised (its traceback in the child is the cause), or
        TrialProcessDied: the child ended without a result (killed, out of memory).
    """
    global _started_here
    ctx = _context()
    restore = reporter.restore_dir()
    context = {
        "trial_id": getattr(reporter, "trial_id", None),
        "node_id": getattr(reporter, "node_id", None),
        "restore_dir": str(restore) if restore else None,
        "threads": threads,
        "cpu_devices": cpu_devices,
        "marks": dict(marks or {}, fork_requested=time.time(), template_started=0.0 if _started_here else 1.0),
    }
    # The child's temporary files (checkpoints before Tune keeps them) live here, so none outlives
    # the trial even when the child is killed mid-write.
    scratch = tempfile.mkdtemp(prefix="tlray-trial-")
    context["scratch"] = scratch
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child_main, args=(theirs, spec, context), name="tl-ray-trial", daemon=True)
    proc.start()
    _started_here = True
    theirs.close()
    done = False
    try:
        while True:
            try:
                kind, *payload = ours.recv()
            except (EOFError, OSError):  # the child's end closed: it died
                proc.join()
                raise TrialProcessDied(
                    f"the trial's process (pid {proc.pid}) ended without a result: {_exit_reason(proc.exitcode)}. "
                    "If it ran out of memory, lower data.batch_size or run fewer trials at once "
                    "(tune.max_concurrent_trials); train.max_failures restarts a trial from its last checkpoint."
                ) from None
            if kind == "report":
                metrics, checkpoint_dir = payload
                # The actor's own memory, which outlives the trials: flat when nothing leaks into it.
                metrics = dict(metrics, actor_rss_mb=_rss_mb())
                reporter.report(metrics, checkpoint_dir)  # returns once Tune stored the checkpoint
                try:
                    ours.send(("ack",))
                except OSError:  # the child died meanwhile: the next recv says how
                    pass
            elif kind == "error":
                exc, text = payload
                raise exc from ChildTraceback(text)
            else:  # done: the child is exiting. Not waited for (unmapping its memory takes a few hundredths
                # of a second); multiprocessing reaps it when the next child starts, or at the actor's exit.
                done = True
                return
    finally:
        # Tune stopping the trial ends ``reporter.report`` with SystemExit: the child goes too.
        if not done and proc.is_alive():
            proc.kill()
            proc.join()
        shutil.rmtree(scratch, ignore_errors=True)
        ours.close()


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:  # resident pages (Linux)
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class PipeReporter:
    """The child's reporter: sends each epoch to the actor and waits until Tune has kept it."""

    def __init__(self, conn, trial_id: str | None, restore_dir: str | None):
        self._conn = conn
        self.trial_id = trial_id
        self._restore = Path(restore_dir) if restore_dir else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self._conn.send(("report", metrics, checkpoint_dir))
        self._conn.recv()  # the ack; EOF (the actor went away) ends this process

    def restore_dir(self) -> Path | None:
        return self._restore


def _die_with_parent() -> None:
    """Kills this process when the template (its parent) exits, as the template does with the actor."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the template went away before the line above
        os._exit(1)


def _child_main(conn, spec: Spec, context: dict) -> None:
    import gc

    # What the template imported lives as long as this process: Python's collector skips it instead
    # of scanning it (a quarter to half a second per full collection) and copying its pages.
    gc.freeze()
    _die_with_parent()
    from tl_ray.train import runtime

    runtime.MARKS.update(context["marks"], process_start=time.time())
    tempfile.tempdir = context["scratch"]
    runtime.TRIAL_CONTEXT.update(trial_id=context["trial_id"], node_id=context["node_id"])
    try:
        from tl_ray.train.loop import train

        runtime.begin_trial()
        runtime.configure_tensorflow(context["threads"], context["cpu_devices"])
        train(spec, PipeReporter(conn, context["trial_id"], context["restore_dir"]))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the actor
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))  # what the actor will do with it
        except Exception:  # it does not travel: its type and message do
            exc = TLRayError(f"{type(exc).__name__}: {exc}")
        conn.send(("error", exc, text))
        conn.close()
        os._exit(1)
    conn.send(("done",))
    conn.close()
    # Skip interpreter teardown (TensorFlow's is slow and nothing is left to flush).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
