"""Labels written as music (spec §5): chord and beat tracks inside a song's notes, Harte labels, .lab I/O.

Chord track (track CHORD_TRACK, program 0): per chord the bass (the inversion's bass) at 36+pc, the chord
tones (mir_eval's bitmap, which includes the bass) at 48+pc and the 9th/11th/13th extensions at 60+pc
(A:min -> 45, 48, 52, 57). Times sit on a ``grid``-frame (eighth-note) grid; the chord is re-struck at every
barline. A piece whose length has no exact duration class is split into pieces that have one (10 frames ->
8 + 2), so the track decodes to the same times and notes never overlap.

Beat track (track BEAT_TRACK, drums): 35 on every downbeat; 42 on every eighth note (from each beat, every 2
frames up to the next beat); 38 at mid-bar = the midpoint between a downbeat and the next one, rounded to the
eighth grid from the downbeat, halves rounded down (as the official pipeline, which interpolates the midpoint
between downbeats and snaps it to the half-beat grid). Mid-bar is thus defined in every metre: 4/4 beat 3
(frame 8), 2/4 beat 2, 6/8 the second dotted quarter (frame 6), 3/4 the "and" of beat 2 (frame 6), 5/4 the
"and" of beat 3 (frame 10), 7/8 the 4th eighth (frame 6); none when the bar is a single eighth. The last bar
uses the previous bar's length.

Canonical labels: the decoder names a (bass, chord tones, extensions) set by the reading that (1) needs the
fewest tones outside a mir_eval quality template other than the bass (those need parentheses), then (2)
the fewest tones outside it, then (3) the fewest odd extensions (b11, #13, ...), then (4) has the bass as
root, then (5) comes first in QUALITY_ORDER; extensions named by mir_eval's extended qualities (9, maj9, min9, 11, min11, 13, maj13,
min13) where exact, else in parentheses; the bass as a degree after '/'. Root positions of every quality
round-trip exactly; inversions of chords whose notes equal another chord's (dim7, aug, sus2/sus4, maj6/min7,
min6/hdim7) come back as the other reading (C:maj6/3 -> A:min7/5), since the notes cannot tell them apart.
"""
from __future__ import annotations

import bisect
import math
import os
from typing import Any, Sequence

import mir_eval.chord
import numpy as np

from m4mjax.tokenizer import (DRUM, DURATION, DURATION_FRAMES, FRAME, FRAMES_PER_QUARTER, INSTRUMENT, PITCH,
                              TRACK, empty_notes, sort_notes)

CHORD_TRACK, BEAT_TRACK = 250, 251  # track ids of the label tracks; tracks < 250 are music
BASS_LOW, TONE_LOW, EXT_LOW = 36, 48, 60
BEAT_DOWN, BEAT_MID, BEAT_EIGHTH = 35, 38, 42
EIGHTH = FRAMES_PER_QUARTER // 2
NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
DEGREES = ["1", "b2", "2", "b3", "3", "4", "b5", "5", "b6", "6", "b7", "7"]
EXT_DEGREES = {1: "b9", 2: "9", 3: "#9", 4: "b11", 5: "11", 6: "#11", 7: "bb13", 8: "b13", 9: "13", 10: "#13",
               11: "##13"}
_ODD_EXT = {4, 7, 10, 11}  # b11, bb13, #13, ##13: extensions no real 9th/11th/13th chord has
QUALITY_ORDER = ["maj", "min", "7", "min7", "maj7", "dim", "aug", "dim7", "hdim7", "minmaj7", "maj6", "min6",
                 "sus4", "sus2", "5", "1"]
_TEMPLATES = {q: frozenset(np.flatnonzero(mir_eval.chord.QUALITIES[q]).tolist()) for q in QUALITY_ORDER}
_EXTENDED = {("7", ("9",)): "9", ("maj7", ("9",)): "maj9", ("min7", ("9",)): "min9", ("7", ("11", "9")): "11",
             ("min7", ("11", "9")): "min11", ("7", ("11", "13", "9")): "13", ("maj7", ("11", "13", "9")): "maj13",
             ("min7", ("11", "13", "9")): "min13"}


# --------------------------------------------------------------------------------------- Harte <-> notes
def harte_to_notes(label: str) -> tuple[int | None, tuple[int, ...], tuple[int, ...]]:
    """A Harte label -> (bass pc, chord-tone pcs, extension pcs); 'N' and 'X' -> (None, (), ())."""
    try:
        root, tones, bass = mir_eval.chord.encode(label)
        _, full, _ = mir_eval.chord.encode(label, reduce_extended_chords=True)
    except (mir_eval.chord.InvalidChordException, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"bad chord label {label!r}: {e}") from None
    if root < 0:
        return None, (), ()
    chord = tuple(sorted((root + i) % 12 for i in range(12) if tones[i] > 0))
    ext = tuple(sorted((root + i) % 12 for i in range(12) if full[i] > 0 and tones[i] <= 0))
    return (root + bass) % 12, chord, ext


def transpose_label(label: str, k: int) -> str:
    """A Harte label moved by k semitones (its root respelled from ``NAMES``; quality and bass interval kept; 'N' and
    'X' unchanged)."""
    if label in ("N", "X"):
        return label
    root, sep, rest = label.partition(":")
    if not sep:
        root, sep, rest = label.partition("/")  # 'C/3' (a major chord with a bass)
    pc = mir_eval.chord.pitch_class_to_semitone(root)
    return NAMES[(pc + k) % 12] + sep + rest


def chord_pitches(label: str) -> list[int]:
    """MIDI pitches of one label on the chord-track layout: bass 36+pc, tones 48+pc, extensions 60+pc."""
    bass, chord, ext = harte_to_notes(label)
    if bass is None:
        return []
    return [BASS_LOW + bass] + [TONE_LOW + pc for pc in chord] + [EXT_LOW + pc for pc in ext]


def notes_to_harte(bass_pc: int | None, chord_pcs: Sequence[int], ext_pcs: Sequence[int] = ()) -> str:
    """Name (bass pc, chord-tone pcs, extension pcs) with one canonical Harte label (see module doc)."""
    tones = {int(p) % 12 for p in chord_pcs} | ({int(bass_pc) % 12} if bass_pc is not None else set())
    if not tones:
        return "N"
    bass = None if bass_pc is None else int(bass_pc) % 12
    ext_set = {int(p) % 12 for p in ext_pcs} - tones
    best = None
    for rank, q in enumerate(QUALITY_ORDER):
        for root in sorted(tones):
            template = {(root + i) % 12 for i in _TEMPLATES[q]}
            if template <= tones:
                odd_ext = sum((p - root) % 12 in _ODD_EXT for p in ext_set)
                extra = tones - template
                score = (len(extra - {bass}), len(extra), odd_ext, bass is not None and root != bass, rank)
                if best is None or score < best[0]:
                    best = (score, root, q, template)
    _, root, quality, template = best
    added = sorted((p - root) % 12 for p in tones - template - ({bass} if bass is not None else set()))
    ext_iv = {(p - root) % 12 for p in ext_set}
    ext = [EXT_DEGREES[i] for i in sorted(ext_iv, key=lambda i: (int(EXT_DEGREES[i].lstrip("b#")), i))]
    degrees = [DEGREES[i] for i in added]
    if not degrees and ext and (quality, tuple(sorted(ext))) in _EXTENDED:
        quality, ext = _EXTENDED[(quality, tuple(sorted(ext)))], []
    degrees += ext
    label = f"{NAMES[root]}:{quality}" + (f"({','.join(degrees)})" if degrees else "")
    if bass is not None and bass != root:
        label += "/" + DEGREES[(bass - root) % 12]
    return label


def pitches_to_harte(pitches: Sequence[int]) -> str:
    """Name one onset group of chord-track pitches (lowest 36-47 = bass, 48-59 tones, 60-71 extensions)."""
    p = np.asarray(pitches, int)
    bass = p[(p >= BASS_LOW) & (p < TONE_LOW)]
    return notes_to_harte(int(bass.min()) % 12 if len(bass) else None, p[(p >= TONE_LOW) & (p < EXT_LOW)] % 12,
                          p[(p >= EXT_LOW) & (p < EXT_LOW + 12)] % 12)


# ------------------------------------------------------------------------------------------- chord track
def _exact_pieces(length: int) -> list[int]:
    """Split a length in frames into duration-class templates that sum to it exactly (largest first)."""
    out = []
    while length > 0:
        d = int(DURATION_FRAMES[np.searchsorted(DURATION_FRAMES, length, side="right") - 1])
        out.append(d)
        length -= d
    return out


def chord_track(chords: Sequence[tuple[int, int, str]], n_frames: int, bar_starts: Sequence[int], grid: int = 2,
                *, track: int = CHORD_TRACK, instrument: int = 0, velocity: int = 100) -> np.ndarray:
    """Render (start_frame, end_frame, label) chords as notes: ``grid``-quantised, re-struck at each barline."""
    def q(t: float) -> int:
        return min(max(int(math.floor(t / grid + 0.5)) * grid, 0), int(n_frames))

    segs = sorted((q(s), q(e), lab) for s, e, lab in chords)
    bars = sorted({int(b) for b in bar_starts})
    rows = []
    for i, (s, e, lab) in enumerate(segs):
        if i + 1 < len(segs):
            e = min(e, segs[i + 1][0])
        pitches = chord_pitches(lab)
        if e <= s or not pitches:
            continue
        cuts = [s] + bars[bisect.bisect_right(bars, s):bisect.bisect_left(bars, e)] + [e]
        for a, b in zip(cuts[:-1], cuts[1:]):
            for d in _exact_pieces(b - a):
                cls = int(np.searchsorted(DURATION_FRAMES, d))
                rows += [(a, instrument, p, cls, velocity, track) for p in pitches]
                a += d
    return sort_notes(np.array(rows, np.int32)) if rows else empty_notes()


def track_to_chords(notes: np.ndarray, track: int | None = CHORD_TRACK, n_frames: int | None = None
                    ) -> list[tuple[int, int, str]]:
    """Read a chord track back as (start_frame, end_frame, label), re-strikes merged, gaps 'N'.

    A group of notes starting together is one chord lasting to the next onset or its longest note.
    ``track=None`` reads every non-drum note in 36-71; with ``n_frames`` the segments cover [0, n_frames)."""
    notes = np.asarray(notes).reshape(-1, 6)
    sel = notes[(notes[:, INSTRUMENT] != DRUM) & (notes[:, PITCH] >= BASS_LOW) & (notes[:, PITCH] < EXT_LOW + 12)]
    if track is not None:
        sel = sel[sel[:, TRACK] == track]
    sel = sel[np.argsort(sel[:, FRAME], kind="stable")]
    onsets = np.unique(sel[:, FRAME])
    out: list[tuple[int, int, str]] = []
    for i, t in enumerate(onsets.tolist()):
        group = sel[sel[:, FRAME] == t]
        end = t + int(DURATION_FRAMES[group[:, DURATION]].max())
        if i + 1 < len(onsets):
            end = min(end, int(onsets[i + 1]))
        label = pitches_to_harte(group[:, PITCH])
        if out and out[-1][1] < t:
            out.append((out[-1][1], t, "N"))
        if out and out[-1][2] == label and out[-1][1] == t:
            out[-1] = (out[-1][0], end, label)
        else:
            out.append((t, end, label))
    if n_frames is not None:
        out = [(s, min(e, n_frames), lab) for s, e, lab in out if s < n_frames]
        if not out or out[0][0] > 0:
            out.insert(0, (0, out[0][0] if out else n_frames, "N"))
        if out[-1][1] < n_frames:
            out.append((out[-1][1], n_frames, "N"))
    return out


# -------------------------------------------------------------------------------------------- beat track
def meter_grid(time_signatures: Sequence[tuple[int, int, int]], n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(downbeat frames, beat frames) from (frame, numerator, denominator) changes (``tokenizer.timing_of``).

    A beat is the denominator's note, or a dotted one in compound metres (6/8, 9/8, 12/8: numerator a
    multiple of 3 above 3, denominator >= 8); a change starts a new bar."""
    ts = sorted((int(f), int(n), int(d)) for f, n, d in time_signatures) or [(0, 4, 4)]
    if ts[0][0] > 0:
        ts.insert(0, (0, 4, 4))
    downs, beats = [], []
    for i, (f, num, den) in enumerate(ts):
        stop = ts[i + 1][0] if i + 1 < len(ts) else n_frames
        unit = 4 * FRAMES_PER_QUARTER / max(den, 1)
        beat = unit * (3 if den >= 8 and num % 3 == 0 and num > 3 else 1)
        bar = max(unit * max(num, 1), 1.0)
        t = float(f)
        while t < stop - 1e-9:
            downs.append(int(round(t)))
            k = 0.0
            while k < bar - 1e-9 and t + k < stop - 1e-9:
                beats.append(int(round(t + k)))
                k += beat
            t += bar
    return np.unique(np.array(downs, np.int64)), np.unique(np.array(beats, np.int64))


def beat_track(downbeats: Sequence[int], beats: Sequence[int] | None, n_frames: int, *, track: int = BEAT_TRACK,
               velocity: int = 100) -> np.ndarray:
    """Drum notes marking the metre: 35 downbeats, 38 mid-bar, 42 every eighth (see module doc).

    ``beats=None`` means quarter-note beats from the first downbeat."""
    downs = sorted({int(d) for d in downbeats if 0 <= int(d) < n_frames})
    if beats is None:
        beats = range(downs[0] if downs else 0, n_frames, FRAMES_PER_QUARTER)
    bts = sorted({int(b) for b in beats if 0 <= int(b) < n_frames})
    rows = []
    for i, b in enumerate(bts):
        nxt = bts[i + 1] if i + 1 < len(bts) else n_frames
        rows += [(t, BEAT_EIGHTH) for t in range(b, nxt, EIGHTH)]
    for i, d in enumerate(downs):
        rows.append((d, BEAT_DOWN))
        length = downs[i + 1] - d if i + 1 < len(downs) else (d - downs[i - 1] if i else 0)
        mid = d + EIGHTH * ((length + 1) // (2 * EIGHTH))
        if d < mid < n_frames:
            rows.append((mid, BEAT_MID))
    out = np.array([(t, DRUM, p, 0, velocity, track) for t, p in rows], np.int32)
    return sort_notes(out) if len(out) else empty_notes()


def track_to_downbeats(notes: np.ndarray, track: int | None = BEAT_TRACK) -> np.ndarray:
    """Frames of a beat track's downbeat markers (drum pitch 35), sorted and unique."""
    notes = np.asarray(notes).reshape(-1, 6)
    sel = notes[(notes[:, INSTRUMENT] == DRUM) & (notes[:, PITCH] == BEAT_DOWN)]
    if track is not None:
        sel = sel[sel[:, TRACK] == track]
    return np.unique(sel[:, FRAME])


# ------------------------------------------------------------------------------------ frames <-> seconds
def tempo_anchors(tempos: Sequence[tuple[int, float]]) -> list[tuple[float, float]]:
    """(frame, qpm) tempo changes (``tokenizer.timing_of(score)["tempos"]``) -> (frame, seconds) anchors.

    One anchor a quarter note after the last change carries its tempo past the end."""
    tempos = sorted((float(f), float(q)) for f, q in tempos) or [(0.0, 120.0)]
    if tempos[0][0] > 0:
        tempos.insert(0, (0.0, tempos[0][1]))
    anchors, sec = [], 0.0
    for i, (f, qpm) in enumerate(tempos):
        if i:
            pf, pq = tempos[i - 1]
            sec += (f - pf) * 60.0 / (pq * FRAMES_PER_QUARTER)
        anchors.append((f, sec))
    f, qpm = tempos[-1]
    anchors.append((f + FRAMES_PER_QUARTER, sec + 60.0 / qpm))
    return anchors


def _anchor_arrays(tempo_map: Any) -> tuple[np.ndarray, np.ndarray]:
    """(frames, seconds) arrays of a tempo map: (frame, seconds) anchors or a ``timing_of`` dict."""
    if isinstance(tempo_map, dict):
        tempo_map = tempo_anchors(tempo_map["tempos"])
    a = np.asarray(tempo_map, np.float64).reshape(-1, 2)
    if len(a) < 2 or np.any(np.diff(a[:, 0]) <= 0) or np.any(np.diff(a[:, 1]) <= 0):
        raise ValueError(f"a tempo map needs >= 2 anchors increasing in frame and seconds, got {a.tolist()}")
    return a[:, 0], a[:, 1]


def _piecewise(x: Any, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Piecewise-linear map through (xs, ys), extended past both ends with the end segments' slopes."""
    x = np.asarray(x, np.float64)
    y = np.interp(x, xs, ys)
    lo, hi = x < xs[0], x > xs[-1]
    y = np.where(lo, ys[0] + (x - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0]), y)
    return np.where(hi, ys[-1] + (x - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), y)


def frames_to_seconds(frames: Any, tempo_map: Any) -> np.ndarray:
    """Frame positions -> seconds through a tempo map ((frame, seconds) anchors or ``timing_of``'s dict)."""
    xs, ys = _anchor_arrays(tempo_map)
    return _piecewise(frames, xs, ys)


def segments_to_seconds(segments: Sequence[tuple[int, int, str]], tempo_map: Any) -> list[tuple[float, float, str]]:
    """(start_frame, end_frame, label) segments -> (start_s, end_s, label) for a .lab file."""
    if not segments:
        return []
    t = frames_to_seconds([[s, e] for s, e, _ in segments], tempo_map)
    return [(float(a), float(b), lab) for (a, b), (_, _, lab) in zip(t, segments)]


def seconds_to_frames(seconds: Any, tempo_map: Any) -> np.ndarray:
    """Seconds -> fractional frame positions (inverse of ``frames_to_seconds``)."""
    xs, ys = _anchor_arrays(tempo_map)
    return _piecewise(seconds, ys, xs)


# ---------------------------------------------------------------------------------------------- .lab I/O
def write_lab(path: str | os.PathLike, segments: Sequence[tuple[float, float, str]]) -> None:
    """Write (start_s, end_s, label) segments as a mir_eval .lab file (atomically)."""
    from m4mjax.run.io import atomic_write

    atomic_write(path, "".join(f"{float(s):.6f}\t{float(e):.6f}\t{lab}\n" for s, e, lab in segments))


def read_lab(path: str | os.PathLike) -> list[tuple[float, float, str]]:
    """Read a .lab file (start end label per line, whitespace separated); UserError naming the bad line."""
    from m4mjax.run.errors import UserError

    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read chord labels: {e}", str(path)) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 2)
        try:
            s, e, lab = float(parts[0]), float(parts[1]), parts[2].strip()
            if lab != "X":
                harte_to_notes(lab)
        except (IndexError, ValueError) as err:
            raise UserError(f"bad .lab line {line.strip()!r} (want 'start end label'; {err})", f"{path}:{n}") from None
        if not e >= s >= 0:
            raise UserError(f"bad .lab times {s} {e} (need 0 <= start <= end)", f"{path}:{n}")
        out.append((s, e, lab))
    return out
