"""Ingest at scale: parallel and deterministic, shards of a target size, a progress bar, resumable."""

import json

import pytest

from tl_ray import store
from tl_ray.data.ingest import ingest_folder
from tl_ray.data.manifest import has_manifest, read_manifest
from tl_ray.errors import ConfigError, DataError

from synthetic_data import make_image_folder

FORMATS = ["parquet", "tfrecord"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root, per_class=20, size=(12, 10))
    return str(root)


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_ingest_is_deterministic(src, tmp_path, fmt):
    one = ingest_folder(src, str(tmp_path / "a"), rows_per_shard=16, workers=1, format=fmt)
    many = ingest_folder(src, str(tmp_path / "b"), rows_per_shard=16, workers=4, format=fmt)
    assert one["format"] == many["format"] == fmt
    assert one["train"]["digest"] == many["train"]["digest"] and one["train"]["shards"] == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_close_at_the_target_size(src, tmp_path, fmt):
    image_bytes = sum(len(store.read_bytes(store.join(src, f))) for f in store.list_files(src))
    target_mb = image_bytes / 6 / 2**20  # about six shards' worth
    report = ingest_folder(src, str(tmp_path / "ds"), target_shard_mb=target_mb, format=fmt)
    shards = read_manifest(str(tmp_path / "ds")).shards
    assert 5 <= report["train"]["shards"] <= 7 and sum(s.rows for s in shards) == 60
    assert all(s.bytes < 2 * image_bytes / 6 + 4096 for s in shards)


def test_progress_bar_goes_to_stderr(src, tmp_path, capsys):
    report = ingest_folder(src, str(tmp_path / "ds"), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "ingest train" in err and "60/60" in err and report["train"]["rows"] == 60


@pytest.mark.parametrize("fmt", FORMATS)
def test_resume_keeps_verified_shards_and_rewrites_bad_ones(src, tmp_path, monkeypatch, fmt):
    to = str(tmp_path / "ds")
    real_write = store.write_bytes
    written = []

    def crash_after_three_shards(uri, data):
        if uri.endswith(f"part-00003.{fmt}"):
            raise KeyboardInterrupt  # the process dies mid-ingest
        written.append(uri)
        real_write(uri, data)

    monkeypatch.setattr(store, "write_bytes", crash_after_three_shards)
    with pytest.raises(KeyboardInterrupt):
        ingest_folder(src, to, rows_per_shard=10, format=fmt)
    assert not has_manifest(to)
    progress = json.loads((tmp_path / "ds" / "_ingest_progress.json").read_text())
    assert [e["path"] for e in progress["shards"]] == [f"part-0000{k}.{fmt}" for k in range(3)]

    shard = tmp_path / "ds" / f"part-00002.{fmt}"  # damaged while nobody looked: must be rewritten
    shard.write_bytes(shard.read_bytes()[:-1])
    written.clear()
    monkeypatch.setattr(store, "write_bytes", lambda uri, data: (written.append(uri), real_write(uri, data)))
    report = ingest_folder(src, to, rows_per_shard=10, format=fmt)
    assert report["train"]["resumed_shards"] == 2 and report["train"]["shards"] == 6
    shards_written = sorted(u.rsplit("/", 1)[1] for u in written if u.endswith(fmt))
    assert shards_written == [f"part-0000{k}.{fmt}" for k in range(2, 6)]
    fresh = ingest_folder(src, str(tmp_path / "fresh"), rows_per_shard=10, format=fmt)
    assert report["train"]["digest"] == fresh["train"]["digest"]
    assert store.list_files(to) == ["_manifest.json"] + [f"part-0000{k}.{fmt}" for k in range(6)]


def test_changed_arguments_discard_an_unfinished_run(src, tmp_path, monkeypatch):
    to = str(tmp_path / "ds")
    real_write = store.write_bytes

    def crash(uri, data):
        if uri.endswith("part-00004.parquet"):
            raise KeyboardInterrupt
        real_write(uri, data)

    monkeypatch.setattr(store, "write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest_folder(src, to, rows_per_shard=10)
    monkeypatch.setattr(store, "write_bytes", real_write)
    report = ingest_folder(src, to, rows_per_shard=30)  # another plan: nothing is kept
    assert report["train"]["resumed_shards"] == 0
    assert store.list_files(to) == ["_manifest.json", "part-00000.parquet", "part-00001.parquet"]


def test_skip_bad_lists_files_across_shards(tmp_path):
    make_image_folder(tmp_path / "src", per_class=6)
    for name in ("cat/bad1.png", "emu/bad2.jpg"):
        (tmp_path / "src" / name).write_bytes(b"garbage")
    report = ingest_folder(str(tmp_path / "src"), str(tmp_path / "ds"), rows_per_shard=3, skip_bad=True, workers=3)
    assert report["skipped"] == [str(tmp_path / "src" / "cat/bad1.png"), str(tmp_path / "src" / "emu/bad2.jpg")]
    assert report["train"]["rows"] == 18 and read_manifest(str(tmp_path / "ds")).source["skipped"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(format="csv"), r"format must be one of \['parquet', 'tfrecord'\]. Received: 'csv'"),
        (dict(target_shard_mb=0), "target_shard_mb must be a positive number of MiB. Received: 0"),
        (dict(workers=0), "workers must be a positive integer. Received: 0"),
    ],
)
def test_option_errors(src, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ingest_folder(src, str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists()


def test_all_bad_is_an_error(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "x.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="selected no images"):
        ingest_folder(str(tmp_path / "src"), str(tmp_path / "ds"), skip_bad=True)
