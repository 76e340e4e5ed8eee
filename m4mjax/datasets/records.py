"""The one record format of every m4mjax dataset: a TFDS-serialized example per song in array_record files.

Fields: ``id`` (text), ``group`` (text: the source, e.g. ``debian/freedoom``), ``frames`` (int32 [N]) and
``attrs`` (uint8 [N, 5]: instrument, pitch, duration, velocity, track clipped to 255) together holding the
tokenizer's int32 [N, 6] notes in 9 raw bytes per note (zlib cost 10x the MIDI parsing time), ``n_frames``
(int32, song length in 16th-note frames). The TFDS
builder of the embedded corpus and ``m4mjax.prepare`` both write it, so one reader serves both.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 2  # bump when FEATURES change; conversion directories record it in plan.json

FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "group": tfds.features.Text(),
    "frames": tfds.features.Tensor(shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES),
    "attrs": tfds.features.Tensor(shape=(None, 5), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
    "n_frames": np.int32,
})


def split_of_index(index: int) -> str:
    """Spec §5 rule: song index mod 10 -> 0 test, 1 valid, else train."""
    return {0: "test", 1: "valid"}.get(index % 10, "train")


def encode_song(song: dict[str, Any]) -> bytes:
    """Serialize one song dict (id, group, notes, n_frames) to record bytes."""
    return FEATURES.serialize_example(to_example(song))


def to_example(song: dict[str, Any]) -> dict[str, Any]:
    """A song dict -> the TFDS example dict of FEATURES."""
    notes = np.asarray(song["notes"], np.int32).reshape(-1, 6)
    return {"id": song["id"], "group": song["group"], "frames": notes[:, 0],
            "attrs": np.clip(notes[:, 1:], 0, 255).astype(np.uint8), "n_frames": int(song["n_frames"])}


def decode_song(record: bytes) -> dict[str, Any]:
    """Parse record bytes back to a dict with str id/group, int32 notes and int n_frames."""
    return from_example(FEATURES.deserialize_example_np(record))


def from_example(ex: dict[str, Any]) -> dict[str, Any]:
    """A decoded TFDS example (fields above) -> song dict with int32 [N, 6] notes and str id/group."""
    frames = np.asarray(ex["frames"], np.int32).reshape(-1, 1)
    notes = np.concatenate([frames, np.asarray(ex["attrs"], np.int32).reshape(-1, 5)], axis=1)
    return {"id": _text(ex["id"]), "group": _text(ex["group"]), "notes": notes, "n_frames": int(ex["n_frames"])}


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def write_array_record(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Write records to an array_record file atomically (temp file + rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    n = 0
    try:
        for r in records:
            writer.write(r)
            n += 1
    finally:
        writer.close()
    os.replace(tmp, path)
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising ValueError naming the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None
