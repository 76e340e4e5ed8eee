"""One chord-labelled song as ``m4mjax.datasets.chords`` stores it: the music, the chord track and the beat track in
one notes array, and the exact labels (Harte segments in frames and seconds, downbeats, beats, tempo map) written
beside the shards for labels.json. Shared by every chord-data source (chords_synth, chord_data)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.datasets import records


def make_song(item: dict[str, Any], music: np.ndarray, n_frames: int, segments: list[tuple[int, int, str]],
              downbeats: Sequence[int], beats: Sequence[int], tempos: Sequence[tuple[int, float]],
              **extra: Any) -> list[dict[str, Any]]:
    """Assemble one song (music + chord track + beat track) and write its exact labels beside the shards."""
    if len(music) and music[:, tok.TRACK].max() >= labels.CHORD_TRACK:
        raise ValueError(f"{item['key']}: more than {labels.CHORD_TRACK} tracks")
    n = int(max(n_frames, max((e for _, e, _ in segments), default=0)))
    segments = [(int(s), int(e), lab) for s, e, lab in segments if e > s]
    drawn = [(s, e, lab if lab != "X" else "N") for s, e, lab in segments]
    notes = np.concatenate([music, labels.chord_track(drawn, n, downbeats), labels.beat_track(downbeats, beats, n)])
    tempo_map = {"tempos": sorted({int(f): float(q) for f, q in tempos if q and q > 0}.items()) or [(0, 120.0)]}
    sec = lambda x: np.round(labels.frames_to_seconds(np.asarray(x, np.float64), tempo_map), 4).tolist()  # noqa: E731
    starts, ends = sec([s for s, _, _ in segments]), sec([e for _, e, _ in segments])
    rec = {"group": item["group"], "n_frames": n, "seconds": sec([n])[0], "segments": segments,
           "segments_s": [(a, b, lab) for a, b, (_, _, lab) in zip(starts, ends, segments)],
           "downbeats": [int(d) for d in downbeats], "downbeats_s": sec(list(downbeats)),
           "beats": [int(b) for b in beats], "tempos": tempo_map["tempos"], **extra}
    records.write_json(label_path(item["out"], item["key"]), rec)
    return [{"id": item["key"], "group": item["group"], "notes": tok.sort_notes(notes), "n_frames": n}]


def label_path(out: str | Path, song_id: str) -> Path:
    """Where one song's exact labels wait (before labels.json gathers them)."""
    return Path(out) / "labels" / (hashlib.sha1(song_id.encode()).hexdigest()[:20] + ".json")
