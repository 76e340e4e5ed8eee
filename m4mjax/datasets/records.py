"""The one record format of every m4mjax dataset: a TFDS-serialized example per song in array_record files.

Fields: ``id`` (text), ``group`` (text: the source, e.g. ``debian/freedoom``), ``frames`` (int32 [N]) and
``attrs`` (uint8 [N, 5]: instrument, pitch, duration, velocity, track clipped to 255) together holding the
tokenizer's int32 [N, 6] notes in 9 raw bytes per note (zlib cost 10x the MIDI parsing time), ``n_frames``
(int32, song length in 16th-note frames). The TFDS builder of the embedded corpus and ``m4mjax.prepare`` both
write it, so one reader serves both. ``encode_song`` writes the ``tf.train.Example`` bytes directly (the same
message ``FEATURES.serialize_example`` builds, 10x faster and without importing TFDS in conversion workers).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from m4mjax.run import io

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 2  # bump when FEATURES change; conversion directories record it in plan.json
ARRAY_RECORD_OPTIONS = "group_size:1,zstd:1"  # one record per chunk (cheap random access by grain); zstd level 1:
# 3.4x faster writes than the default level, reads faster, files 8% larger (measured on the Debian MIDI)


_FEATURES_LOCK = threading.Lock()


def __getattr__(name: str) -> Any:
    """``FEATURES`` (the TFDS FeaturesDict) is built on first use: conversion workers never import TFDS."""
    if name == "FEATURES":
        return _features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _features() -> Any:
    """The TFDS FeaturesDict, built once. The lock matters: grain's prefetch threads decode in parallel, and
    two threads importing tensorflow_datasets' lazy modules at once deadlock on the import lock."""
    global FEATURES
    with _FEATURES_LOCK:
        if "FEATURES" not in globals():
            import tensorflow_datasets as tfds

            FEATURES = tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "group": tfds.features.Text(),
                "frames": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES),
                "attrs": tfds.features.Tensor(shape=(None, 5), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
                "n_frames": np.int32,
            })
        return FEATURES


def split_of_index(index: int) -> str:
    """Spec §5 rule: song index mod 10 -> 0 test, 1 valid, else train."""
    return {0: "test", 1: "valid"}.get(index % 10, "train")


# ------------------------------------------------------------------------ tf.train.Example wire format
def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (negative int64 as two's complement, 10 bytes)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (``tag`` = field number << 3 | 2)."""
    return bytes([tag]) + _varint(len(payload)) + payload


def _entry(key: str, feature: bytes) -> bytes:
    """One ``map<string, Feature>`` entry of ``tf.train.Features`` (field 1 of Features)."""
    return _field(0x0A, _field(0x0A, key.encode()) + _field(0x12, feature))


def _bytes_feature(value: bytes) -> bytes:
    """``Feature{bytes_list: BytesList{value: [value]}}``."""
    return _field(0x0A, _field(0x0A, value))


def _int_feature(value: int) -> bytes:
    """``Feature{int64_list: Int64List{value: [value]}}`` (packed)."""
    return _field(0x1A, _field(0x0A, _varint(value)))


def encode_song(song: dict[str, Any]) -> bytes:
    """Serialize one song dict (id, group, notes, n_frames) to record bytes (a ``tf.train.Example``)."""
    notes = np.asarray(song["notes"], np.int32).reshape(-1, 6)
    frames = np.ascontiguousarray(notes[:, 0]).astype("<i4").tobytes()
    attrs = np.clip(notes[:, 1:], 0, 255).astype(np.uint8).tobytes()
    feats = (_entry("attrs", _bytes_feature(attrs)) + _entry("frames", _bytes_feature(frames))
             + _entry("group", _bytes_feature(str(song["group"]).encode("utf-8", "backslashreplace")))
             + _entry("id", _bytes_feature(str(song["id"]).encode("utf-8", "backslashreplace")))
             + _entry("n_frames", _int_feature(int(song["n_frames"]))))
    return _field(0x0A, feats)


def to_example(song: dict[str, Any]) -> dict[str, Any]:
    """A song dict -> the TFDS example dict of FEATURES."""
    notes = np.asarray(song["notes"], np.int32).reshape(-1, 6)
    return {"id": song["id"], "group": song["group"], "frames": notes[:, 0],
            "attrs": np.clip(notes[:, 1:], 0, 255).astype(np.uint8), "n_frames": int(song["n_frames"])}


def decode_song(record: bytes) -> dict[str, Any]:
    """Parse record bytes back to a dict with str id/group, int32 notes and int n_frames."""
    return from_example(_features().deserialize_example_np(record))


def from_example(ex: dict[str, Any]) -> dict[str, Any]:
    """A decoded TFDS example (fields above) -> song dict with int32 [N, 6] notes and str id/group."""
    frames = np.asarray(ex["frames"], np.int32).reshape(-1, 1)
    notes = np.concatenate([frames, np.asarray(ex["attrs"], np.int32).reshape(-1, 5)], axis=1)
    return {"id": _text(ex["id"]), "group": _text(ex["group"]), "notes": notes, "n_frames": int(ex["n_frames"])}


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def write_array_record(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Write records to an array_record file atomically (temp file + rename); returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with io.atomic_path(path) as tmp:
        writer = ArrayRecordWriter(tmp, ARRAY_RECORD_OPTIONS)
        try:
            for r in records:
                writer.write(r)
                n += 1
        finally:
            writer.close()
        os.chmod(tmp, 0o644)  # datasets are shared: readable by all (the temp file was private)
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (non-ASCII and undecodable file-name characters escaped, so any name is safe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1, ensure_ascii=True))
        os.chmod(tmp, 0o644)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising ValueError naming the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None
