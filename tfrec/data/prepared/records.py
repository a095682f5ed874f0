"""tf.train.Example protos and TFRecord files, written without TensorFlow.

The preprocessing engine's workers run these: importing TensorFlow in every worker would cost
seconds and hundreds of MB each, and what they write is two small wire formats. The protobuf
encoding is the one ``tensorflow/core/example/example.proto`` defines (Example -> Features ->
map<string, Feature>; Feature = bytes_list 1 | float_list 2 | int64_list 3, packed); the TFRecord
framing is TensorFlow's (length, masked CRC32C of the length, data, masked CRC32C of the data).
``tests/test_prepared.py`` reads both back with ``tf.data`` and ``tf.io.parse_single_example``.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterable, Mapping, Sequence, Union

import google_crc32c
import numpy as np

from tfrec.files import file_sha256

FeatureValue = Union[bytes, str, int, float, Sequence[bytes], Sequence[str], Sequence[int], Sequence[float], np.ndarray]


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values are encoded as their two's complement
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _int64_list(values: Iterable[int]) -> bytes:
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(1, packed) if packed else b""


def _feature(value: FeatureValue) -> bytes:
    """One tf.train.Feature: bytes for str/bytes values, int64 for ints, float for floats."""
    if isinstance(value, (bytes, str, int, float, np.integer, np.floating)):
        value = [value]
    values = list(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu" or values and isinstance(values[0], (int, np.integer)):
        return _field(3, _int64_list(values))
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" or values and isinstance(values[0], (float, np.floating)):
        packed = np.asarray(values, dtype="<f4").tobytes()
        return _field(2, _field(1, packed) if packed else b"")
    if not values:  # an empty list: typed as int64, which every VarLenFeature/RaggedFeature parses as empty
        return _field(3, b"")
    return _field(1, b"".join(_field(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values))


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """The serialized tf.train.Example holding ``features`` (str -> bytes_list, int -> int64_list, float -> float_list)."""
    entries = b"".join(_field(1, _field(1, name.encode("utf-8")) + _field(2, _feature(value)))
                       for name, value in features.items())
    return _field(1, entries)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """``record`` framed as one TFRecord entry."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", _masked_crc(length)) + record + struct.pack("<I", _masked_crc(record))


def shard_name(index: int, count: int) -> str:
    """A shard's file name: ``part-00003-of-00016.tfrecord.gz``."""
    return "part-%05d-of-%05d.tfrecord.gz" % (index, count)


class ShardWriter:
    """Writes one TFRecord shard to ``path + '.partial'`` and renames it when closed without error.

    A reader never sees a half-written shard under its final name; ``close`` returns the shard's
    size, SHA-256 and record count for the manifest.
    """

    def __init__(self, path: Union[str, Path], compressed: bool) -> None:
        self.path = Path(path)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._raw: BinaryIO = open(self._partial, "wb")
        # mtime=0: the same records give the same bytes, so a rerun's checksums match.
        self._out: BinaryIO = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0) if compressed else self._raw
        self.records = 0

    def write(self, record: bytes) -> None:
        """Append one serialized record."""
        self._out.write(frame(record))
        self.records += 1

    def close(self) -> dict:
        """Finish the shard; returns {file, bytes, sha256, records}."""
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()
        os.replace(self._partial, self.path)
        return {"file": self.path.name, "bytes": self.path.stat().st_size, "sha256": file_sha256(self.path), "records": self.records}

    def abort(self) -> None:
        """Drop the partial file."""
        try:
            if self._out is not self._raw:
                self._out.close()
            self._raw.close()
        finally:
            self._partial.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.abort()


def read_records(path: Union[str, Path]) -> Iterable[bytes]:
    """The records of a TFRecord shard (gzip when the name ends in .gz), checking every CRC; for tools and tests."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        offset = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise ValueError("%s: truncated record header at byte %d" % (path, offset))
            (length,) = struct.unpack("<Q", head[:8])
            if struct.unpack("<I", head[8:])[0] != _masked_crc(head[:8]):
                raise ValueError("%s: corrupt record length at byte %d" % (path, offset))
            body = f.read(length + 4)
            if len(body) < length + 4 or struct.unpack("<I", body[length:])[0] != _masked_crc(body[:length]):
                raise ValueError("%s: truncated or corrupt record at byte %d" % (path, offset))
            offset += 12 + length + 4
            yield body[:length]
