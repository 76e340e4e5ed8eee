"""Readers for the embedded corpus: MIDI files, MIDI lumps inside Doom WADs, and music21's bundled scores.

Every loader takes an item dict (see convert.py) and returns songs ``{id, group, notes, n_frames}`` or raises
ValueError naming the item; an item's optional ``duplicates`` ('longest' when absent, or 'keep') says how exact
duplicate notes are stored (m4mjax.tokenizer). ABC chord symbols ("quoted strings" music21 reads as
ChordSymbol) become a chord track (labels.chord_track) after the melody, so folk tunes with chords serve the
melody<->chord tasks.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import numpy as np

from m4mjax import tokenizer as tok  # m4mjax.labels (mir_eval, scipy) only where chords are read: MIDI workers stay light

MUSIC21_FORMATS = (".abc", ".krn", ".mxl", ".xml", ".musicxml", ".mid")


# ---------------------------------------------------------------------------------------------------- WAD
def wad_lumps(path: str | Path, prefix: str = "D_") -> list[tuple[str, int, int]]:
    """List (name, offset, size) of the lumps whose names start with ``prefix`` in a Doom WAD file."""
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] not in (b"IWAD", b"PWAD"):
        raise ValueError(f"{path}: not a WAD file")
    n, dir_off = struct.unpack("<ii", data[4:12])
    if n < 0 or dir_off < 12 or dir_off + 16 * n > len(data):
        raise ValueError(f"{path}: WAD directory out of range ({n} lumps at {dir_off})")
    out = []
    for i in range(n):
        off, size, raw = struct.unpack("<ii8s", data[dir_off + 16 * i:dir_off + 16 * i + 16])
        name = raw.split(b"\0")[0].decode("ascii", "replace")
        if name.startswith(prefix) and size > 0:
            if off < 0 or off + size > len(data):
                raise ValueError(f"{path}: lump {name} out of range")
            out.append((name, off, size))
    return out


def wad_midi_items(path: str | Path, group: str, key_prefix: str, seen: set[str]) -> list[dict[str, Any]]:
    """Items for the MIDI lumps of a WAD; lumps whose bytes were already seen (``seen``: sha1s) are skipped."""
    data = Path(path).read_bytes()
    items = []
    for name, off, size in wad_lumps(path):
        blob = data[off:off + size]
        if blob[:4] != b"MThd":
            continue  # MUS-format lumps are not MIDI
        digest = hashlib.sha1(blob).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        items.append({"key": f"{key_prefix}:{name}", "kind": "wad", "path": str(path), "offset": off, "size": size,
                      "group": group})
    return items


# ------------------------------------------------------------------------------------------------ loaders
def load_item(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Convert one item (kind midi | wad | music21) to its songs."""
    kind, duplicates = item["kind"], item.get("duplicates", "longest")
    if kind == "midi":  # read here so every message names the item's key (a safe, relative name)
        try:
            with open(item["path"], "rb") as f:
                blob = f.read()
        except OSError as e:
            raise ValueError(f"{item['key']}: cannot read ({e.strerror or e})") from None
        score = tok.load_midi(item["key"], data=blob)
        notes, n = tok.midi_to_notes(score, name=item["key"], duplicates=duplicates)
        return [{"id": item["key"], "group": item["group"], "notes": notes, "n_frames": n}]
    if kind == "wad":
        with open(item["path"], "rb") as f:
            f.seek(item["offset"])
            blob = f.read(item["size"])
        score = tok.load_midi(item["key"], data=blob)
        notes, n = tok.midi_to_notes(score, name=item["key"], duplicates=duplicates)
        return [{"id": item["key"], "group": item["group"], "notes": notes, "n_frames": n}]
    if kind == "music21":
        return music21_songs(item["path"], item["key"], item["group"], duplicates)
    raise ValueError(f"{item.get('key')}: unknown item kind {kind!r}")


_KIND_TO_QUALITY = {
    "major": "maj", "minor": "min", "augmented": "aug", "diminished": "dim", "dominant-seventh": "7",
    "major-seventh": "maj7", "minor-seventh": "min7", "diminished-seventh": "dim7",
    "half-diminished-seventh": "hdim7", "major-minor": "minmaj7", "major-sixth": "maj6", "minor-sixth": "min6",
    "dominant-ninth": "9", "major-ninth": "maj9", "minor-ninth": "min9", "dominant-11th": "11",
    "minor-11th": "min11", "dominant-13th": "13", "major-13th": "maj13", "minor-13th": "min13",
    "suspended-second": "sus2", "suspended-fourth": "sus4", "power": "5", "pedal": "1", "augmented-seventh": "aug(b7)",
}


def chord_symbol_label(cs: Any) -> str | None:
    """mir_eval label of a music21 ChordSymbol (None when its kind has no mir_eval quality)."""
    from m4mjax import labels

    quality = _KIND_TO_QUALITY.get(cs.chordKind)
    root = cs.root()
    if quality is None or root is None:
        return None
    label = f"{labels.NAMES[root.pitchClass]}:{quality}"
    bass = cs.bass()
    if bass is not None and bass.pitchClass != root.pitchClass:
        label += "/" + labels.DEGREES[(bass.pitchClass - root.pitchClass) % 12]
    return label


def score_to_notes(score: Any, name: str, duplicates: str = "longest") -> tuple[np.ndarray, int, int]:
    """A music21 Score -> (notes, n_frames, number of chord symbols rendered as a chord track)."""
    from music21 import harmony, meter

    from m4mjax import labels

    fpq = tok.FRAMES_PER_QUARTER
    parts = list(score.parts) or [score]
    rows, chords, bar_frames, bar_offset, end, chord_part = [], [], 16, 0, 0.0, None
    for t, part in enumerate(parts):
        flat = part.flatten()
        inst = part.getInstrument(returnDefault=True)
        program = int(inst.midiProgram) if inst is not None and inst.midiProgram is not None else 0
        program = min(max(program, 0), tok.DRUM - 1)
        open_ties: dict[int, int] = {}  # midi pitch -> row index of the note a tie continues
        for el in flat.notes:
            off, ql = float(el.offset), float(el.quarterLength)
            if isinstance(el, harmony.ChordSymbol):
                if chord_part in (None, t):
                    chord_part = t
                    chords.append((off, chord_symbol_label(el)))
                continue
            end = max(end, off + ql)
            start_f, end_f = round(off * fpq), round((off + ql) * fpq)
            for n in (el.notes if el.isChord else [el]):
                if not hasattr(n, "pitch"):
                    continue  # unpitched percussion in a score: no GM mapping here
                midi, tie = n.pitch.midi, (n.tie.type if n.tie is not None else None)
                if tie in ("continue", "stop") and midi in open_ties:  # merge tied notes (no deepcopy)
                    r = rows[open_ties[midi]]
                    rows[open_ties[midi]] = (r[0], r[1], r[2], end_f - r[0], r[4], r[5])
                    if tie == "stop":
                        del open_ties[midi]
                    continue
                if tie in ("start", "continue"):
                    open_ties[midi] = len(rows)
                rows.append((start_f, program, midi, end_f - start_f, 100, t))
        if t == 0:
            ts = flat.getElementsByClass(meter.TimeSignature)
            if ts:
                bar_frames = max(int(round(ts[0].barDuration.quarterLength * fpq)), 1)
            measures = part.getElementsByClass("Measure")
            if len(measures) > 1:
                bar_offset = int(round(float(measures[1].offset) * fpq)) % bar_frames
    n_chords = 0
    if chords:
        spans = []
        for (off, label), nxt in zip(chords, [c[0] for c in chords[1:]] + [end]):
            if label is not None and nxt > off:
                spans.append((round(off * fpq), round(nxt * fpq), label))
        n_span = max((e for _, e, _ in spans), default=0)
        track = labels.chord_track(spans, n_span, range(bar_offset, n_span, bar_frames), track=len(parts))
        n_chords = len(spans)
        if len(track):
            rows += [tuple(r) for r in track.tolist()]
    if not rows:
        raise ValueError(f"{name}: no notes")
    raw = np.array(rows, np.float64)
    if n_chords:  # chord-track rows carry duration classes; convert back to frames for build_notes
        is_chord = raw[:, tok.TRACK] == len(parts)
        raw[is_chord, tok.DURATION] = tok.DURATION_FRAMES[raw[is_chord, tok.DURATION].astype(int)]
    notes, n_frames = tok.build_notes(raw, name, duplicates=duplicates)
    return notes, n_frames, n_chords


def music21_songs(path: str, key: str, group: str, duplicates: str = "longest") -> list[dict[str, Any]]:
    """Parse a music21 corpus file (an ABC file may hold many tunes) into songs ``key#i``."""
    import music21

    try:
        parsed = music21.converter.parse(path, forceSource=True)
    except Exception as e:
        raise ValueError(f"{key}: music21 cannot parse ({type(e).__name__}: {e})") from None
    scores = list(parsed.scores) if isinstance(parsed, music21.stream.Opus) else [parsed]
    songs = []
    for i, sc in enumerate(scores):
        try:
            notes, n_frames, n_chords = score_to_notes(sc, f"{key}#{i}", duplicates)
        except ValueError:
            continue  # an empty tune inside a collection; the file is still usable
        songs.append({"id": f"{key}#{i}", "group": group, "notes": notes, "n_frames": n_frames,
                      "n_chords": n_chords})
    if not songs:
        raise ValueError(f"{key}: no notes in any of its {len(scores)} scores")
    return songs
