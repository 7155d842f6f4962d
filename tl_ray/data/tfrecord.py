"""TFRecord without TensorFlow (which cannot read ``s3://``): ``tf.train.Example`` encoding, record framing
and a CRC-checked parser. Each record is framed as (little-endian)::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
"""

from __future__ import annotations

import struct

from google_crc32c import value as crc32c  # CRC32C (Castagnoli), in C

from tl_ray.errors import DataError

HEADER_BYTES = 12  # uint64 length + uint32 CRC of the length
FOOTER_BYTES = 4  # uint32 CRC of the data
IMAGE_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data) -> int:
    """The CRC TFRecord stores: rotated right by 15 bits plus a constant, so CRCs of CRCs stay strong."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One TFRecord record holding ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value: int) -> bytes:
    """``value`` as a protobuf varint: ``tf.train.Example`` is encoded by hand, in the wire format."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list -> BytesList.value


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(value & 0xFFFFFFFFFFFFFFFF)))  # Feature.int64_list -> packed value


def encode_example(image: bytes, label: int, shape: list[int]) -> bytes:
    """A serialized ``tf.train.Example`` for one encoded image of ``shape`` ``[H, W, C]``, byte-identical to
    TensorFlow's own encoding."""
    features = {
        "image/channels": _int64_feature(int(shape[2]) if len(shape) > 2 else 1),
        LABEL_KEY: _int64_feature(int(label)),
        IMAGE_KEY: _bytes_feature(image),
        "image/height": _int64_feature(int(shape[0])),
        "image/width": _int64_feature(int(shape[1])),
    }
    entries = b"".join(
        _field(1, _field(1, key.encode()) + _field(2, value)) for key, value in sorted(features.items())
    )
    return _field(1, entries)  # Example.features -> Features.feature (map entries)


class RecordParser:
    """Splits a TFRecord byte stream, fed in chunks of any size, into CRC-checked records. ``offset`` is the
    byte offset of the first record not yet returned (where a reader that loses its connection resumes);
    ``records`` counts the records returned; ``name`` is named in errors."""

    def __init__(self, name: str, offset: int = 0):
        self.name = name
        self.offset = offset
        self.records = 0
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole record."""
        return len(self._buf)

    def feed(self, chunk) -> list[bytes]:
        """Adds the next bytes of the stream; returns the records they complete (DataError on a bad CRC)."""
        self._buf += chunk
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= HEADER_BYTES:
            length, length_crc = struct.unpack_from("<QI", buf, pos)
            if masked_crc32c(bytes(buf[pos : pos + 8])) != length_crc:
                raise self._corrupt("length", self.offset + pos)
            end = pos + HEADER_BYTES + length + FOOTER_BYTES
            if end > len(buf):
                break
            data = bytes(buf[pos + HEADER_BYTES : end - FOOTER_BYTES])
            (data_crc,) = struct.unpack_from("<I", buf, end - FOOTER_BYTES)
            if masked_crc32c(data) != data_crc:
                raise self._corrupt("data", self.offset + pos)
            out.append(data)
            self.records += 1
            pos = end
        del buf[:pos]
        self.offset += pos
        return out

    def finish(self) -> None:
        """Raises DataError unless the stream ended on a record boundary (else it is truncated)."""
        if self._buf:
            raise DataError(f"shard {self.name!r} is truncated inside record {self.records} at byte offset "
                            f"{self.offset} ({len(self._buf)} bytes of an incomplete record). Check it with "
                            "`tl-ray data verify` and re-ingest the dataset.")

    def _corrupt(self, part: str, offset: int) -> DataError:
        return DataError(
            f"shard {self.name!r}: record {self.records} at byte offset {offset} fails its {part} CRC32C "
            "check (the file is corrupt). Check it with `tl-ray data verify` and re-ingest the dataset."
        )
