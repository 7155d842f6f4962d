"""The manifest: round-trip, stable digest, verify, and clear errors."""

import json

import pytest

from tl_ray import store
from tl_ray.data.ingest import ingest_folder
from tl_ray.data.manifest import Manifest, Shard, read_manifest, verify, write_manifest
from tl_ray.errors import DataError

from synthetic_data import make_image_folder


def sample() -> Manifest:
    return Manifest(
        format="parquet",
        num_rows=5,
        class_names=["cat", "dog"],
        image_shape=[28, 28, 1],
        shards=[Shard("part-00000.parquet", 3, "a" * 64, 100), Shard("part-00001.parquet", 2, "b" * 64, 80)],
        source={"kind": "folder", "seed": 0},
    )


def test_round_trip(tmp_path):
    m = sample()
    assert Manifest.from_json(m.to_json()) == m
    write_manifest(str(tmp_path), m)
    assert (tmp_path / "_manifest.json").is_file()
    assert read_manifest(str(tmp_path)) == m


def test_digest_is_stable_and_tracks_content():
    m = sample()
    shuffled_keys = json.dumps(dict(reversed(list(json.loads(m.to_json()).items()))))
    assert Manifest.from_json(shuffled_keys).digest == m.digest == sample().digest
    assert len(m.digest) == 64
    m.shards[0].sha256 = "c" * 64
    assert m.digest != sample().digest


def test_missing_manifest_says_how_to_ingest(tmp_path):
    with pytest.raises(DataError, match=r"no dataset at .*tl-ray data ingest \.\.\. --to"):
        read_manifest(str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"format": "parquet"}', "malformed.*KeyError"),
        (sample().to_json().replace('"parquet"', '"csv"'), "format must be one of"),
        (sample().to_json().replace('"num_rows": 5', '"num_rows": 7'), "differs from the sum of shard rows"),
    ],
)
def test_malformed_manifest(tmp_path, text, message):
    store.write_text(str(tmp_path / "_manifest.json"), text)
    with pytest.raises(DataError, match=message):
        read_manifest(str(tmp_path))


def test_verify_detects_tampered_and_missing_shards(tmp_path):
    make_image_folder(tmp_path / "src")
    to = str(tmp_path / "ds")
    ingest_folder(str(tmp_path / "src"), to, rows_per_shard=8)
    assert verify(to) == []
    shard = tmp_path / "ds" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "ds" / "part-00002.parquet").unlink()
    problems = verify(to)
    assert len(problems) == 2
    assert "part-00001.parquet: sha256 is" in problems[0]
    assert "part-00002.parquet: missing" in problems[1]
