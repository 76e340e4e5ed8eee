"""Tokenizer: round trip on the 16th grid, every malformed-MIDI case, labels as music."""
import struct

import mir_eval.chord
import numpy as np
import pytest
import symusic

from m4mjax import tokenizer as tok


def _random_score(rng: np.random.Generator, tpq: int = 96) -> tuple[symusic.Score, list[tuple]]:
    """A random multi-track score on the 16th grid with durations from the class templates."""
    score = symusic.Score(tpq)
    step = tpq // 4
    expect, seen = [], set()
    for t in range(int(rng.integers(1, 4))):
        drum = t == 0 and rng.random() < 0.5
        program = int(rng.integers(0, 127))
        track = symusic.Track(program=0 if drum else program, is_drum=bool(drum))
        ins = tok.DRUM if drum else program
        busy: dict[int, list[tuple[int, int]]] = {}  # one channel cannot hold overlapping notes of one pitch
        for _ in range(int(rng.integers(1, 40))):
            f, p, d = int(rng.integers(0, 200)), int(rng.integers(20, 100)), int(rng.integers(0, 12))
            e = f + int(tok.DURATION_FRAMES[d])
            if (f, ins, p) in seen or any(a < e and f < b for a, b in busy.get(p, [])):
                continue  # exact duplicates are merged by design
            busy.setdefault(p, []).append((f, e))
            seen.add((f, ins, p))
            track.notes.append(symusic.Note(f * step, int(tok.DURATION_FRAMES[d]) * step, p, 90))
            expect.append((f, ins, p, d))
        score.tracks.append(track)
    return score, expect


def test_constants():
    assert tok.VOCAB_SIZE == 3331 and (tok.SOS, tok.EOS, tok.PAD) == (3328, 3329, 3330)
    assert tok.MAX_FRAME_TOKENS == 33 and len(tok.DURATION_FRAMES) == 24


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_random_scores(seed, tmp_path):
    rng = np.random.default_rng(seed)
    score, expect = _random_score(rng)
    path = tmp_path / "x.mid"
    score.dump_midi(str(path))
    notes, n_frames = tok.midi_to_notes(path)
    frames = n_frames + 3
    tokens = tok.notes_to_tokens(notes, 0, frames)
    assert tokens.shape == (frames, tok.MAX_FRAME_TOKENS) and tokens.dtype == np.int32
    assert (tokens == tok.EOS).sum(1)[:n_frames].tolist() == [1] * n_frames
    back = tok.tokens_to_notes(tokens)
    out = tmp_path / "y.mid"
    decoded, _ = tok.midi_to_notes(tok.notes_to_midi(back, out), name="decoded")
    assert out.exists()
    got = sorted(map(tuple, decoded[:, :4].tolist()))
    assert got == sorted(set(expect)), "onset, instrument/drum role, pitch, duration class must survive"


def test_windows_and_padding():
    notes = np.array([[0, 0, 60, 3, 100, 0], [0, tok.DRUM, 36, 0, 100, 1], [5, 40, 70, 5, 100, 0]], np.int32)
    notes = tok.sort_notes(notes)
    t = tok.notes_to_tokens(notes, 4, 4, song_frames=7)
    assert t[1, :3].tolist() == [40, 70 + 6 * 128, tok.EOS]
    assert (t[0, 1:] == tok.PAD).all() and t[0, 0] == tok.EOS
    assert (t[3] == tok.PAD).all()  # past the end of the song
    small = tok.notes_to_tokens(notes, 0, 1, max_frame_tokens=3)  # room for one note only
    assert small[0].tolist() == [0, 60 + 4 * 128, tok.EOS]


def test_pitch_shift_never_moves_drums():
    notes = np.array([[0, tok.DRUM, 36, 0, 100, 0], [0, 0, 120, 0, 100, 0], [1, 0, 3, 0, 100, 0]], np.int32)
    assert tok.pitch_shift_range(notes) == (-3, 6)
    shifted = tok.pitch_shift(notes, 5)
    assert shifted[:, tok.PITCH].tolist() == [36, 125, 8]
    with pytest.raises(ValueError, match="out of 0..127"):
        tok.pitch_shift(notes, 9)


def _header(ntracks=1, division=96, fmt=1):
    return b"MThd" + struct.pack(">IHHH", 6, fmt, ntracks, division)


def _track(events: bytes) -> bytes:
    return b"MTrk" + struct.pack(">I", len(events)) + events


NOTE = b"\x00\x90\x3c\x40\x60\x80\x3c\x40"  # note on/off, 96 ticks
END = b"\x00\xff\x2f\x00"
GOOD = _header() + _track(NOTE + END)
BAD_FILES = {
    "empty.mid": (b"", "empty file"),
    "text.mid": (b"hello, I am not a MIDI file at all", "not a MIDI file"),
    "short_header.mid": (b"MThd\x00\x00", "truncated MIDI header"),
    "truncated.mid": (GOOD[:-5], "truncated"),
    "zero_tpq.mid": (_header(division=0) + _track(NOTE + END), "zero ticks per quarter"),
    "absurd_ticks.mid": (_header() + _track(b"\x8f\xff\xff\x7f\x90\x3c\x40\x60\x80\x3c\x40" + END), "absurd tick"),
    "no_notes.mid": (_header() + _track(END), "no notes"),
    "lying_header.mid": (_header(ntracks=3) + _track(NOTE + END), "header says 3 tracks"),
    "garbage_events.mid": (_header() + _track(b"\x00\xf7\xff\xff\xff\xff\x7f"), ""),
}


def test_good_handmade_file_parses(tmp_path):
    p = tmp_path / "good.mid"
    p.write_bytes(GOOD)
    notes, n = tok.midi_to_notes(p)
    assert notes[:, :4].tolist() == [[0, 0, 60, 3]] and n == 4


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_input_raises_value_error_naming_file(tmp_path, name):
    data, reason = BAD_FILES[name]
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ValueError) as e:
        tok.midi_to_notes(p)
    assert name in str(e.value) and reason in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="nope.mid: cannot read"):
        tok.load_midi(tmp_path / "nope.mid")


LABELS = ["A:min", "C:maj", "C:maj/3", "G:7", "D:min7", "F:maj7", "B:dim", "Eb:aug", "F#:hdim7", "E:dim7",
          "G:7(9)", "C:maj9", "D:min9", "Bb:sus4", "C:min/b3", "A:maj6", "C:13"]


def test_chord_pitches_match_spec_example():
    assert tok.chord_pitches("A:min") == [45, 48, 52, 57]
    assert tok.chord_pitches("N") == []


def test_chord_track_round_trip():
    chords = [(8 * i, 8 * i + 8, lab) for i, lab in enumerate(LABELS)] + [(200, 232, "C:maj")]
    notes = tok.chord_track(chords, bar_frames=16)
    back = tok.notes_to_chords(notes)
    got = {s: lab for s, e, lab in back}
    for start, _, lab in chords:
        for reduce in (False, True):
            a = mir_eval.chord.encode(lab, reduce_extended_chords=reduce)
            b = mir_eval.chord.encode(got[start], reduce_extended_chords=reduce)
            assert a[0] == b[0] and (a[1] == b[1]).all() and a[2] == b[2], (lab, got[start])
    assert (136, 200, "N") in back  # the gap
    # re-struck at barlines 208, 224; merged back into one interval
    assert set(notes[notes[:, tok.FRAME] >= 200, tok.FRAME].tolist()) == {200, 208, 224}
    assert back[-1] == (200, 232, "C:maj")
    intervals = np.array([[s, e] for s, e, _ in back], float)
    scores = mir_eval.chord.evaluate(intervals, [l for *_, l in back], intervals, [l for *_, l in back])
    assert scores["majmin"] == pytest.approx(1.0)


def test_beat_track_round_trip():
    notes = tok.beat_track(96, beats_per_bar=3, offset=4)
    assert tok.notes_to_downbeats(notes).tolist() == [4, 16, 28, 40, 52, 64, 76, 88]
    assert set(notes[notes[:, tok.PITCH] == 38, tok.FRAME] - 4) <= set(range(6, 96, 12))
    assert (notes[:, tok.INSTRUMENT] == tok.DRUM).all()
    assert len(notes[notes[:, tok.PITCH] == 42]) == 46  # every eighth from frame 4
    # through MIDI and back
    again, _ = tok.midi_to_notes(tok.notes_to_midi(notes), name="beats")
    assert tok.notes_to_downbeats(again).tolist() == tok.notes_to_downbeats(notes).tolist()
