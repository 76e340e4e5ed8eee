"""Objective metrics for conditional generation (spec §6), pure numpy on note arrays (m4mjax.tokenizer layout:
frame, instrument, pitch, duration class, velocity, track; a note lasts ``DURATION_FRAMES[duration]`` frames).

Melody/chords: ``chord_tone_ratio`` (melody notes whose pitch class is a tone of the chord sounding at their
onset, overall and on strong beats), ``pitch_class_histogram`` / ``interval_histogram`` compared with
``histogram_distance`` (total variation, 0 = same, 1 = disjoint), ``note_density`` (notes per bar).
Drums/others: ``onset_f1`` (mir_eval onset matching, tolerance in frames), ``groove_similarity`` (per-bar binary
onset-position vectors, 1 - Hamming / positions, averaged over bars: Wu & Yang 2020's grooving similarity
between two tracks), ``instruments_count``, ``drum_pattern_repetition``.
Baseline: ``harmonise`` = per bar, the best of the 24 major/minor triads for the melody's pitch classes.
Bars are ``bar`` frames (16 = 4/4 on the 16th grid) unless given.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from m4mjax import labels
from m4mjax.tokenizer import DRUM, DURATION, DURATION_FRAMES, FRAME, INSTRUMENT, PITCH

Segments = Sequence[tuple[int, int, str]]


def _ends(notes: np.ndarray) -> np.ndarray:
    return notes[:, FRAME].astype(np.int64) + DURATION_FRAMES[notes[:, DURATION]]


# ------------------------------------------------------------------------------------- melody vs chords
def chord_tones(label: str) -> set[int]:
    """Pitch classes of a Harte label's chord tones (bass included, extensions not); empty for N/X."""
    bass, tones, _ = labels.harte_to_notes(label)
    return set() if bass is None else set(tones) | {bass}


def chord_tone_ratio(melody: np.ndarray, chords: Segments, strong: Sequence[int] | None = None,
                     bar: int = 16) -> dict[str, float]:
    """Fraction of melody notes (under a chord, not N/X) whose pitch class is a chord tone: 'overall', and
    'strong' for onsets on the ``strong`` frames (default: every half bar, i.e. beats 1 and 3 of 4/4).
    NaN where no note counts."""
    strong_set = set(range(0, 1 << 20, bar // 2)) if strong is None else {int(s) for s in strong}
    hits, total, s_hits, s_total = 0, 0, 0, 0
    for f, p in melody[:, [FRAME, PITCH]]:
        lab = next((lab for s, e, lab in chords if s <= f < e), None)
        tones = chord_tones(lab) if lab not in (None, "N", "X") else set()
        if not tones:
            continue
        hit = int(p) % 12 in tones
        hits, total = hits + hit, total + 1
        if int(f) in strong_set:
            s_hits, s_total = s_hits + hit, s_total + 1
    return {"overall": hits / total if total else float("nan"), "strong": s_hits / s_total if s_total else float("nan")}


def pitch_class_histogram(notes: np.ndarray) -> np.ndarray:
    """Normalised count of notes per pitch class [12] (drums left out; zeros when no note)."""
    n = notes[notes[:, INSTRUMENT] != DRUM]
    h = np.bincount(n[:, PITCH] % 12, minlength=12).astype(np.float64)
    return h / h.sum() if h.sum() else h


def top_line(notes: np.ndarray) -> np.ndarray:
    """The highest non-drum note per onset frame, in time order (a melody's line)."""
    n = notes[notes[:, INSTRUMENT] != DRUM]
    n = n[np.lexsort((n[:, PITCH], n[:, FRAME]))]
    return n[np.r_[n[1:, FRAME] != n[:-1, FRAME], True]] if len(n) else n


def interval_histogram(notes: np.ndarray, max_interval: int = 12) -> np.ndarray:
    """Normalised histogram [2 * max_interval + 1] of the intervals between consecutive notes of the top line,
    clipped to +-max_interval (bin max_interval = repeated pitch)."""
    p = top_line(notes)[:, PITCH].astype(np.int64)
    iv = np.clip(np.diff(p), -max_interval, max_interval) + max_interval
    h = np.bincount(iv, minlength=2 * max_interval + 1).astype(np.float64)
    return h / h.sum() if h.sum() else h


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance of two normalised histograms: 0.5 * sum |a - b| (0 same, 1 disjoint)."""
    return float(0.5 * np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def note_density(notes: np.ndarray, n_frames: int, bar: int = 16) -> float:
    """Notes per bar."""
    return float(len(notes) * bar / max(n_frames, 1))


# ------------------------------------------------------------------------------------------ drums/others
def onset_f1(est: np.ndarray, ref: np.ndarray, tolerance: int = 0) -> float:
    """F-measure of the two tracks' onset frames (unique), matched one-to-one within ``tolerance`` frames
    (mir_eval's onset matching); 0 when either has no onset."""
    import mir_eval

    e = np.unique(est[:, FRAME]).astype(np.float64)
    r = np.unique(ref[:, FRAME]).astype(np.float64)
    if not len(e) or not len(r):
        return 0.0
    matched = len(mir_eval.util.match_events(r, e, float(tolerance)))
    p, rc = matched / len(e), matched / len(r)
    return 0.0 if matched == 0 else 2 * p * rc / (p + rc)


def groove_vectors(notes: np.ndarray, n_frames: int, bar: int = 16) -> np.ndarray:
    """Binary onset-position vectors per bar [n_bars, bar]."""
    n_bars = max(-(-int(n_frames) // bar), 1)
    g = np.zeros((n_bars, bar), bool)
    f = notes[:, FRAME].astype(np.int64)
    f = f[f < n_bars * bar]
    g[f // bar, f % bar] = True
    return g


def groove_similarity(a: np.ndarray, b: np.ndarray, n_frames: int, bar: int = 16) -> float:
    """Mean over bars of 1 - Hamming(groove_a, groove_b) / bar (1 = same onset positions in every bar)."""
    ga, gb = groove_vectors(a, n_frames, bar), groove_vectors(b, n_frames, bar)
    return float(np.mean(1.0 - (ga ^ gb).sum(1) / bar))


def instruments_count(notes: np.ndarray) -> int:
    """Distinct instruments (programs; all drums count as one)."""
    return int(len(np.unique(notes[:, INSTRUMENT])))


def drum_pattern_repetition(drums: np.ndarray, n_frames: int, bar: int = 16) -> dict[str, float]:
    """Per-bar drum patterns (the set of (position, pitch) onsets): 'repeat_prev' = fraction of bars after the
    first whose pattern equals the previous bar's (bars where both are empty left out); 'unique' = distinct
    non-empty patterns / non-empty bars. NaN where nothing counts."""
    d = drums[drums[:, INSTRUMENT] == DRUM]
    n_bars = max(-(-int(n_frames) // bar), 1)
    pats = [frozenset() for _ in range(n_bars)]
    groups: dict[int, set] = {}
    for f, p in d[:, [FRAME, PITCH]]:
        if f < n_bars * bar:
            groups.setdefault(int(f) // bar, set()).add((int(f) % bar, int(p)))
    for b, s in groups.items():
        pats[b] = frozenset(s)
    pairs = [(x, y) for x, y in zip(pats[:-1], pats[1:]) if x or y]
    full = [p for p in pats if p]
    return {"repeat_prev": sum(x == y for x, y in pairs) / len(pairs) if pairs else float("nan"),
            "unique": len(set(full)) / len(full) if full else float("nan")}


# -------------------------------------------------------------------------------------------- baseline
TRIADS = [(r, q, {r, (r + (4 if q == "maj" else 3)) % 12, (r + 7) % 12}) for r in range(12) for q in ("maj", "min")]


def harmonise(melody: np.ndarray, n_frames: int, bar: int = 16) -> list[tuple[int, int, str]]:
    """Rule baseline: per bar, the triad (24 major/minor, order C:maj, C:min, C#:maj, ...) whose tones cover the
    most melody duration sounding in that bar (ties: the first); 'N' for a bar without melody. Returns
    (start frame, end frame, Harte label) segments, one per bar."""
    starts, ends = melody[:, FRAME].astype(np.int64), _ends(melody)
    pcs = melody[:, PITCH] % 12
    out = []
    for b0 in range(0, max(int(n_frames), 1), bar):
        b1 = min(b0 + bar, int(n_frames))
        w = np.clip(np.minimum(ends, b1) - np.maximum(starts, b0), 0, None)
        weight = np.bincount(pcs, weights=w, minlength=12) if len(pcs) else np.zeros(12)
        if weight.sum() <= 0:
            out.append((b0, b1, "N"))
            continue
        scores = [sum(weight[t] for t in tones) for _, _, tones in TRIADS]
        r, q, _ = TRIADS[int(np.argmax(scores))]
        out.append((b0, b1, f"{labels.NAMES[r]}:{q}"))
    return out
