"""Trials in processes forked from the template (``tune.trial_process: fork``), without Ray: reports
forwarded with their checkpoints, later trials in the same process until it has run its share, a
trial Tune stops ended in its process, the child's errors raised in the caller with its traceback,
a killed child reported as such, and nothing of a child left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tl_ray.errors import DataError
from tl_ray.spec import validate
from tl_ray.train import trial_process
from tl_ray.train.checkpoint import read_state
from tl_ray.train.loop import ListReporter, train


class Forwarded:
    """The actor's side of a trial: records each report and what its checkpoint held at that moment."""

    def __init__(self, on_report=None, restore: str | None = None):
        self.trial_id = "trial_00007"
        self.node_id = "node-a"
        self.history: list[dict] = []
        self.checkpoint_dirs: list[str | None] = []
        self.states: list[dict] = []
        self._on_report = on_report
        self._restore = Path(restore) if restore else None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.history.append(metrics)
        self.checkpoint_dirs.append(checkpoint_dir)
        if checkpoint_dir:
            self.states.append(read_state(checkpoint_dir))
        if self._on_report:
            self._on_report(self, metrics)

    def restore_dir(self) -> Path | None:
        return self._restore


@pytest.fixture(scope="module")
def store(tmp_path_factory, fashion_dir) -> str:
    from tl_ray.data.ingest import ingest_fashion_mnist

    root = tmp_path_factory.mktemp("store")
    ingest_fashion_mnist(str(root / "datasets/train"), path=str(fashion_dir), classes=[0, 1, 7], per_class=16,
                         rows_per_shard=1024)
    return str(root)


def spec_dict(store: str, **train) -> dict:
    return {
        "name": "forked", "storage": store,
        "data": {"train": "datasets/train", "shuffle_buffer": 1, "image_size": [32, 32], "augment": {"flip": False}},
        "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "none",
                  "head": {"dropout": 0.0}},
        "train": {"batch_size": 16, "steps_per_epoch": 2, "epochs": 2, "learning_rate": 1e-2, "feature_cache": "off",
                  **train},
    }


@pytest.fixture(autouse=True)
def no_idle_process():
    """Each test starts without a previous test's trial process waiting for a next trial."""
    trial_process.close_idle()
    yield
    trial_process.close_idle()


def run(spec: dict, reporter: Forwarded) -> None:
    trial_process.run(validate(spec), reporter, threads=1, cpu_devices=0, marks={"actor_trial_entry": 0.0, "actor_created": 0.0})


def test_a_forked_trial_reports_every_epoch_with_its_checkpoint_and_trains_as_in_process(store):
    spec = spec_dict(store)
    forked = Forwarded()
    run(spec, forked)
    assert [m["epoch"] for m in forked.history] == [1, 2]
    pids = {m["trial_pid"] for m in forked.history}
    assert len(pids) == 1 and os.getpid() not in pids  # one process of its own for the whole trial
    assert all(forked.checkpoint_dirs) and [s["epoch"] for s in forked.states] == [1, 2]
    assert {s["trial_id"] for s in forked.states} == {"trial_00007"}  # the actor's trial id reached the loop
    assert not any(Path(d).exists() for d in forked.checkpoint_dirs)  # the child's temporary files are gone
    assert forked.history[0]["intra_op_threads"] == 1  # the trial's threads, set in the child before TF started

    in_process = ListReporter()
    train(validate(spec), in_process)
    for a, b in zip(forked.history, in_process.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["accuracy"] == b["accuracy"]

    # The next trial runs in the same process, and trains as the first did in a fresh one.
    again = Forwarded()
    run(spec, again)
    assert {m["trial_pid"] for m in again.history} == pids
    assert again.history[0]["startup_import_s"] == 0.0 and again.history[0]["startup_setup_s"] > 0
    for a, b in zip(again.history, forked.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["accuracy"] == b["accuracy"]

    # Once a process has run its share (here 2 trials), the next trial forks a new one, and the old one exits.
    third = Forwarded()
    run(dict(spec, tune={"trials_per_process": 2}), third)
    assert {m["trial_pid"] for m in third.history}.isdisjoint(pids)
    wait_gone(*pids)
    fourth = Forwarded()
    run(dict(spec, tune={"trials_per_process": 1}), fourth)
    assert {m["trial_pid"] for m in fourth.history}.isdisjoint({m["trial_pid"] for m in third.history} | pids)
    wait_gone(*{m["trial_pid"] for m in fourth.history})  # its only trial done, it exits


def wait_gone(*pids: int, timeout: float = 60.0) -> None:
    """Polls until none of ``pids`` is a live process (the template reaps its children as they exit)."""
    import time

    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < deadline, f"process {pid} did not exit"
            time.sleep(0.05)


def test_a_later_trial_on_cached_features_with_dropout_trains_as_in_a_fresh_process(store):
    """What a process keeps between trials (the cache entries it read, random state) changes nothing."""
    spec = spec_dict(store, feature_cache="auto")
    spec["model"]["head"] = {"dropout": 0.3}
    first, again, fresh = Forwarded(), Forwarded(), Forwarded()
    run(spec, first)
    run(spec, again)
    run(dict(spec, tune={"trials_per_process": 1}), fresh)  # the process has run 2: a new one
    assert {m["trial_pid"] for m in first.history} == {m["trial_pid"] for m in again.history}
    assert {m["trial_pid"] for m in fresh.history}.isdisjoint({m["trial_pid"] for m in again.history})
    assert first.history[0]["feature_cache"] == "built" and again.history[0]["feature_cache"] == "read"
    for a, b, c in zip(first.history, again.history, fresh.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["accuracy"] == b["accuracy"]
        assert c["loss"] == pytest.approx(b["loss"], rel=1e-4) and c["accuracy"] == b["accuracy"]


def test_a_forked_trial_restores_the_checkpoint_its_actor_hands_it(store, tmp_path):
    spec = spec_dict(store, epochs=3)
    full = ListReporter(keep_checkpoints_in=tmp_path / "ck")
    train(validate(spec), full)
    resumed = Forwarded(restore=str(tmp_path / "ck" / "epoch_0002"))
    run(spec, resumed)
    assert [m["epoch"] for m in resumed.history] == [3]
    assert resumed.history[0]["steps"] == full.history[-1]["steps"]


def test_an_error_in_the_trial_is_raised_in_the_actor_with_the_childs_traceback(store):
    spec = spec_dict(store)
    spec["data"]["train"] = "datasets/missing"
    with pytest.raises(DataError) as info:
        run(spec, Forwarded())
    assert "datasets/missing" in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, trial_process.ChildTraceback)
    assert "Traceback (most recent call last)" in cause.text and "DataError" in cause.text


def test_a_killed_trial_process_fails_the_trial_naming_the_signal_and_leaves_no_files(store):
    def kill_child(reporter, metrics):
        os.kill(metrics["trial_pid"], signal.SIGKILL)

    reporter = Forwarded(on_report=kill_child)
    with pytest.raises(trial_process.TrialProcessDied, match="killed by SIGKILL") as info:
        run(spec_dict(store), reporter)
    assert "train.max_failures" in str(info.value)
    assert len(reporter.history) == 1
    assert not Path(reporter.checkpoint_dirs[0]).exists()


def stop(reporter, metrics):
    """What Tune does to stop a trial: SystemExit in the report the trial is blocked in."""
    raise SystemExit(0)


def test_a_stopped_trial_ends_in_its_process_which_runs_the_next_trial(store):
    reporter = Forwarded(on_report=stop)
    with pytest.raises(SystemExit):
        run(spec_dict(store), reporter)
    assert len(reporter.history) == 1
    assert not Path(reporter.checkpoint_dirs[0]).exists()
    pid = reporter.history[0]["trial_pid"]
    os.kill(pid, 0)  # alive, waiting for the next trial

    after = Forwarded()
    run(spec_dict(store), after)
    assert [m["epoch"] for m in after.history] == [1, 2]
    assert {m["trial_pid"] for m in after.history} == {pid}


def test_a_stopped_trial_takes_its_process_with_it_once_it_has_run_its_share(store):
    spec = dict(spec_dict(store), tune={"trials_per_process": 1})
    reporter = Forwarded(on_report=stop)
    with pytest.raises(SystemExit):
        run(spec, reporter)
    pid = reporter.history[0]["trial_pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped, not left training
    assert not Path(reporter.checkpoint_dirs[0]).exists()


def test_a_stop_after_an_epoch_without_checkpoint_ends_the_trial_the_child_trained_on_and_keeps_its_process(store):
    """Epochs 1 and 2 have no checkpoint, so the child does not wait for their reports: Tune's stop at epoch 1
    reaches it while it trains on (between two steps, or as the answer to its checkpointed last report), and
    what it reported after the stopped epoch is not passed on."""
    spec = spec_dict(store, epochs=3, checkpoint_every=3, steps_per_epoch=4)
    reporter = Forwarded(on_report=stop)
    with pytest.raises(SystemExit):
        run(spec, reporter)
    assert [m["epoch"] for m in reporter.history] == [1] and reporter.checkpoint_dirs == [None]
    pid = reporter.history[0]["trial_pid"]
    os.kill(pid, 0)  # it ended its trial in time: alive, waiting for the next one

    after = Forwarded()
    run(spec, after)
    assert [m["epoch"] for m in after.history] == [1, 2, 3] and {m["trial_pid"] for m in after.history} == {pid}
    assert after.checkpoint_dirs[:2] == [None, None] and after.checkpoint_dirs[2]


def test_the_childs_reporter_waits_only_for_reports_with_a_checkpoint_unless_told_to_wait_for_all():
    import multiprocessing
    import threading

    ours, theirs = multiprocessing.Pipe()
    reporter = trial_process.PipeReporter(ours, "t", None)
    reporter.report({"epoch": 1}, None)  # no answer is sent: it returns without one
    kind, metrics, checkpoint_dir, waits = theirs.recv()
    assert (kind, metrics["epoch"], checkpoint_dir, waits) == ("report", 1, None, False)
    reporter.check_stop()  # nothing came: training goes on

    blocked = threading.Thread(target=reporter.report, args=({"epoch": 2}, "/ckpt"))
    blocked.start()
    assert theirs.recv()[2:] == ("/ckpt", True)
    assert blocked.is_alive()  # the report is in, and waits for the answer
    theirs.send(("ack",))
    blocked.join(timeout=30)
    assert not blocked.is_alive()

    theirs.send(("stop",))
    with pytest.raises(trial_process.TrialStopped):
        reporter.check_stop()  # between two steps
    reporter.finish()
    assert theirs.recv() == ("done",) and reporter.finished

    waiting = trial_process.PipeReporter(ours, "t", None, wait_always=True)  # PBT's trials
    theirs.send(("stop",))
    with pytest.raises(trial_process.TrialStopped):
        waiting.report({"epoch": 3}, None)
    assert theirs.recv()[3] is True


def test_a_child_still_inside_a_step_when_tune_stops_its_trial_is_waited_for_by_the_next_trial(monkeypatch):
    """The actor's stopped trial ends in Tune's time; the child, still inside a step, is marked stopping, and
    the next trial takes it once it says it ended the trial (skipping what it reported meanwhile), or a new
    process when it does not within STOP_GRACE_S."""
    import multiprocessing

    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "0.2")
    ours, theirs = multiprocessing.Pipe()
    child = trial_process._Child(proc=None, conn=ours, key=(1, 0))
    assert trial_process._stop(child) is True and child.stopping  # kept, not yet settled
    assert theirs.recv() == ("stop",)
    assert trial_process._settle(child, 0.1) is None and child.stopping  # nothing yet: still inside its step
    theirs.send(("report", {"epoch": 2}, None, False))  # the epoch it trained on
    theirs.send(("stopped",))
    assert trial_process._settle(child, 5.0) is True and not child.stopping

    failed = trial_process._Child(proc=None, conn=ours, key=(1, 0))
    trial_process._stop(failed)
    theirs.recv()
    theirs.send(("error", RuntimeError("x"), "text"))
    assert trial_process._settle(failed, 5.0) is False  # it failed: the next trial forks a new process
    theirs.close()
    assert trial_process._settle(trial_process._Child(proc=None, conn=ours, key=(1, 0)), 5.0) is False  # died


def test_a_trial_process_is_not_sent_the_main_script_and_its_template_loads_no_matplotlib(store, tmp_path):
    """A trial process is sent no main script to run again (a Ray actor's is Ray's worker): a script that
    starts a trial at import, without an ``if __name__ == "__main__":`` guard, runs once and trains. Its
    template imported Keras without matplotlib (none of its libraries is mapped in it)."""
    import json
    import subprocess
    import sys

    runs = tmp_path / "runs.txt"
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import json, os\n"
        f"open({str(runs)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
        "from tl_ray.spec import validate\n"
        "from tl_ray.train import trial_process\n"
        "class R:\n"
        "    trial_id = node_id = None\n"
        "    history = []\n"
        "    def report(self, metrics, checkpoint_dir): self.history.append(metrics)\n"
        "    def restore_dir(self): return None\n"
        "def mapped(pid):\n"
        "    text = open(f'/proc/{pid}/maps').read()\n"
        "    return [m for m in ('matplotlib',) if f'/{m}/' in text]\n"
        "r = R()\n"
        f"trial_process.run(validate({spec_dict(store)!r}), r, threads=1, cpu_devices=0)\n"
        "template = mapped(r.history[-1]['template_pid'])\n"
        "import matplotlib.pyplot\n"
        "print(json.dumps({'epochs': [m['epoch'] for m in r.history], 'template': template, 'here': mapped('self')}))\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr
    assert runs.read_text().split() == [str(proc.pid)]  # the script ran once, in its own process
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["epochs"] == [1, 2]
    assert out["here"] == ["matplotlib"]  # what the probe sees once it is imported
    assert out["template"] == []


def test_the_template_module_imports_keras_without_matplotlib_and_leaves_it_importable():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tl_ray.train._template\n"
        "from keras.src.visualization import plot_image_gallery\n"
        "print('matplotlib' in sys.modules, plot_image_gallery.plt)\n"
        "import matplotlib.pyplot\n"
        "print('imported', matplotlib.pyplot.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    assert out.splitlines()[-2:] == ["False None", "imported matplotlib.pyplot"]


# A node's template (tl_ray.train.node_template): owned by another process than the one whose trials fork from it.


def _host(conn) -> None:
    """Owns a node's template as the ``NodeTemplate`` actor does (no Ray here), until the test closes the pipe."""
    from tl_ray.train.node_template import NodeTemplate

    conn.send(NodeTemplate().connection())
    try:
        conn.recv()
    except EOFError:
        pass


@pytest.fixture
def node(monkeypatch):
    """The connection to a node's template, which this process's trials then fork from."""
    import multiprocessing

    from tl_ray.train import forking

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    host = ctx.Process(target=_host, args=(theirs,), daemon=True)
    host.start()
    theirs.close()
    info = ours.recv()
    monkeypatch.setattr(trial_process, "_node", forking.connect(info))
    yield info
    trial_process.close_idle()
    ours.close()  # the host exits, and its template with it
    host.join(timeout=60)
    if host.is_alive():
        host.kill()


def test_trials_fork_from_the_nodes_template_and_train_as_in_process(store, node):
    spec = spec_dict(store)
    forked = Forwarded()
    run(spec, forked)
    assert [m["epoch"] for m in forked.history] == [1, 2]
    assert {m["template_pid"] for m in forked.history} == {node["pid"]}  # not a template of this process
    assert forked.history[0]["intra_op_threads"] == 1
    in_process = ListReporter()
    train(validate(spec), in_process)
    for a, b in zip(forked.history, in_process.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["accuracy"] == b["accuracy"]
    again = Forwarded()  # the next trial in the same process
    run(spec, again)
    assert {m["trial_pid"] for m in again.history} == {m["trial_pid"] for m in forked.history}


def _actor(info: dict, spec: dict, hook_dir: str) -> None:
    """A trial actor on the node: its environment changes after the template started."""
    from tl_ray.train import forking

    trial_process._node = forking.connect(info)
    os.environ["TLRAY_TEST_HOOK_DIR"] = hook_dir  # the trial pauses after epoch 1 only if it sees this
    run(spec, Forwarded())


def test_a_trial_forked_from_the_nodes_template_has_its_actors_environment_and_ends_with_it(store, node, tmp_path):
    import multiprocessing
    import time

    spec = dict(spec_dict(store), name="paused")
    (tmp_path / "paused").mkdir()
    (tmp_path / "paused" / "pause_after_epoch").write_text("1")
    actor = multiprocessing.get_context("spawn").Process(target=_actor, args=(node, spec, str(tmp_path)))
    actor.start()
    pid_file = tmp_path / "paused" / "pid.0"
    deadline = time.monotonic() + 300
    while not pid_file.exists():  # the child paused: it saw the variable the actor set after the fork server started
        assert actor.is_alive() and time.monotonic() < deadline, "the trial never paused after epoch 1"
        time.sleep(0.05)
    child = int(pid_file.read_text())
    with open(f"/proc/{child}/stat") as f:  # Linux: "pid (name) state ppid ..."
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == node["pid"]  # the template's child, not the actor's
    os.kill(actor.pid, signal.SIGKILL)
    actor.join()
    wait_gone(child)  # the actor gone, its trial's process went too (the template reaps it)


def test_an_actor_whose_nodes_template_died_forks_from_its_own(store, node):
    os.kill(node["pid"], signal.SIGKILL)
    forked = Forwarded()
    run(spec_dict(store), forked)
    assert [m["epoch"] for m in forked.history] == [1, 2]
    assert node["pid"] not in {m["template_pid"] for m in forked.history}
    assert trial_process._node is False  # later trials go to its own template directly
