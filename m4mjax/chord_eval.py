"""Chord and downbeat scoring (mir_eval) and the two rule-based chord analysers the analysis task must beat.

Scores: mir_eval's root, thirds, majmin, mirex and sevenths comparisons, duration-weighted over the union of
the reference and estimated segment boundaries (the estimate padded/trimmed to the reference's span with
'N', gaps filled with 'N'); an estimated 'X' is scored as 'N' (mirex would count it correct). Each song's
result carries the weight behind every metric, so a set's score is duration-weighted over all songs
(``aggregate``). Downbeats: mir_eval's F-measure (+-70 ms), pooled over a set by matched counts.

Baselines over a song's notes (drums and label tracks excluded): a pitch-class template matcher (24 triads
+ N, cosine similarity against the duration-weighted pitch-class histogram of each bar or beat, optional
extra weight on the lowest sounding note) and chorder's ``Dechorder`` (per quarter-note beat) mapped to Harte.
"""
from __future__ import annotations

from typing import Any, Sequence

import mir_eval
import numpy as np

from m4mjax.labels import CHORD_TRACK, DEGREES, NAMES
from m4mjax.tokenizer import DRUM, DURATION, DURATION_FRAMES, FRAME, INSTRUMENT, PITCH, TRACK

CHORD_METRICS = ("root", "thirds", "majmin", "mirex", "sevenths")
Segments = Sequence[tuple[float, float, str]]


# ------------------------------------------------------------------------------------------------ scoring
def _contiguous(segments: Segments, start: float, end: float, x_to_n: bool) -> tuple[np.ndarray, list[str]]:
    """Segments clipped to [start, end], sorted, overlaps cut, gaps and the ends filled with 'N'."""
    out, t = [], start
    for s, e, lab in sorted((float(s), float(e), str(lab)) for s, e, lab in segments):
        s, e = max(s, t), min(e, end)
        if e <= s:
            continue
        if s > t:
            out.append((t, s, "N"))
        out.append((s, e, "N" if x_to_n and lab == "X" else lab))
        t = e
    if t < end:
        out.append((t, end, "N"))
    return np.array([(s, e) for s, e, _ in out], np.float64).reshape(-1, 2), [lab for *_, lab in out]


def score_chords(ref_segments: Segments, est_segments: Segments) -> dict[str, Any]:
    """Duration-weighted mir_eval chord scores of one song; ``weights`` holds each metric's scored duration."""
    ref_segments = [(s, e, lab) for s, e, lab in ref_segments if float(e) > float(s)]
    out: dict[str, Any] = {m: 0.0 for m in CHORD_METRICS}
    out["weights"] = {m: 0.0 for m in CHORD_METRICS}
    if not ref_segments:
        return out
    start = min(float(s) for s, _, _ in ref_segments)
    end = max(float(e) for _, e, _ in ref_segments)
    ref_iv, ref_lab = _contiguous(ref_segments, start, end, x_to_n=False)  # a reference X stays unscored
    est_iv, est_lab = _contiguous(est_segments, start, end, x_to_n=True)
    intervals, ref_l, est_l = mir_eval.util.merge_labeled_intervals(ref_iv, ref_lab, est_iv, est_lab)
    durations = mir_eval.util.intervals_to_durations(intervals)
    for m in CHORD_METRICS:
        comp = getattr(mir_eval.chord, m)(ref_l, est_l)
        out[m] = float(mir_eval.chord.weighted_accuracy(comp, durations)) if durations.sum() > 0 else 0.0
        out["weights"][m] = float(durations[comp >= 0].sum())
    return out


def score_downbeats(ref_times: Sequence[float], est_times: Sequence[float], window: float = 0.07) -> dict[str, float]:
    """Downbeat F-measure (mir_eval.beat.f_measure) plus the counts a set-level score pools."""
    ref, est = np.sort(np.asarray(ref_times, np.float64)), np.sort(np.asarray(est_times, np.float64))
    hits = len(mir_eval.util.match_events(ref, est, window)) if len(ref) and len(est) else 0
    f = float(mir_eval.beat.f_measure(ref, est, f_measure_threshold=window)) if len(ref) and len(est) else 0.0
    return {"downbeat_f": f, "downbeat_hits": hits, "downbeat_n_ref": len(ref), "downbeat_n_est": len(est)}


def aggregate(song_scores: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Set-level scores: chord metrics duration-weighted over all songs, downbeat F pooled over all downbeats."""
    out: dict[str, float] = {}
    for m in CHORD_METRICS:
        w = sum(s["weights"][m] for s in song_scores if "weights" in s)
        out[m] = sum(s[m] * s["weights"][m] for s in song_scores if "weights" in s) / w if w > 0 else float("nan")
    beats = [s for s in song_scores if "downbeat_hits" in s]
    if beats:
        n = sum(s["downbeat_n_ref"] + s["downbeat_n_est"] for s in beats)
        out["downbeat_f"] = 2.0 * sum(s["downbeat_hits"] for s in beats) / n if n else 0.0
    return out


# ----------------------------------------------------------------------------------- template matcher
TRIAD_LABELS = [f"{NAMES[r]}:{q}" for r in range(12) for q in ("maj", "min")]
_TRIADS = np.array([np.roll([1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0] if q == "maj" else
                            [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0], r) for r in range(12) for q in ("maj", "min")],
                   np.float64)


def music_notes(notes: np.ndarray) -> np.ndarray:
    """The pitched music of a song: drums and label tracks (track >= CHORD_TRACK) removed."""
    notes = np.asarray(notes).reshape(-1, 6)
    return notes[(notes[:, INSTRUMENT] != DRUM) & (notes[:, TRACK] < CHORD_TRACK)]


def pitch_class_roll(notes: np.ndarray, n_frames: int, bass_weight: float = 0.0) -> np.ndarray:
    """float [n_frames, 12]: per frame, how many sounding notes have each pitch class (+bass_weight on the
    lowest sounding pitch)."""
    notes = music_notes(notes)
    start = np.clip(notes[:, FRAME], 0, n_frames)
    end = np.clip(notes[:, FRAME] + DURATION_FRAMES[notes[:, DURATION]], 0, n_frames)
    roll = np.zeros((n_frames + 1, 128), np.int32)
    np.add.at(roll, (start, notes[:, PITCH]), 1)
    np.add.at(roll, (end, notes[:, PITCH]), -1)
    roll = np.cumsum(roll, 0)[:n_frames]
    pcs = np.zeros((n_frames, 12), np.float64)
    for octave in range(0, 128, 12):
        block = roll[:, octave:octave + 12]
        pcs[:, :block.shape[1]] += block
    if bass_weight:
        sounding = roll > 0
        has = sounding.any(1)
        low = np.argmax(sounding, 1)
        pcs[np.flatnonzero(has), low[has] % 12] += bass_weight
    return pcs


def _merge(segments: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Join abutting segments with the same label."""
    out: list[tuple[int, int, str]] = []
    for s, e, lab in segments:
        if out and out[-1][2] == lab and out[-1][1] == s:
            out[-1] = (out[-1][0], e, lab)
        else:
            out.append((s, e, lab))
    return out


def template_chords(notes: np.ndarray, boundaries: Sequence[int], n_frames: int, bass_weight: float = 0.0
                    ) -> list[tuple[int, int, str]]:
    """Label each window between ``boundaries`` (bar or beat frames) with the best of 24 triads (cosine
    similarity to its duration-weighted pitch-class histogram) or 'N' when nothing sounds."""
    cuts = sorted({0, int(n_frames)} | {int(b) for b in boundaries if 0 < int(b) < n_frames})
    cum = np.concatenate([np.zeros((1, 12)), np.cumsum(pitch_class_roll(notes, n_frames, bass_weight), 0)])
    norms = np.linalg.norm(_TRIADS, axis=1)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        hist = cum[b] - cum[a]
        if hist.sum() <= 0:
            out.append((a, b, "N"))
            continue
        cos = _TRIADS @ hist / (norms * np.linalg.norm(hist))
        out.append((a, b, TRIAD_LABELS[int(np.argmax(cos))]))
    return _merge(out)


# ---------------------------------------------------------------------------------------------- chorder
_CHORDER_QUALITY = {"M": "maj", "m": "min", "o": "dim", "+": "aug", "7": "7", "M7": "maj7", "m7": "min7",
                    "o7": "dim7", "/o7": "hdim7", "sus2": "sus2", "sus4": "sus4"}


def chorder_to_harte(chord: Any) -> str:
    """A chorder ``Chord`` (root_pc, quality, bass_pc) -> Harte label; incomplete chords -> 'N'."""
    if chord.root_pc is None or chord.quality is None:
        return "N"
    label = f"{NAMES[chord.root_pc]}:{_CHORDER_QUALITY[chord.quality]}"
    if chord.bass_pc is not None and chord.bass_pc != chord.root_pc:
        label += "/" + DEGREES[(chord.bass_pc - chord.root_pc) % 12]
    return label


def dechorder_chords(notes: np.ndarray, n_frames: int, frames_per_beat: int = 4) -> list[tuple[int, int, str]]:
    """chorder's ``Dechorder.dechord`` (one chord per quarter-note beat) on the song's pitched music."""
    from chorder import Dechorder
    from miditoolkit.midi import containers, parser

    notes = music_notes(notes)
    tick = 120  # ticks per frame, 480 per quarter note
    midi = parser.MidiFile(ticks_per_beat=tick * frames_per_beat)
    for tr in np.unique(notes[:, TRACK]):
        sel = notes[notes[:, TRACK] == tr]
        inst = containers.Instrument(program=int(sel[0, INSTRUMENT]), is_drum=False, name=f"track{tr}")
        inst.notes = [containers.Note(velocity=100, pitch=int(p), start=int(f) * tick,
                                      end=(int(f) + int(DURATION_FRAMES[d])) * tick)
                      for f, p, d in sel[:, [FRAME, PITCH, DURATION]]]
        midi.instruments.append(inst)
    midi.max_tick = int(n_frames) * tick
    if not len(notes):
        return [(0, int(n_frames), "N")] if n_frames > 0 else []
    chords = Dechorder.dechord(midi)
    out = []
    for i, ch in enumerate(chords):
        s, e = i * frames_per_beat, min((i + 1) * frames_per_beat, int(n_frames))
        if e > s:
            out.append((s, e, chorder_to_harte(ch)))
    if out and out[-1][1] < n_frames:
        out.append((out[-1][1], int(n_frames), "N"))
    return _merge(out)
