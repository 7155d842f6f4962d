"""Each trial in its own process, forked from a template that has TensorFlow imported.

``tune.trial_process: fork`` (the default for single-worker trials). A Tune trial actor stays
light: it never imports TensorFlow, and Tune reuses it from trial to trial. A template process
(Python's ``forkserver``) imports TensorFlow, Keras, pyarrow and tl-ray's training modules, but not
Ray, and TensorFlow's runtime (its thread pools, devices) never starts there. The template is the
node's, which the sweep's driver started (``tl_ray.train.node_template``), or else one the
actor starts at its first trial. Trials then train in a child forked from the template, which starts
TensorFlow's runtime with the threads and devices of its first trial and reports each epoch to the
actor over a pipe. A child runs ``tune.trials_per_process`` of the actor's trials one after another
(clearing Keras's state between them; the later ones skip the runtime's start and first kernel
runs), then exits. Its memory goes back to the system with it, however many trials an actor runs,
and a trial costs at most a fork instead of a Ray worker start and a TensorFlow import.

The actor forwards each report to Tune and answers once Tune has stored the checkpoint, so a
child never deletes a checkpoint before it is kept. An epoch without a checkpoint is not waited for:
the child trains on while the actor hands its report to Tune and Tune's driver handles it, unless the
scheduler is PBT, whose exploit replaces a trial's weights at its reports. When Tune stops the trial,
the actor tells the child to end it: as the answer to a report, or between two steps, which the child
checks for it. The child then waits for the next trial. One still inside a step (an epoch's first, which
fills the shuffle buffer, or a slow one) when Tune ends the actor's trial is waited for by the actor's
next trial, for up to ``STOP_GRACE_S``, and killed after that. A child says its trial is done once its
last report is answered, before it frees the trial's model and datasets, so that Tune's hand-over to the
next trial runs meanwhile. A trial that raises ends its child; a child killed (or out of memory) fails the
trial like a dead worker would, so ``train.max_failures`` restarts it from its last checkpoint. A
child outlives neither the template nor the actor: it is killed with the template, and exits
when the actor does (an actor's own template also exits with the actor).
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
    "tl_ray.train._template",  # Keras and TensorFlow, without Keras's optional matplotlib
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
STOP_GRACE_S = 5.0  # how long an actor's next trial waits for a process still ending a stopped trial
_started_here = False  # this actor forked a trial process before
_preloaded = False  # this process's own template (if it starts one) imports PRELOAD


class TrialProcessDied(TLRayError):
    """A trial's process ended without finishing or raising (killed, out of memory)."""


class ChildTraceback(Exception):
    """The traceback of an exception raised in a trial's process, as text."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\n(in the trial's process)\n{self.text}"


def preload_template() -> None:
    """Makes this process's ``forkserver`` (its template, not yet started) import ``PRELOAD``."""
    import multiprocessing

    global _preloaded
    _preloaded = True
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)


_node = None  # the Process class of this node's template (forking.connect), False when it has none


def _start_child(spec: Spec, context: dict, key: tuple, template: dict | None = None) -> _Child:
    """Forks this trial's process from the node's template, else from this actor's own (started here at first)."""
    global _node, _started_here
    import multiprocessing

    from tl_ray.train import forking, node_template

    if _node is None:
        info = node_template.find(template)
        _node = forking.connect(info) if info else False
    while True:
        cls = _node or forking.OwnProcess
        if not _node and not _preloaded:
            preload_template()
        ours, theirs = multiprocessing.get_context("forkserver").Pipe()
        # A child of the node's template writes to the actor's log, not the template's.
        outputs = forking.Outputs() if _node else None
        proc = cls(target=_child_main, args=(theirs, spec, context, dict(os.environ), outputs), name="tl-ray-trial",
                   daemon=True)
        try:
            proc.start()
        except (OSError, EOFError):  # EOFError: the template died between accepting and forking
            if not _node:
                raise
            _node = False  # the node's template is gone: this actor starts its own
            ours.close()
            continue
        finally:
            theirs.close()
        _started_here = True
        return _Child(proc, ours, key)


class _Child:
    """A trial process of this actor and the actor's end of its pipe."""

    def __init__(self, proc, conn, key: tuple):
        self.proc, self.conn, self.key = proc, conn, key
        self.trials = 0  # trials sent to it
        self.stopping = False  # told that Tune stopped its trial, and has not yet said it ended it

    def release(self) -> None:
        """Closes the pipe: the child exits at its next receive. Not waited for (unmapping its memory takes a
        few hundredths of a second); multiprocessing reaps it when the next child starts, or at the actor's exit."""
        self.conn.close()

    def kill(self) -> None:
        """Kills the child; waits a moment for its exit status (reaped later otherwise)."""
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=1.0)
        self.conn.close()


_idle: _Child | None = None  # the last trial's process, waiting for this actor's next trial


def close_idle() -> None:
    """Lets the process that waits for a next trial exit (it would with the actor)."""
    global _idle
    if _idle is not None:
        _idle.release()
        _idle = None


def run(spec: Spec, reporter, *, threads: int, cpu_devices: int = 0, marks: dict | None = None,
        template: dict | None = None) -> None:
    """Runs ``train(spec)`` in a trial process of this actor, forwarding its reports to ``reporter``.

    The process is the previous trial's when that one ended (done or stopped by Tune) after fewer than
    ``tune.trials_per_process`` trials, with the same threads and devices; otherwise a new child of this
    actor's template. ``reporter`` is the actor's (``TuneReporter``): it reports each epoch and gives the
    checkpoint to restore. ``marks`` holds the actor's start-up times (``runtime.startup_times`` in the child).
    ``template`` says where the node's template is (``node_template.locator``; default: one that ends with
    the sweep's driver).

    Raises:
        the exception the trial raised (its traceback in the child is the cause), or
        TrialProcessDied: the child ended without a result (killed, out of memory).
    """
    global _idle
    limit = spec.tune.trials_per_process
    restore = reporter.restore_dir()
    context = {
        "trial_id": getattr(reporter, "trial_id", None),
        "node_id": getattr(reporter, "node_id", None),
        "restore_dir": str(restore) if restore else None,
        "threads": threads,
        "cpu_devices": cpu_devices,
        "cwd": os.getcwd(),
        "marks": dict(marks or {}, fork_requested=time.time(), template_started=0.0 if _started_here else 1.0),
    }
    key = (threads, cpu_devices)
    child, _idle = _idle, None
    ended = False  # the trial ended in the child (done, or stopped by Tune) and the child waits for the next
    # The child's temporary files (checkpoints before Tune keeps them) live here, so none outlives
    # the trial even when the child is killed mid-write.
    scratch = tempfile.mkdtemp(prefix="tlray-trial-")
    context["scratch"] = scratch
    try:
        if child is not None and child.stopping and not _settle(child, STOP_GRACE_S):
            child.kill()  # still inside the stopped trial's step (or it failed there): a new process is sooner
            child = None
        if child is not None and (child.key != key or child.trials >= limit or not child.proc.is_alive()
                                  or not _send(child, ("trial", spec, context))):
            child.release()
            child = None
        if child is None:
            child = _start_child(spec, context, key, template)
        child.trials += 1
        while True:
            try:
                kind, *payload = child.conn.recv()
            except (EOFError, OSError):  # the child's end closed: it died
                child.proc.join()
                raise TrialProcessDied(
                    f"the trial's process (pid {child.proc.pid}) ended without a result: "
                    f"{_exit_reason(child.proc.exitcode)}. If it ran out of memory, lower data.batch_size or run "
                    "fewer trials at once (tune.max_concurrent_trials); train.max_failures restarts a trial from "
                    "its last checkpoint."
                ) from None
            if kind == "report":
                metrics, checkpoint_dir, waits = payload
                # The actor's own memory, which outlives the trials: flat when nothing leaks into it.
                metrics = dict(metrics, actor_rss_mb=_rss_mb())
                try:
                    reporter.report(metrics, checkpoint_dir)  # returns once Tune stored the checkpoint
                except BaseException:
                    # Tune stopping the trial ends the report with SystemExit: the child ends the trial too,
                    # and waits for the next one unless it has run its share.
                    ended = child.trials < limit and _stop(child)
                    raise
                if waits:
                    _send(child, ("ack",))  # if the child died meanwhile, the next recv says how
            elif kind == "error":
                exc, text = payload
                raise exc from ChildTraceback(text)
            else:  # done
                ended = True
                return
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if child is not None:
            _after_trial(child, ended and child.trials < limit, ended)


def _after_trial(child: _Child, keep: bool, ended: bool) -> None:
    """Keeps the child for the actor's next trial, lets it exit (it ended its trial), or kills it."""
    global _idle
    if keep:
        if _idle is not None:  # another trial's thread left one meanwhile: one waiting process per actor
            _idle.release()
        _idle = child
    elif ended:
        child.release()
    else:
        child.kill()


def _send(child: _Child, message: tuple) -> bool:
    try:
        child.conn.send(message)
        return True
    except OSError:  # the child is gone
        return False


def _stop(child: _Child) -> bool:
    """Tells the child that Tune stopped its trial; whether it may run the actor's next trial.

    The child ends the trial as the answer to a report it waits on, or at its next step. Tune gives a stopped
    trial's thread ``TUNE_FUNCTION_THREAD_TIMEOUT_S`` (2 s) to end before it fails the actor's next trial: the
    child gets half of it here, and one still inside a step then is marked ``stopping``, for the next trial
    to wait for (``_settle``).
    """
    if not _send(child, ("stop",)):
        return False
    settled = _settle(child, 0.5 * float(os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", 2)))
    if settled is None:
        child.stopping = True
        return True
    return settled


def _settle(child: _Child, timeout: float) -> bool | None:
    """Reads what a child told to stop sends until it says it ended its trial: True once it did, False when
    it died or failed, None when it has not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        while child.conn.poll(max(0.0, deadline - time.monotonic())):
            message = child.conn.recv()
            if message[0] != "report":  # epochs it trained on after the stopped one: Tune has ended the trial
                child.stopping = False
                return message in (("stopped",), ("done",))  # done: it ended its trial before it saw the stop
        return None
    except Exception:  # noqa: BLE001 - the child died, or sent what it should not have: it is killed
        return False


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
    if code == 255:  # what multiprocessing reports when the template that forked it ended first
        return ("exit code 255, or its template process ended (a node's template ends with the sweep's driver, "
                "or once idle for tune.template_keep_alive_s)")
    return f"exit code {code}"


class TrialStopped(BaseException):
    """Raised in a trial process when Tune stopped its trial (as ``SystemExit`` in a Tune actor)."""


class PipeReporter:
    """The child's reporter: sends each epoch to the actor; waits until Tune has kept it when it has a
    checkpoint (or ``wait_always``), and ends the trial when the actor says Tune stopped it."""

    def __init__(self, conn, trial_id: str | None, restore_dir: str | None, wait_always: bool = False):
        self._conn = conn
        self.trial_id = trial_id
        self._restore = Path(restore_dir) if restore_dir else None
        self._wait_always = wait_always
        self.finished = False

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        wait = checkpoint_dir is not None or self._wait_always
        self._conn.send(("report", dict(metrics, template_pid=os.getppid()), checkpoint_dir, wait))
        if wait:
            self._answer(self._conn.recv())  # EOF (the actor went away) ends this process

    def check_stop(self) -> None:
        """Between two steps: ends the trial (raises TrialStopped) if Tune stopped it meanwhile."""
        if self._conn.poll():
            try:
                message = self._conn.recv()
            except EOFError:  # the actor went away (the sweep ended): nothing is left to train for
                os._exit(0)
            self._answer(message)

    def finish(self) -> None:
        """The trial's last report is answered: the actor may hand this process its next trial."""
        self._conn.send(("done",))
        self.finished = True

    def restore_dir(self) -> Path | None:
        return self._restore

    @staticmethod
    def _answer(message: tuple) -> None:
        if message[0] == "stop":
            raise TrialStopped


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


def _child_main(conn, spec: Spec, context: dict, env: dict, outputs=None) -> None:
    import gc

    if outputs is not None:
        outputs.attach()

    # What the template imported lives as long as this process: Python's collector skips it instead
    # of scanning it (a quarter to half a second per full collection) and copying its pages.
    gc.freeze()
    _die_with_parent()
    from tl_ray.train import forking

    forking.exit_with_parent()  # with a node's template, the actor is not the parent
    # The actor's environment (a node's template has its own: no CUDA_VISIBLE_DEVICES of the actor's), before
    # TensorFlow's runtime starts. Later trials here are the same actor's.
    for name in set(os.environ) - set(env):
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    while True:
        _run_trial(conn, spec, context)
        from tl_ray.train import runtime

        runtime.end_trial()  # while the actor reports the end and Tune picks the next trial
        try:
            message = conn.recv()  # the actor's next trial; EOF when this process has run its share
            while message[0] != "trial":  # a stop that came after the trial's end
                message = conn.recv()
        except (EOFError, OSError):
            break
        _, spec, context = message
    conn.close()
    # Skip interpreter teardown (TensorFlow's is slow and nothing is left to flush).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run_trial(conn, spec: Spec, context: dict) -> None:
    """Trains one trial and tells the actor how it ended; a trial that raised ends the process."""
    from tl_ray.train import runtime

    runtime.MARKS.clear()
    runtime.MARKS.update(context["marks"], process_start=time.time())
    os.chdir(context["cwd"])  # Tune moves the actor into each trial's folder
    tempfile.tempdir = context["scratch"]
    runtime.TRIAL_CONTEXT.clear()
    runtime.TRIAL_CONTEXT.update(trial_id=context["trial_id"], node_id=context["node_id"])
    reporter = None
    try:
        from tl_ray.train.loop import train

        runtime.begin_trial()
        runtime.configure_tensorflow(context["threads"], context["cpu_devices"])
        reporter = PipeReporter(conn, context["trial_id"], context["restore_dir"],
                                wait_always=spec.tune.scheduler == "pbt")
        train(spec, reporter)
    except TrialStopped:
        try:
            conn.send(("stopped",))
        except OSError:  # the actor went away meanwhile
            os._exit(0)
        return
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the actor
        if reporter is not None and reporter.finished:  # the actor has moved on: this process just ends
            traceback.print_exc()
            os._exit(1)
        text = traceback.format_exc()
        try:
            pickle.loads(pickle.dumps(exc))  # what the actor will do with it
        except Exception:  # it does not travel: its type and message do
            exc = TLRayError(f"{type(exc).__name__}: {exc}")
        conn.send(("error", exc, text))
        conn.close()
        os._exit(1)
    if not reporter.finished:
        reporter.finish()
