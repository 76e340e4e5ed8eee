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

Exact duplicates (notes with the same frame, instrument and pitch, e.g. a part doubled on two tracks with one
program) follow ``duplicates`` (DUPLICATES): 'longest' (the default) stores one, the longest (the first in
track order among equally long ones), as the official ``dedup=True``; 'keep' stores every one, as the official
``dedup=False`` that built the pretraining corpus la_cp16_v2. Kept duplicates are in storage order like any
notes: shortest first, then by track, then as read (the official frame sort, without its velocity key); they
count toward the per-frame cap.

Labels written as music (chord and beat tracks) live in ``m4mjax.labels``.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

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
DUPLICATES = ("longest", "keep")  # exact duplicate notes: store the longest one | store every one

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
                  max_notes_per_frame: int = MAX_NOTES_PER_FRAME, duplicates: str = "longest"
                  ) -> tuple[np.ndarray, int]:
    """Convert a score (or a MIDI path) to (notes int32 [N, 6], n_frames) on the 16th-note grid.

    Exact duplicates (same frame, instrument, pitch) keep the longest, or all with ``duplicates='keep'``
    (module docstring); a frame keeps its first ``max_notes_per_frame`` notes in track order. ``n_frames``
    is the rounded end of the last note.
    """
    check_duplicates(duplicates)
    if not isinstance(score, symusic.Score):
        name = name or str(score)
        score = load_midi(score)
    name = name or "<score>"
    if str(score.ttype) != "Tick":
        score = score.to("tick")
    tpq = int(score.ticks_per_quarter)
    if tpq <= 0:
        raise ValueError(f"{name}: zero ticks per quarter note")
    arrs, programs, track_ids = [], [], []
    for t_idx, track in enumerate(score.tracks):
        arr = track.notes.numpy()
        if len(arr["time"]):
            arrs.append(arr)
            programs.append(DRUM if track.is_drum else min(int(track.program), DRUM - 1))
            track_ids.append(t_idx)
    if not arrs:
        raise ValueError(f"{name}: no notes")
    counts = [len(a["time"]) for a in arrs]  # all tracks at once: one numpy pass instead of one per track
    ticks = np.concatenate([a["time"] for a in arrs]).astype(np.int64)
    ends = ticks + np.concatenate([a["duration"] for a in arrs])
    # frame = floor(ticks * 4 / tpq + 0.5) in exact integer arithmetic: (8 t + tpq) // (2 tpq)
    start = (2 * FRAMES_PER_QUARTER * ticks + tpq) // (2 * tpq)
    cols = (start, np.repeat(np.asarray(programs, np.int64), counts),
            np.concatenate([a["pitch"] for a in arrs]).astype(np.int64),
            (2 * FRAMES_PER_QUARTER * ends + tpq) // (2 * tpq) - start,
            np.concatenate([a["velocity"] for a in arrs]).astype(np.int64),
            np.repeat(np.asarray(track_ids, np.int64), counts))
    return _finish(cols, name, max_notes_per_frame, duplicates)


def check_duplicates(duplicates: str) -> None:
    """ValueError unless ``duplicates`` is one of DUPLICATES."""
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {', '.join(map(repr, DUPLICATES))}, got {duplicates!r}")


def build_notes(raw: np.ndarray, name: str = "<notes>", max_notes_per_frame: int = MAX_NOTES_PER_FRAME,
                duplicates: str = "longest") -> tuple[np.ndarray, int]:
    """Finish raw rows (frame, instrument, pitch, length IN FRAMES, velocity, track) into (notes, n_frames).

    Checks ranges, maps lengths to duration classes, keeps the longest of exact duplicates (same frame,
    instrument, pitch; all of them with ``duplicates='keep'``) and the first ``max_notes_per_frame`` notes of
    a frame in track order.
    """
    check_duplicates(duplicates)
    raw = np.asarray(raw).reshape(-1, len(NOTE_FIELDS))
    if raw.dtype.kind != "i":
        raw = np.asarray(raw, np.float64)
    if len(raw) == 0:
        raise ValueError(f"{name}: no notes")
    _check_times(raw[:, FRAME], raw[:, DURATION], name)  # before any integer cast can wrap a huge value
    return _finish(tuple(np.ascontiguousarray(raw[:, c], np.int64) for c in range(len(NOTE_FIELDS))), name,
                   max_notes_per_frame, duplicates)


def _check_times(frame: np.ndarray, length: np.ndarray, name: str) -> None:
    if frame.min() < 0 or frame.max() + max(length.max(), 1) > MAX_SONG_FRAMES:
        bad = int(np.argmax(np.where(frame < 0, np.inf, frame + length)))
        raise ValueError(f"{name}: absurd tick values (a note at 16th-note frame {int(frame[bad])} lasting "
                         f"{int(length[bad])} frames; a song must end before frame {MAX_SONG_FRAMES})")


def _finish(cols: tuple[np.ndarray, ...], name: str, max_notes_per_frame: int, duplicates: str = "longest"
            ) -> tuple[np.ndarray, int]:
    """build_notes on six contiguous int64 columns (column arrays: ~2x faster than strided [N, 6] slices)."""
    check_duplicates(duplicates)
    frame, ins, pitch, length, vel, track = cols
    if len(frame) == 0:
        raise ValueError(f"{name}: no notes")
    _check_times(frame, length, name)
    if pitch.min() < 0 or pitch.max() > 127:
        raise ValueError(f"{name}: pitch out of 0..127")
    n_frames = int(max((frame + np.maximum(length, 1)).max(), 1))
    dur = duration_class(np.maximum(length, 0))
    # Every field is in range here (frame < 2^16, instrument/pitch < 128, duration class < 24), so the key needs
    # no clipping (but the track, as in sort_notes).
    key = ((frame << 8 | ins) << 7 | pitch) << 5
    if duplicates == "longest":  # dedup (frame, instrument, pitch): keep the longest (stable: first track wins ties)
        key |= N_DURATIONS - 1 - dur
        order = np.argsort(key, kind="stable")
        key = key[order] >> 5
        keep = np.empty(len(key), bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        order = order[keep]
    else:  # keep all: the storage order (frame, instrument, pitch, duration, track), then as read (stable)
        order = np.argsort((key | dur) << 16 | np.clip(track, 0, (1 << 16) - 1), kind="stable")
    raw = np.empty((len(order), len(NOTE_FIELDS)), np.int32)
    raw[:, FRAME], raw[:, INSTRUMENT], raw[:, PITCH] = frame[order], ins[order], pitch[order]
    raw[:, DURATION], raw[:, VELOCITY], raw[:, TRACK] = dur[order], np.clip(vel[order], 1, 127), track[order]
    # per-frame cap in track order (then original order), as the official preprocessing
    if np.bincount(raw[:, FRAME]).max() > max_notes_per_frame:
        raw = raw[np.argsort(_sort_key(raw, (FRAME, TRACK), (18, 16)), kind="stable")]
        rank = np.arange(len(raw)) - np.searchsorted(raw[:, FRAME], raw[:, FRAME], side="left")
        return sort_notes(raw[rank < max_notes_per_frame]), n_frames
    return raw, n_frames  # already in storage order: sorted by (frame, instrument, pitch), unique with 'longest'


# ------------------------------------------------------------------------------------------ tokens <-> notes
def notes_to_tokens(notes: np.ndarray, start_frame: int, n_frames: int, max_frame_tokens: int = MAX_FRAME_TOKENS,
                    song_frames: int | None = None, row_format: str = "eos") -> np.ndarray:
    """Tokenize frames [start_frame, start_frame + n_frames) of sorted notes -> int32 [n_frames, L].

    Each row is ``ins, pd, ..., EOS, PAD...``; rows at or past ``song_frames`` are all PAD. ``row_format``
    'eos': every row ends with EOS, so at most (L - 1) // 2 notes; 'official' (the official rows): up to
    L // 2 notes, EOS only when the row has fewer. Frames with more notes keep the first ones in token order.
    """
    if max_frame_tokens < 3:
        raise ValueError(f"max_frame_tokens must be >= 3, got {max_frame_tokens}")
    if row_format not in ("eos", "official"):
        raise ValueError(f"row_format must be 'eos' or 'official', got {row_format!r}")
    cap = (max_frame_tokens - 1) // 2 if row_format == "eos" else max_frame_tokens // 2
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
    short = 2 * counts < max_frame_tokens  # always, for 'eos' rows
    out[np.nonzero(short)[0], 2 * counts[short]] = EOS
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


DEFAULT_QPM = 120.0  # what a player assumes when a file has no tempo event
DEFAULT_TIME_SIGNATURE = (4, 4)


def timing_of(score: symusic.Score, end_frame: int | None = None) -> dict[str, list[tuple]]:
    """Tempo and time-signature changes of a score on its 16th-note frame grid, for ``notes_to_midi``.

    ``{"tempos": [(frame, qpm)], "time_signatures": [(frame, numerator, denominator)]}``: the setting in force
    at frame 0 first (120 qpm / 4/4 when the file has none), then the changes before ``end_frame``."""
    if str(score.ttype) != "Tick":
        score = score.to("tick")
    tpq = max(int(score.ticks_per_quarter), 1)

    def on_grid(events, value, default):
        out = {0: default}
        for e in sorted(events, key=lambda e: e.time):
            f = max(int(np.floor(e.time * FRAMES_PER_QUARTER / tpq + 0.5)), 0)
            if end_frame is None or f < end_frame:
                out[f] = value(e)  # a later event at the same frame wins
        return [(f, *v) for f, v in sorted(out.items())]

    return {"tempos": on_grid(score.tempos, lambda e: (float(e.qpm),), (DEFAULT_QPM,)),
            "time_signatures": on_grid(score.time_signatures, lambda e: (int(e.numerator), int(e.denominator)),
                                       DEFAULT_TIME_SIGNATURE)}


def notes_to_midi(notes: np.ndarray, path: str | os.PathLike | None = None, tpq: int = 480, *,
                  tempos: Sequence[tuple[int, float]] = ((0, DEFAULT_QPM),),
                  time_signatures: Sequence[tuple[int, int, int]] = ((0, *DEFAULT_TIME_SIGNATURE),),
                  end_frame: int | None = None) -> symusic.Score:
    """Build a symusic Score (one track per (track, instrument)); write it atomically when a path is given.

    A note lasts its duration class's template (``DURATION_FRAMES``, as the official decoder). Tempo and
    time-signature events are (frame, ...) tuples (see ``timing_of``). With ``end_frame`` the piece ends
    there: later notes are dropped, notes that would ring past it are cut at it, and the file ends at it
    (an "end" marker), so a player shows the length that was sampled."""
    notes = np.asarray(notes, np.int32).reshape(-1, len(NOTE_FIELDS))
    score = symusic.Score(tpq)
    step = tpq // FRAMES_PER_QUARTER
    length = DURATION_FRAMES[notes[:, DURATION]].astype(np.int64)
    if end_frame is not None:
        keep = notes[:, FRAME] < end_frame
        notes, length = notes[keep], np.minimum(length[keep], end_frame - notes[keep, FRAME])
    for f, qpm in tempos:
        score.tempos.append(symusic.Tempo(int(f) * step, qpm=float(qpm)))
    for f, num, den in time_signatures:
        score.time_signatures.append(symusic.TimeSignature(int(f) * step, int(num), int(den)))
    if end_frame is not None:
        score.markers.append(symusic.TextMeta(int(end_frame) * step, "end"))
    for tr, ins in sorted({(int(a), int(b)) for a, b in notes[:, [TRACK, INSTRUMENT]]}):
        sel = (notes[:, TRACK] == tr) & (notes[:, INSTRUMENT] == ins)
        track = symusic.Track(name=f"track{tr}" + ("-drums" if ins == DRUM else f"-program{ins}"),
                              program=0 if ins == DRUM else ins, is_drum=ins == DRUM)
        track.notes = symusic.Note.from_numpy(
            time=(notes[sel, FRAME] * step).astype(np.int32), duration=(length[sel] * step).astype(np.int32),
            pitch=notes[sel, PITCH].astype(np.int8), velocity=np.clip(notes[sel, VELOCITY], 1, 127).astype(np.int8))
        score.tracks.append(track)
    if path is not None:
        from m4mjax.run.io import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(_end_tracks_at_last_event(score.dumps_midi()))
            os.chmod(tmp, 0o644)
    return score


def _end_tracks_at_last_event(data: bytes) -> bytes:
    """symusic puts each End-of-Track 1 tick after the track's last event; move it onto that event (delta 0)
    so the file ends exactly at the last event (same length: the one-byte delta 1 becomes 0)."""
    out, pos = bytearray(data), 8 + struct.unpack(">I", data[4:8])[0]
    while pos + 8 <= len(out):
        n = struct.unpack(">I", out[pos + 4:pos + 8])[0]
        tail = pos + 8 + n - 4
        if out[pos:pos + 4] == b"MTrk" and out[tail:tail + 4] == b"\x01\xff\x2f\x00":
            out[tail] = 0
        pos += 8 + n
    return bytes(out)


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

