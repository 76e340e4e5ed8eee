"""MIDI <-> tokens in the paper's compound 16th-note representation (spec §2).

Storage format ("notes"): an int32 array [N, 6] with columns FRAME, INSTRUMENT, PITCH, DURATION, VELOCITY,
TRACK, sorted by (frame, instrument, pitch, duration, track). One frame = one 16th note, counted with the
file's ticks-per-quarter (beat = quarter note, as the official code's constant-tempo reading). INSTRUMENT
is the GM program 0..126, or DRUM (=127, the official layout) for channel-10 notes; a melodic program 127
(Gunshot) is stored as 126 so that 127 always means drums. DURATION is one of 24 classes (DURATION_FRAMES,
nearest template, ties to the shorter, as the official preprocessing).

Tokens (official no-velocity layout, vocabulary 3,331): per note an instrument token (0..127; ids up to 255
reserved) then a pitch-duration token ``pitch + (duration + 1) * 128`` (128..3199); 24*128 + 256 = 3,328
normal ids, then SOS, EOS, PAD. A frame row is ``ins, pd, ins, pd, ..., EOS, PAD...`` of MAX_FRAME_TOKENS
ids; frames past the end of a song are all PAD. Within a frame notes are ordered by (instrument, pitch,
duration); the official sort put velocity first, which the no-velocity model cannot see (documented
deviation). At most MAX_NOTES_PER_FRAME = 16 notes per frame (the official ``max_polyphony``), kept in
track order when a file has more, so MAX_FRAME_TOKENS = 2*16 + 1 = 33.

Labels written as music (spec §5): chord tracks (bass 36+pc, chord tones 48+pc, extensions 60+pc, program
0, re-struck at every barline, eighth-note grid) and beat tracks (drums: 35 downbeat, 38 mid-bar, 42 every
eighth), with the inverses used for evaluation.
"""
from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path
from typing import Sequence

import mir_eval.chord
import numpy as np
import symusic

FRAMES_PER_QUARTER = 4
DURATION_FRAMES = np.array([1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                            1536, 2048, 3072, 4096], np.int32)
N_DURATIONS = len(DURATION_FRAMES)  # 24
_DURATION_BOUNDS = (DURATION_FRAMES[1:] + DURATION_FRAMES[:-1]) / 2
N_PITCHES = 128
DRUM = 127  # instrument id of drums (official layout: program 127 marks drums)
N_INSTRUMENT_IDS = 256  # instrument tokens 0..127, padded to 256 ids
N_NORMAL_TOKENS = N_DURATIONS * N_PITCHES + N_INSTRUMENT_IDS  # 3328
SOS, EOS, PAD = N_NORMAL_TOKENS, N_NORMAL_TOKENS + 1, N_NORMAL_TOKENS + 2
VOCAB_SIZE = N_NORMAL_TOKENS + 3  # 3331
MAX_NOTES_PER_FRAME = 16
MAX_FRAME_TOKENS = 2 * MAX_NOTES_PER_FRAME + 1  # 33
MAX_SONG_FRAMES = 1 << 16  # 4096 bars of 4/4; longer files are rejected as having absurd tick values

FRAME, INSTRUMENT, PITCH, DURATION, VELOCITY, TRACK = range(6)
NOTE_FIELDS = ("frame", "instrument", "pitch", "duration", "velocity", "track")


def empty_notes() -> np.ndarray:
    """A [0, 6] int32 notes array."""
    return np.zeros((0, len(NOTE_FIELDS)), np.int32)


def _sort_key(notes: np.ndarray, cols: Sequence[int], bits: Sequence[int]) -> np.ndarray:
    """One int64 key ordering rows lexicographically by ``cols`` (each clipped to its bit width)."""
    key = np.zeros(len(notes), np.int64)
    for c, b in zip(cols, bits):
        key = (key << b) | np.clip(notes[:, c].astype(np.int64), 0, (1 << b) - 1)
    return key


def sort_notes(notes: np.ndarray) -> np.ndarray:
    """Sort notes by (frame, instrument, pitch, duration, track): the storage and token order."""
    notes = np.asarray(notes, np.int32).reshape(-1, len(NOTE_FIELDS))
    key = _sort_key(notes, (FRAME, INSTRUMENT, PITCH, DURATION, TRACK), (18, 8, 7, 5, 16))
    return notes[np.argsort(key, kind="stable")]


def duration_class(frames: np.ndarray) -> np.ndarray:
    """Map note lengths in frames to the 24 duration classes (nearest template, ties to the shorter)."""
    return np.searchsorted(_DURATION_BOUNDS, np.asarray(frames), side="left").astype(np.int32)


# ----------------------------------------------------------------------------------------------- MIDI input
def _check_midi_bytes(data: bytes, name: str) -> None:
    """Validate the SMF container (header, division, chunk lengths, track count) before parsing."""
    if len(data) == 0:
        raise ValueError(f"{name}: empty file")
    if data[:4] != b"MThd":
        raise ValueError(f"{name}: not a MIDI file (no 'MThd' header)")
    if len(data) < 14:
        raise ValueError(f"{name}: truncated MIDI header ({len(data)} bytes)")
    hlen, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if hlen < 6 or fmt > 2:
        raise ValueError(f"{name}: bad MIDI header (length {hlen}, format {fmt})")
    if division == 0:
        raise ValueError(f"{name}: zero ticks per quarter note in the header")
    if division & 0x8000:
        raise ValueError(f"{name}: SMPTE time division is not supported (need ticks per quarter)")
    pos, found = 8 + hlen, 0
    while pos + 8 <= len(data):
        kind, length = data[pos:pos + 4], struct.unpack(">I", data[pos + 4:pos + 8])[0]
        if pos + 8 + length > len(data):
            raise ValueError(f"{name}: truncated: chunk {found} claims {length} bytes, "
                             f"{len(data) - pos - 8} remain")
        found += kind == b"MTrk"
        pos += 8 + length
    if found != ntracks:
        raise ValueError(f"{name}: header says {ntracks} tracks but the file holds {found}")


def load_midi(path: str | os.PathLike, data: bytes | None = None) -> symusic.Score:
    """Read and validate a MIDI file (or its bytes), raising ValueError naming the file and the problem."""
    name = str(path)
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"{name}: cannot read ({e.strerror or e})") from None
    _check_midi_bytes(data, name)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as e:  # symusic raises RuntimeError/IndexError on malformed events
        raise ValueError(f"{name}: malformed MIDI events ({e})") from None
    if score.note_num() == 0:
        raise ValueError(f"{name}: no notes")
    return score


def midi_to_notes(score: symusic.Score | str | os.PathLike, name: str | None = None,
                  max_notes_per_frame: int = MAX_NOTES_PER_FRAME) -> tuple[np.ndarray, int]:
    """Convert a score (or a MIDI path) to (notes int32 [N, 6], n_frames) on the 16th-note grid.

    Exact duplicates (same frame, instrument, pitch) keep the longest; a frame keeps its first
    ``max_notes_per_frame`` notes in track order. ``n_frames`` is the rounded end of the last note.
    """
    if not isinstance(score, symusic.Score):
        name = name or str(score)
        score = load_midi(score)
    name = name or "<score>"
    if str(score.ttype) != "Tick":
        score = score.to("tick")
    tpq = int(score.ticks_per_quarter)
    if tpq <= 0:
        raise ValueError(f"{name}: zero ticks per quarter note")
    cols = []
    for t_idx, track in enumerate(score.tracks):
        arr = track.notes.numpy()
        if len(arr["time"]) == 0:
            continue
        start = np.floor(arr["time"].astype(np.float64) * FRAMES_PER_QUARTER / tpq + 0.5)
        end = np.floor((arr["time"].astype(np.float64) + arr["duration"]) * FRAMES_PER_QUARTER / tpq + 0.5)
        program = DRUM if track.is_drum else min(int(track.program), DRUM - 1)
        n = len(start)
        cols.append(np.stack([start, np.full(n, program), arr["pitch"].astype(np.int64), end - start,
                              arr["velocity"].astype(np.int64), np.full(n, t_idx)], 1))
    if not cols:
        raise ValueError(f"{name}: no notes")
    return build_notes(np.concatenate(cols), name, max_notes_per_frame)


def build_notes(raw: np.ndarray, name: str = "<notes>", max_notes_per_frame: int = MAX_NOTES_PER_FRAME
                ) -> tuple[np.ndarray, int]:
    """Finish raw rows (frame, instrument, pitch, length IN FRAMES, velocity, track) into (notes, n_frames).

    Checks ranges, maps lengths to duration classes, keeps the longest of exact duplicates (same frame,
    instrument, pitch) and the first ``max_notes_per_frame`` notes of a frame in track order.
    """
    raw = np.asarray(raw, np.float64).reshape(-1, len(NOTE_FIELDS))
    if len(raw) == 0:
        raise ValueError(f"{name}: no notes")
    if raw[:, FRAME].min() < 0 or raw[:, FRAME].max() + max(raw[:, DURATION].max(), 1) > MAX_SONG_FRAMES:
        raise ValueError(f"{name}: absurd tick values (a note at 16th-note frame {int(raw[:, FRAME].max())}, "
                         f"limit {MAX_SONG_FRAMES})")
    raw = raw.astype(np.int64)
    if raw[:, PITCH].min() < 0 or raw[:, PITCH].max() > 127:
        raise ValueError(f"{name}: pitch out of 0..127")
    n_frames = int(max((raw[:, FRAME] + np.maximum(raw[:, DURATION], 1)).max(), 1))
    raw[:, DURATION] = duration_class(np.maximum(raw[:, DURATION], 0))
    raw[:, VELOCITY] = np.clip(raw[:, VELOCITY], 1, 127)
    raw = raw.astype(np.int32)
    # dedup (frame, instrument, pitch): keep the longest (stable, first track wins ties)
    longest_first = raw.copy()
    longest_first[:, DURATION] = N_DURATIONS - 1 - raw[:, DURATION]
    raw = raw[np.argsort(_sort_key(longest_first, (FRAME, INSTRUMENT, PITCH, DURATION), (18, 8, 7, 5)), kind="stable")]
    key = raw[:, [FRAME, INSTRUMENT, PITCH]]
    keep = np.ones(len(raw), bool)
    keep[1:] = np.any(key[1:] != key[:-1], axis=1)
    raw = raw[keep]
    # per-frame cap in track order (then original order), as the official preprocessing
    if np.bincount(raw[:, FRAME]).max() > max_notes_per_frame:
        raw = raw[np.argsort(_sort_key(raw, (FRAME, TRACK), (18, 16)), kind="stable")]
        rank = np.arange(len(raw)) - np.searchsorted(raw[:, FRAME], raw[:, FRAME], side="left")
        raw = raw[rank < max_notes_per_frame]
    return sort_notes(raw), n_frames


# ------------------------------------------------------------------------------------------ tokens <-> notes
def notes_to_tokens(notes: np.ndarray, start_frame: int, n_frames: int, max_frame_tokens: int = MAX_FRAME_TOKENS,
                    song_frames: int | None = None) -> np.ndarray:
    """Tokenize frames [start_frame, start_frame + n_frames) of sorted notes -> int32 [n_frames, L].

    Each row is ``ins, pd, ..., EOS, PAD...``; rows at or past ``song_frames`` are all PAD. Frames with more
    than (L - 1) // 2 notes keep the first ones in token order.
    """
    if max_frame_tokens < 3:
        raise ValueError(f"max_frame_tokens must be >= 3, got {max_frame_tokens}")
    cap = (max_frame_tokens - 1) // 2
    frames = notes[:, FRAME]
    lo, hi = np.searchsorted(frames, [start_frame, start_frame + n_frames], side="left")
    win = notes[lo:hi]
    rel = win[:, FRAME] - start_frame
    rank = np.arange(len(win)) - np.searchsorted(rel, rel, side="left")
    ok = rank < cap
    rel, rank, win = rel[ok], rank[ok], win[ok]
    out = np.full((n_frames, max_frame_tokens), PAD, np.int32)
    out[rel, 2 * rank] = win[:, INSTRUMENT]
    out[rel, 2 * rank + 1] = win[:, PITCH] + (win[:, DURATION] + 1) * N_PITCHES
    counts = np.bincount(rel, minlength=n_frames)
    out[np.arange(n_frames), 2 * counts] = EOS
    if song_frames is not None:
        out[max(song_frames - start_frame, 0):] = PAD
    return out


def tokens_to_notes(tokens: np.ndarray, start_frame: int = 0, velocity: int = 100, track: int = 0) -> np.ndarray:
    """Decode int [F, L] token rows (e.g. sampled) back to sorted notes; invalid pairs are dropped."""
    tokens = np.asarray(tokens).reshape(-1, np.shape(tokens)[-1])
    n, length = tokens.shape
    is_eos = tokens == EOS
    end = np.where(is_eos.any(1), is_eos.argmax(1), length)
    ins, pd = tokens[:, 0:length - 1:2], tokens[:, 1:length:2]
    pair_end = 2 * np.arange(ins.shape[1]) + 1
    ok = (pair_end[None, :] < end[:, None]) & (ins >= 0) & (ins < 128) & (pd >= N_PITCHES) & (
        pd < N_PITCHES * (N_DURATIONS + 1))
    f, k = np.nonzero(ok)
    ins, pd = ins[f, k], pd[f, k]
    out = np.stack([f + start_frame, ins, pd % N_PITCHES, pd // N_PITCHES - 1, np.full(len(f), velocity),
                    np.full(len(f), track)], 1)
    return sort_notes(out)


def notes_to_midi(notes: np.ndarray, path: str | os.PathLike | None = None, tpq: int = 480) -> symusic.Score:
    """Build a symusic Score (one track per (track, instrument)); write it atomically when a path is given."""
    notes = np.asarray(notes, np.int32).reshape(-1, len(NOTE_FIELDS))
    score = symusic.Score(tpq)
    step = tpq // FRAMES_PER_QUARTER
    for tr, ins in sorted({(int(a), int(b)) for a, b in notes[:, [TRACK, INSTRUMENT]]}):
        sel = notes[(notes[:, TRACK] == tr) & (notes[:, INSTRUMENT] == ins)]
        track = symusic.Track(name=f"track{tr}" + ("-drums" if ins == DRUM else f"-program{ins}"),
                              program=0 if ins == DRUM else ins, is_drum=ins == DRUM)
        track.notes = symusic.Note.from_numpy(
            time=(sel[:, FRAME] * step).astype(np.int32), duration=(DURATION_FRAMES[sel[:, DURATION]] * step).astype(np.int32),
            pitch=sel[:, PITCH].astype(np.int8), velocity=np.clip(sel[:, VELOCITY], 1, 127).astype(np.int8))
        score.tracks.append(track)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            score.dump_midi(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return score


# ---------------------------------------------------------------------------------------------- augmentation
def pitch_shift_range(notes: np.ndarray, lo: int = -5, hi: int = 6) -> tuple[int, int]:
    """The shifts in [lo, hi] that keep every non-drum pitch in 0..127 (drums never move)."""
    mel = notes[notes[:, INSTRUMENT] != DRUM, PITCH]
    if len(mel) == 0:
        return 0, 0
    return max(lo, -int(mel.min())), min(hi, 127 - int(mel.max()))


def pitch_shift(notes: np.ndarray, k: int) -> np.ndarray:
    """Transpose non-drum notes by k semitones; ValueError if a pitch would leave 0..127."""
    out = notes.copy()
    mel = out[:, INSTRUMENT] != DRUM
    out[mel, PITCH] += k
    if mel.any() and (out[mel, PITCH].min() < 0 or out[mel, PITCH].max() > 127):
        raise ValueError(f"pitch shift {k} moves notes out of 0..127 (valid range {pitch_shift_range(notes, -127, 127)})")
    return out


# ------------------------------------------------------------------------------------------ labels as music
BASS_LOW, TONE_LOW, EXT_LOW = 36, 48, 60
_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
_DEGREES = ["1", "b2", "2", "b3", "3", "4", "b5", "5", "b6", "6", "b7", "7"]
_EXT_DEGREES = {1: "b9", 2: "9", 3: "#9", 5: "11", 6: "#11", 8: "b13", 9: "13"}
_QUALITY_ORDER = ["maj", "min", "7", "min7", "maj7", "dim", "aug", "dim7", "hdim7", "minmaj7", "maj6", "min6",
                  "sus4", "sus2", "5", "1"]
_QUALITY_BITMAPS = {q: mir_eval.chord.quality_to_bitmap(q) for q in _QUALITY_ORDER}


def chord_pitches(label: str) -> list[int]:
    """MIDI pitches of one chord label (mir_eval syntax): bass 36+pc, tones 48+pc, extensions 60+pc."""
    try:
        root, tones, bass = mir_eval.chord.encode(label)
        _, full, _ = mir_eval.chord.encode(label, reduce_extended_chords=True)
    except mir_eval.chord.InvalidChordException as e:
        raise ValueError(f"bad chord label {label!r}: {e}") from None
    if root < 0:
        return []
    tones, full = np.roll(tones, root), np.roll(full, root)
    return ([BASS_LOW + (root + bass) % 12] + [TONE_LOW + i for i in range(12) if tones[i] > 0]
            + [EXT_LOW + i for i in range(12) if full[i] > 0 and tones[i] <= 0])


def chord_track(chords: Sequence[tuple[int, int, str]], bar_frames: int = 16, offset: int = 0, grid: int = 2,
                instrument: int = 0, track: int = 1, velocity: int = 100) -> np.ndarray:
    """Render (start_frame, end_frame, label) chords as notes, re-struck at every barline, on a ``grid`` frame grid."""
    rows = []
    for start, end, label in chords:
        pitches = chord_pitches(label)
        s, e = int(round(start / grid)) * grid, int(round(end / grid)) * grid
        if not pitches or e <= s:
            continue
        first_bar = -(-(s - offset) // bar_frames)
        cuts = [s] + [offset + b * bar_frames for b in range(first_bar, (e - offset - 1) // bar_frames + 1)
                      if s < offset + b * bar_frames < e] + [e]
        for a, b in zip(cuts[:-1], cuts[1:]):
            dur = int(duration_class(b - a))
            rows += [(a, instrument, p, dur, velocity, track) for p in pitches]
    return sort_notes(np.array(rows, np.int32)) if rows else empty_notes()


def _label_from_pitches(pitches: np.ndarray) -> str:
    """Name the chord of one onset group on the chord-track layout (root from templates, prefer bass = root)."""
    bass_n = pitches[(pitches >= BASS_LOW) & (pitches < TONE_LOW)]
    tone_pc = sorted({int(p) % 12 for p in pitches[(pitches >= TONE_LOW) & (pitches < EXT_LOW)]})
    ext_pc = sorted({int(p) % 12 for p in pitches[(pitches >= EXT_LOW) & (pitches < EXT_LOW + 12)]})
    if not tone_pc:
        return "N"
    bass = int(bass_n.min()) % 12 if len(bass_n) else tone_pc[0]
    tone_map = np.zeros(12, int)
    tone_map[tone_pc] = 1
    best = None
    for rank, q in enumerate(_QUALITY_ORDER):
        for root in range(12):
            if np.array_equal(np.roll(_QUALITY_BITMAPS[q], root), tone_map):
                score = (root != bass, rank)
                if best is None or score < best[0]:
                    best = (score, root, q)
    if best is None:
        root, quality = bass, "(" + ",".join(_DEGREES[(pc - bass) % 12] for pc in tone_pc) + ")"
    else:
        _, root, quality = best
    exts = [_EXT_DEGREES.get((pc - root) % 12, _DEGREES[(pc - root) % 12]) for pc in ext_pc]
    if exts:
        quality = quality[:-1] + "," + ",".join(exts) + ")" if quality.endswith(")") else quality + "(" + ",".join(exts) + ")"
    label = f"{_NAMES[root]}:{quality}"
    if bass != root:
        label += "/" + _DEGREES[(bass - root) % 12]
    return label


def notes_to_chords(notes: np.ndarray, track: int | None = None, n_frames: int | None = None
                    ) -> list[tuple[int, int, str]]:
    """Read a chord track back as merged (start_frame, end_frame, label) intervals; gaps are 'N'."""
    sel = notes[(notes[:, INSTRUMENT] != DRUM) & (notes[:, PITCH] >= BASS_LOW) & (notes[:, PITCH] < EXT_LOW + 12)]
    if track is not None:
        sel = sel[sel[:, TRACK] == track]
    sel = sel[np.argsort(sel[:, FRAME], kind="stable")]
    onsets = np.unique(sel[:, FRAME])
    out: list[tuple[int, int, str]] = []
    for i, t in enumerate(onsets):
        group = sel[sel[:, FRAME] == t]
        end = int(t + DURATION_FRAMES[group[:, DURATION]].max())
        if i + 1 < len(onsets):
            end = min(end, int(onsets[i + 1]))
        label = _label_from_pitches(group[:, PITCH])
        if out and out[-1][1] < t:
            out.append((out[-1][1], int(t), "N"))
        if out and out[-1][2] == label and out[-1][1] == t:
            out[-1] = (out[-1][0], end, label)
        else:
            out.append((int(t), end, label))
    if n_frames is not None and out and out[-1][1] < n_frames:
        out.append((out[-1][1], n_frames, "N"))
    return out


BEAT_DOWN, BEAT_MID, BEAT_EIGHTH = 35, 38, 42


def beat_track(n_frames: int, beats_per_bar: int = 4, frames_per_beat: int = FRAMES_PER_QUARTER, offset: int = 0,
               track: int = 0, velocity: int = 100) -> np.ndarray:
    """Drum notes marking the metre: 35 on downbeats, 38 at mid-bar (eighth grid), 42 on every eighth."""
    bar = beats_per_bar * frames_per_beat
    eighth = max(frames_per_beat // 2, 1)
    rows = []
    d1 = int(duration_class(eighth))
    for t in range(offset, n_frames, eighth):
        rows.append((t, DRUM, BEAT_EIGHTH, d1, velocity, track))
    for b in range(offset, n_frames, bar):
        rows.append((b, DRUM, BEAT_DOWN, d1, velocity, track))
        mid = b + (bar // (2 * eighth)) * eighth
        if mid < n_frames and mid != b:
            rows.append((mid, DRUM, BEAT_MID, d1, velocity, track))
    return sort_notes(np.array(rows, np.int32)) if rows else empty_notes()


def notes_to_downbeats(notes: np.ndarray, track: int | None = None) -> np.ndarray:
    """Frames of downbeat markers (drum pitch 35) of a beat track, sorted and unique."""
    sel = notes[(notes[:, INSTRUMENT] == DRUM) & (notes[:, PITCH] == BEAT_DOWN)]
    if track is not None:
        sel = sel[sel[:, TRACK] == track]
    return np.unique(sel[:, FRAME])
