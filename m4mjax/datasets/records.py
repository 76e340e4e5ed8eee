"""The one record format of every m4mjax dataset: a TFDS-serialized example per song in array_record files.

Fields: ``id`` (text), ``group`` (text: the source, e.g. ``debian/freedoom``), ``notes`` (int32 [N, 6], the
tokenizer's storage format, zlib-compressed), ``n_frames`` (int32, song length in 16th-note frames). The TFDS
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

FEATURES = tfds.features.FeaturesDict({
    "id": tfds.features.Text(),
    "group": tfds.features.Text(),
    "notes": tfds.features.Tensor(shape=(None, 6), dtype=np.int32, encoding=tfds.features.Encoding.ZLIB),
    "n_frames": np.int32,
})


def split_of_index(index: int) -> str:
    """Spec §5 rule: song index mod 10 -> 0 test, 1 valid, else train."""
    return {0: "test", 1: "valid"}.get(index % 10, "train")


def encode_song(song: dict[str, Any]) -> bytes:
    """Serialize one song dict (id, group, notes, n_frames) to record bytes."""
    return FEATURES.serialize_example({"id": song["id"], "group": song["group"],
                                       "notes": np.asarray(song["notes"], np.int32), "n_frames": int(song["n_frames"])})


def decode_song(record: bytes) -> dict[str, Any]:
    """Parse record bytes back to a dict with str id/group, int32 notes and int n_frames."""
    ex = FEATURES.deserialize_example_np(record)
    return {"id": _text(ex["id"]), "group": _text(ex["group"]), "notes": np.asarray(ex["notes"], np.int32),
            "n_frames": int(ex["n_frames"])}


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
