"""The sweep's full log: ``tl-ray.log`` in the experiment folder."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tl_ray import store
from tl_ray.errors import ConfigError, StorageError
from tl_ray.tune import driver_log as dl
from tl_ray.tune.report import load_trials


def test_driver_logging_lands_in_the_experiment_folder_while_the_block_runs(tmp_path):
    exp = tmp_path / "experiments" / "sweep-1"
    with dl.driver_log(str(exp)) as path:
        logging.getLogger("ray.tune.execution").error("Trial task failed for trial t1")
        logging.getLogger("some.library").warning("a warning of a library")
    logging.getLogger("ray.tune.execution").error("after the sweep")
    assert path == exp / "tl-ray.log"
    text = path.read_text()
    assert "tl-ray sweep" in text.splitlines()[0]
    assert "ERROR ray.tune.execution: Trial task failed for trial t1" in text
    assert "WARNING some.library: a warning of a library" in text
    assert "after the sweep" not in text
    assert dl.shown_path(str(exp)) == str(exp / "tl-ray.log")


def test_workers_output_lands_in_the_log_with_its_process_and_without_the_autoscalers_status(tmp_path):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher  # what Ray's driver feeds

    exp = tmp_path / "experiments" / "sweep-w"
    with dl.driver_log(str(exp)) as path:
        dispatcher.emit({"ip": "10.0.0.5", "pid": 4054, "actor_name": "RayTrainWorker", "is_err": True,
                         "lines": ["Error in training function:", "ConfigError: bad"]})
        dispatcher.emit({"ip": "10.0.0.5", "pid": "autoscaler", "is_err": False,
                         "lines": ["======== Autoscaler status ========", ":event_summary:Adding 1 node(s) of type gpu."]})
    dispatcher.emit({"ip": "10.0.0.5", "pid": 4054, "lines": ["after the sweep"]})
    text = path.read_text()
    assert "tl_ray.workers: (RayTrainWorker pid=4054, ip=10.0.0.5) Error in training function:" in text
    assert "(RayTrainWorker pid=4054, ip=10.0.0.5) ConfigError: bad" in text
    assert "(pid=autoscaler, ip=10.0.0.5) Adding 1 node(s) of type gpu." in text
    assert "Autoscaler status" not in text and "after the sweep" not in text


def test_tunes_records_stay_off_rays_console_unless_verbose(tmp_path, monkeypatch):
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    try:
        monkeypatch.delenv("TLRAY_VERBOSE", raising=False)
        with dl.driver_log(str(tmp_path / "quiet")):
            logging.getLogger("ray.tune").warning("tune's box")
            logging.getLogger("ray.core").warning("a core warning")
        monkeypatch.setenv("TLRAY_VERBOSE", "1")
        with dl.driver_log(str(tmp_path / "verbose")):
            logging.getLogger("ray.tune").warning("tune's box, verbose")
    finally:
        ray_logger.removeHandler(handler)
    assert console.getvalue().splitlines() == ["a core warning", "tune's box, verbose"]
    assert not handler.filters
    assert "tune's box" in (tmp_path / "quiet" / "tl-ray.log").read_text()


def test_on_s3_the_log_is_written_locally_and_copied_into_the_store_at_the_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TLRAY_CACHE", str(tmp_path / "cache"))
    copies = {}
    monkeypatch.setattr(dl.store, "write_bytes", lambda uri, data: copies.update({uri: data}))
    uri = "s3://bucket/tl-ray/experiments/sweep-2"
    with pytest.raises(ConfigError):
        with dl.driver_log(uri) as path:
            logging.getLogger("ray.tune").error("the trial's traceback")
            assert not copies
            raise ConfigError("the sweep stopped")
    assert path == tmp_path / "cache" / "logs" / "bucket" / "tl-ray" / "experiments" / "sweep-2" / "tl-ray.log"
    assert b"the trial's traceback" in copies[f"{uri}/tl-ray.log"]
    assert "copied to s3://bucket/tl-ray/experiments/sweep-2/tl-ray.log" in dl.shown_path(uri)
    # The same experiment name in another store gets its own log.
    with dl.driver_log("s3://other/tl-ray/experiments/sweep-2"):
        logging.getLogger("ray.tune").error("the other sweep's line")
    assert b"the other sweep's line" not in copies[f"{uri}/tl-ray.log"]
    assert b"the trial's traceback" not in copies["s3://other/tl-ray/experiments/sweep-2/tl-ray.log"]


def test_copy_log_writes_through_the_store_and_a_failed_copy_is_a_warning(tmp_path, monkeypatch, capsys):
    local = tmp_path / "tl-ray.log"
    local.write_text("line\n")
    dl.copy_log(local, str(tmp_path / "store" / "exp"))
    assert store.read_text(str(tmp_path / "store" / "exp" / "tl-ray.log")) == "line\n"

    def refuse(uri, data):
        raise StorageError("bucket is read-only")

    monkeypatch.setattr(dl.store, "write_bytes", refuse)
    dl.copy_log(local, "s3://bucket/exp")
    assert f"the full log stays at {local}: bucket is read-only" in capsys.readouterr().err


def test_the_report_reads_a_staged_sweep_beside_its_log(tmp_path):
    exp = tmp_path / "staged"
    trial = exp / "coarse" / "stage_trial_a1b2c_00000_0"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"train.learning_rate": 0.01}))
    (trial / "result.json").write_text(json.dumps({"training_iteration": 1, "val_accuracy": 0.7}) + "\n")
    (exp / "tl-ray.log").write_text("log\n")
    assert [t.stage for t in load_trials(str(exp))] == ["coarse"]


def test_the_header_names_the_sweeps_log_only_when_tl_ray_started_ray_streaming_workers_output(monkeypatch):
    from tl_ray.tune import cluster

    monkeypatch.delenv("TLRAY_VERBOSE", raising=False)
    monkeypatch.setattr(cluster, "_session", {})  # Ray initialised by the caller: its log_to_driver is unknown
    assert cluster.workers_output() == ("workers' output in /tmp/ray/session_latest/logs on each node "
                                        "(tl-ray -v shows it here)")
    monkeypatch.setattr(cluster, "_connection", lambda: ("node-1", "job-1"))
    monkeypatch.setattr(cluster, "_session", {"connection": ("node-1", "job-1"), "streamed": True,
                                              "logs": "/tmp/ray/session_1/logs"})
    assert cluster.workers_output() == "workers' output included (tl-ray -v shows it live)"
    # After ray.shutdown(), a Ray the caller initialised (perhaps with log_to_driver=False) is another connection.
    monkeypatch.setattr(cluster, "_connection", lambda: ("node-1", "job-2"))
    assert cluster.workers_output() == ("workers' output in /tmp/ray/session_latest/logs on each node "
                                        "(tl-ray -v shows it here)")
