"""The command line: bad input gives one clear message and a non-zero exit, and writes nothing."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from tl_ray.cli import main

SPECS = Path(__file__).resolve().parents[1] / "data" / "specs"


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_does_not_import_tensorflow():
    # A fresh interpreter: `tl-ray --help` must stay fast.
    code = (
        "import sys\n"
        "from tl_ray.cli import build_parser\n"
        "try:\n    build_parser().parse_args(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_malformed_spec_exits_2_naming_the_field(capsys):
    code, _, err = run(capsys, "train", str(SPECS / "bad" / "negative_lr.yaml"))
    assert code == 2
    assert "ConfigError" in err and "train.learning_rate" in err


def test_unknown_backbone_suggests_the_closest(capsys):
    code, _, err = run(capsys, "tune", str(SPECS / "bad" / "unknown_backbone.yaml"))
    assert code == 2
    assert "Did you mean 'mobilenet_v2'?" in err


def test_bad_override_exits_2(capsys):
    code, _, err = run(capsys, "train", str(SPECS / "good" / "minimal.yaml"), "--set", "train.epochz=3")
    assert code == 2 and "Did you mean 'epochs'?" in err


def test_missing_dataset_exits_3(capsys, tmp_path):
    code, _, err = run(capsys, "data", "inspect", str(tmp_path / "nothing-here"))
    assert code == 3
    assert "DataError" in err and "nothing-here" in err


def test_unreachable_bucket_exits_4_naming_the_uri(capsys, monkeypatch):
    import socket

    from tl_ray.store import s3

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    s3.arrow_filesystem.cache_clear()
    try:
        code, _, err = run(capsys, "data", "inspect", "s3://no-such-bucket/datasets/x")
    finally:
        s3.arrow_filesystem.cache_clear()
    assert code == 4
    assert "StorageError" in err and "s3://no-such-bucket/datasets/x" in err


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_cluster_exits_7_at_once_naming_the_address(capsys, monkeypatch, tmp_path):
    import ray

    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "tune", str(SPECS / "good" / "minimal.yaml"))
    assert code == 7
    assert "ClusterError" in err and f"RAY_ADDRESS={address!r}" in err and "ray start --head" in err
    assert not ray.is_initialized()  # failed before Ray's own retries (minutes)
    assert not list(tmp_path.iterdir())  # nothing written


def test_registry_reference_to_missing_model_exits_5(capsys, tmp_path):
    code, _, err = run(capsys, "models", "show", "nothing:production", "--storage", str(tmp_path))
    assert code == 5
    assert "no model named 'nothing'" in err


def test_ingest_refuses_unknown_class_and_writes_nothing(capsys, tmp_path, fashion_dir):
    target = tmp_path / "ds"
    code, _, err = run(capsys, "data", "ingest", "fashion-mnist", "--to", str(target), "--classes", "3,12")
    assert code != 0 and "12" in err
    assert not target.exists() or not any(target.iterdir())


def test_run_whose_sweep_had_errored_trials_names_them_goes_on_and_exits_8(capsys, monkeypatch, tmp_path):
    """`tl-ray run` promotes the best of the trials that finished, then exits 8 naming the ones that errored
    (the sweep stands in for the real one here: integration tests run it)."""
    from tl_ray import pipeline
    from tl_ray.promote import Promotion
    from tl_ray.tune.tuner import SweepResult, TrialRow

    rows = [TrialRow("t1", {}, 0.9, 3, "DONE"),
            TrialRow("t2", {}, None, 1, "ERROR", error="Traceback ...\n  File x\nDataError: shard s3://b/p-0 is corrupt")]
    promoted = Promotion(name="m", version=1, alias="production", accepted=True, metric="val_accuracy",
                         challenger=0.9, champion=None, champion_version=None)
    monkeypatch.setattr(pipeline, "ensure_ray", lambda spec=None: None)
    monkeypatch.setattr(pipeline, "ensure_data", lambda spec, out: None)
    monkeypatch.setattr(pipeline, "ensure_upstream", lambda spec, out: None)
    monkeypatch.setattr(pipeline, "sweep_and_promote",
                        lambda spec, promote, out: (SweepResult("val_accuracy", "max", rows), promoted))
    spec = SPECS / "good" / "minimal.yaml"
    code, out, err = run(capsys, "run", str(spec), "--set", f"storage={tmp_path}", "--set", "promote={name: m}",
                         "--set", "run.serve=false")
    assert code == 8
    assert "[tune] trial t2 ended in ERROR: DataError: shard s3://b/p-0 is corrupt" in out
    assert "failed_trials=1" in out and "promoted=m:v1" in out  # the job went on to its summary
    # The rerun keeps this run's overrides: the same spec.
    rerun = shlex.join(["tl-ray", "tune", str(spec), "--set", f"storage={tmp_path}", "--set", "promote={name: m}",
                        "--set", "run.serve=false", "--resume"])
    assert "1 of 2 trials ended in ERROR" in err and rerun in err


def _options_without_help(parser, path):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options_without_help(sub, [*path, name])
        elif action.option_strings and not action.help:
            yield " ".join(path), action.option_strings[-1]


def test_every_option_of_every_command_has_help_text():
    from tl_ray.cli import build_parser

    assert list(_options_without_help(build_parser(), ["tl-ray"])) == []


def test_help_shows_defaults_and_examples(capsys):
    from tl_ray.cli import build_parser

    parser = build_parser()
    assert "examples:\n  tl-ray run jobs/quickstart/target.yaml" in parser.format_help()
    try:
        parser.parse_args(["data", "ingest", "--help"])
    except SystemExit:
        pass
    assert "images per shard file (default: 4096)" in " ".join(capsys.readouterr().out.split())


def test_version_and_python_dash_m():
    from tl_ray import __version__

    done = subprocess.run([sys.executable, "-m", "tl_ray", "--version"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == f"tl-ray {__version__}"


def test_serve_without_a_spec_or_model_exits_2_saying_what_to_pass(capsys):
    code, _, err = run(capsys, "serve", "--storage", "./nowhere")
    assert code == 2 and "tl-ray serve needs --model NAME:ALIAS" in err


def test_tune_fails_before_any_trial_when_imagenet_weights_cannot_be_downloaded(capsys, tmp_path, fashion_dir):
    """This machine has no internet: every trial would retry the download; the driver says it once, first."""
    import yaml

    from tl_ray.data.ingest import ingest_fashion_mnist

    store = tmp_path / "store"
    ingest_fashion_mnist(str(store / "datasets/t/train"), path=str(fashion_dir), classes=[0, 1], per_class=4)
    spec = {"name": "offline", "storage": str(store), "data": {"train": "datasets/t/train", "image_size": [32, 32]},
            "model": {"backbone": "mobilenet_v2", "backbone_args": {"alpha": 0.35}, "weights": "imagenet"},
            "tune": {"num_samples": 2}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    code, _, err = run(capsys, "tune", str(tmp_path / "spec.yaml"))
    assert code == 4 and err.count("\n") == 1, err
    assert "ImageNet weights for backbone 'mobilenet_v2' could not be downloaded" in err
    assert not (store / "experiments").exists()  # no trial started


def test_output_json_is_one_document_on_stdout(capsys, tmp_path, fashion_dir):
    import json

    from tl_ray.data.ingest import ingest_fashion_mnist

    uri = str(tmp_path / "store/datasets/j/train")
    ingest_fashion_mnist(uri, path=str(fashion_dir), classes=[0, 1], per_class=3)
    code, out, _ = run(capsys, "data", "inspect", uri, "-o", "json")
    assert code == 0 and json.loads(out)["num_rows"] == 6
    code, out, _ = run(capsys, "data", "inspect", uri)
    assert code == 0 and "6 images (28x28" in out and "2 classes" in out
    code, out, _ = run(capsys, "cache", "list", "--storage", str(tmp_path / "store"), "-o", "json")
    assert code == 0 and json.loads(out) == []


def test_a_submitted_job_caps_malloc_arenas_in_its_workers(tmp_path):
    from tl_ray.submit import runtime_env

    env = runtime_env(tmp_path, "source", None, [])
    assert env["env_vars"]["MALLOC_ARENA_MAX"] == "4"
