"""TFRecord without TensorFlow: what tl-ray writes is what TensorFlow writes, and what it parses is checked."""

import numpy as np
import pytest
import tensorflow as tf

from tl_ray import store
from tl_ray.data.ingest import ingest_folder
from tl_ray.data.manifest import read_manifest, verify
from tl_ray.data.tfrecord import RecordParser, encode_example, frame, masked_crc32c
from tl_ray.errors import DataError

from synthetic_data import make_image_folder


def tf_example(image: bytes, label: int, shape) -> tf.train.Example:
    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "image/class/label": ints(label),
        "image/height": ints(shape[0]),
        "image/width": ints(shape[1]),
        "image/channels": ints(shape[2]),
    }))


@pytest.mark.parametrize("image, label, shape", [(b"\x89PNG" * 50, 3, [28, 28, 1]), (b"", 0, [1, 1, 3]),
                                                 (bytes(range(256)) * 600, 1234567, [300, 200, 3])])
def test_example_is_byte_identical_to_tensorflows(image, label, shape):
    ours = encode_example(image, label, shape)
    assert ours == tf_example(image, label, shape).SerializeToString(deterministic=True)
    assert tf.train.Example.FromString(ours) == tf_example(image, label, shape)


def test_framing_is_byte_identical_to_tensorflows(tmp_path):
    records = [encode_example(b"abc" * k, k, [2, 3, 1]) for k in range(5)] + [b""]
    path = str(tmp_path / "tf.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for r in records:
            writer.write(r)
    assert (tmp_path / "tf.tfrecord").read_bytes() == b"".join(frame(r) for r in records)
    assert masked_crc32c(b"") == 0xA282EAD8  # crc32c("") is 0: only the mask delta remains


@pytest.mark.parametrize("chunk", [1, 7, 12, 13, 1 << 20])
def test_parser_splits_any_chunking_and_tracks_the_offset(chunk):
    records = [bytes([k]) * (k * 37) for k in range(20)]
    stream = b"".join(frame(r) for r in records)
    parser, out = RecordParser("s"), []
    for i in range(0, len(stream), chunk):
        out += parser.feed(stream[i : i + chunk])
        assert parser.offset + parser.pending == min(i + chunk, len(stream))
    parser.finish()
    assert out == records and parser.records == 20 and parser.offset == len(stream)


def test_parser_names_record_and_offset_of_corruption():
    stream = bytearray(b"".join(frame(b"x" * 100) for _ in range(3)))
    second = len(frame(b"x" * 100))
    stream[second + 20] ^= 0xFF  # in record 1's data
    with pytest.raises(DataError, match=rf"shard 's': record 1 at byte offset {second} fails its data CRC32C"):
        RecordParser("s").feed(bytes(stream))
    stream[second + 20] ^= 0xFF
    stream[second + 2] ^= 0xFF  # in record 1's length
    with pytest.raises(DataError, match=rf"record 1 at byte offset {second} fails its length CRC32C"):
        RecordParser("s").feed(bytes(stream))
    stream[second + 2] ^= 0xFF
    parser = RecordParser("s")
    parser.feed(bytes(stream[: second + 50]))
    with pytest.raises(DataError, match=rf"truncated inside record 1 at byte offset {second}"):
        parser.finish()


def test_tensorflow_reads_our_shards_and_verify_checks_crcs(tmp_path):
    make_image_folder(tmp_path / "src", per_class=4, size=(5, 4))
    to = str(tmp_path / "ds")
    ingest_folder(str(tmp_path / "src"), to, rows_per_shard=5, format="tfrecord")
    manifest = read_manifest(to)
    assert manifest.format == "tfrecord" and [s.rows for s in manifest.shards] == [5, 5, 2]
    files = [store.join(to, s.path) for s in manifest.shards]
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]
    assert len(examples) == 12
    feature = examples[0].features.feature
    assert [feature[k].int64_list.value[0] for k in ("image/height", "image/width", "image/channels")] == [5, 4, 1]
    labels = sorted(e.features.feature["image/class/label"].int64_list.value[0] for e in examples)
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    decoded = tf.io.decode_png(feature["image/encoded"].bytes_list.value[0]).numpy()
    assert decoded.shape == (5, 4, 1) and np.all(decoded[1:, 1:] == decoded[1, 1])

    assert verify(to) == []
    shard = tmp_path / "ds" / "part-00001.tfrecord"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x10  # the last record's data CRC
    shard.write_bytes(bytes(data))
    problems = verify(to)
    assert len(problems) == 2 and "sha256 is" in problems[0]
    assert "part-00001.tfrecord: shard" in problems[1] and "record 4 at byte offset" in problems[1]
