"""Tokenizer: round trip on the 16th grid, every malformed-MIDI case (labels as music: test_labels.py)."""
import struct

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



def test_duration_classes_match_official_templates():
    """Class c decodes to the official DURATION_TEMPLATES[c] frames; lengths go to the nearest (ties shorter)."""
    assert tok.DURATION_FRAMES.tolist() == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                                            768, 1024, 1536, 2048, 3072, 4096]
    assert tok.duration_class(np.array([0, 1, 2, 5, 7, 10, 1000, 1280, 1281, 10 ** 6])).tolist() == [
        0, 0, 1, 3, 4, 5, 19, 19, 20, 23]


def test_timing_of_reads_tempo_and_metre_on_the_frame_grid():
    s = symusic.Score(96)
    s.tempos.extend([symusic.Tempo(0, mspq=800000), symusic.Tempo(96 * 3, mspq=500000),
                     symusic.Tempo(96 * 8, mspq=400000)])
    s.time_signatures.extend([symusic.TimeSignature(0, 6, 8), symusic.TimeSignature(96 * 6, 2, 4)])
    t = tok.timing_of(s, end_frame=32)  # 8 quarters: the change at quarter 8 is not in the window
    assert [(f, round(60e6 / q)) for f, q in t["tempos"]] == [(0, 800000), (12, 500000)]
    assert t["time_signatures"] == [(0, 6, 8), (24, 2, 4)]
    assert tok.timing_of(symusic.Score(96)) == {"tempos": [(0, 120.0)], "time_signatures": [(0, 4, 4)]}


def test_notes_to_midi_writes_timing_and_ends_at_end_frame(tmp_path):
    from smf import read_smf

    notes = np.array([[0, 0, 60, 19, 100, 0],    # 1024 frames: cut at frame 12
                      [4, 5, 62, 3, 100, 0],     # 4 frames: ends at 8
                      [10, tok.DRUM, 36, 2, 100, 1],  # 3 frames: cut at 12
                      [12, 0, 64, 0, 100, 0]], np.int32)  # at the end: dropped
    tok.notes_to_midi(notes, tmp_path / "x.mid", 96, tempos=[(0, 75.0)], time_signatures=[(0, 5, 4), (8, 7, 8)],
                      end_frame=12)
    smf = read_smf(tmp_path / "x.mid")
    assert smf.tpq == 96 and smf.tempos == [(0, 800000)] and smf.time_signatures == [(0, 5, 4), (8 * 24, 7, 8)]
    assert sorted((ch, p, on // 24, off // 24) for ch, p, on, off in smf.notes) == [
        (0, 60, 0, 12), (1, 62, 4, 8), (9, 36, 10, 12)]
    assert smf.end == 12 * 24
    tok.notes_to_midi(notes[:2], tmp_path / "y.mid", 96)  # no end given: notes keep their full class length
    smf = read_smf(tmp_path / "y.mid")
    assert smf.tempos == [(0, 500000)] and smf.time_signatures == [(0, 4, 4)] and smf.end == 1024 * 24


def _doubled_song(tmp_path):
    """A MIDI file (96 ticks per quarter, 24 per frame) whose note (frame 0, program 5, pitch 60) is on three
    tracks with lengths 8, 2 and 8 frames; program 7 plays the same pitch (not a duplicate: other instrument)."""
    score = symusic.Score(96)
    for program, notes in ((5, [(60, 8, 90), (64, 4, 80)]), (5, [(60, 2, 70)]), (5, [(60, 8, 50)]), (7, [(60, 4, 80)])):
        track = symusic.Track(program=program)
        track.notes.extend([symusic.Note(0, frames * 24, pitch, vel) for pitch, frames, vel in notes])
        score.tracks.append(track)
    path = tmp_path / "doubled.mid"
    score.dump_midi(str(path))
    return path


# rows (frame, instrument, pitch, duration class, velocity, track); lengths 2, 4, 8 frames are classes 1, 3, 5
DOUBLED_LONGEST = [[0, 5, 60, 5, 90, 0],  # the longest; tracks 0 and 2 tie: the first track wins
                   [0, 5, 64, 3, 80, 0], [0, 7, 60, 3, 80, 3]]
DOUBLED_KEEP = [[0, 5, 60, 1, 70, 1],  # every duplicate, shortest first, then by track
                [0, 5, 60, 5, 90, 0], [0, 5, 60, 5, 50, 2],
                [0, 5, 64, 3, 80, 0], [0, 7, 60, 3, 80, 3]]


def test_duplicates_longest_by_default_or_all_kept(tmp_path):
    path = _doubled_song(tmp_path)
    for kw, want in (({}, DOUBLED_LONGEST), ({"duplicates": "longest"}, DOUBLED_LONGEST),
                     ({"duplicates": "keep"}, DOUBLED_KEEP)):
        notes, n = tok.midi_to_notes(path, **kw)
        assert notes.tolist() == want and notes.dtype == np.int32 and n == 8, kw
    raw = [[0, 5, 60, 8, 90, 0], [0, 5, 64, 4, 80, 0], [0, 5, 60, 2, 70, 1], [0, 5, 60, 8, 50, 2],
           [0, 7, 60, 4, 80, 3]]  # the same song as raw rows (lengths in frames), tracks interleaved
    assert tok.build_notes(np.array(raw))[0].tolist() == DOUBLED_LONGEST
    assert tok.build_notes(np.array(raw), duplicates="keep")[0].tolist() == DOUBLED_KEEP
    row = tok.notes_to_tokens(np.array(DOUBLED_KEEP, np.int32), 0, 1)[0]  # kept duplicates reach the tokens
    assert row[:11].tolist() == [5, 60 + 2 * 128, 5, 60 + 6 * 128, 5, 60 + 6 * 128, 5, 64 + 4 * 128,
                                 7, 60 + 4 * 128, tok.EOS]


def test_kept_duplicates_count_toward_the_frame_cap():
    raw = np.array([[0, 5, 60, 8, 90, 0], [0, 5, 60, 2, 70, 1], [0, 5, 50, 4, 80, 2],  # frame 0: 3 notes
                    [4, 5, 60, 1, 60, 0], [4, 5, 60, 1, 61, 0]])  # frame 4: one note twice on one track
    keep, n = tok.build_notes(raw, max_notes_per_frame=2, duplicates="keep")
    assert keep.tolist() == [[0, 5, 60, 1, 70, 1], [0, 5, 60, 5, 90, 0],  # tracks 0 and 1 fill the cap of 2
                             [4, 5, 60, 0, 60, 0], [4, 5, 60, 0, 61, 0]] and n == 8  # as read
    longest, _ = tok.build_notes(raw, max_notes_per_frame=2)  # one of the pair: track 2's note fits
    assert longest.tolist() == [[0, 5, 50, 3, 80, 2], [0, 5, 60, 5, 90, 0], [4, 5, 60, 0, 60, 0]]


@pytest.mark.parametrize("seed", range(3))
def test_keep_is_every_note_in_storage_order_capped_in_track_order(seed):
    """'keep' against a plain-Python reading of the rule: per frame the first `cap` notes in track order, then
    sorted by (frame, instrument, pitch, duration class, track), ties as read."""
    rng = np.random.default_rng(seed)
    n, cap = 300, 3
    raw = np.stack([rng.integers(0, 20, n), rng.integers(0, 3, n), rng.integers(60, 63, n), rng.integers(1, 9, n),
                    rng.integers(1, 128, n), rng.integers(0, 4, n)], 1)
    dur = {1: 0, 2: 1, 3: 2, 4: 3, 5: 3, 6: 4, 7: 4, 8: 5}  # nearest template, ties to the shorter
    rows = [(f, i, p, dur[d], v, t, k) for k, (f, i, p, d, v, t) in enumerate(raw.tolist())]
    kept = []
    for f in sorted({r[0] for r in rows}):
        kept += sorted((r for r in rows if r[0] == f), key=lambda r: (r[5], r[1], r[2], r[3], r[6]))[:cap]
    want = [list(r[:6]) for r in sorted(kept, key=lambda r: (r[0], r[1], r[2], r[3], r[5], r[6]))]
    assert tok.build_notes(raw, max_notes_per_frame=cap, duplicates="keep")[0].tolist() == want


def test_bad_duplicates_value(tmp_path):
    path = _doubled_song(tmp_path)
    cols = tuple(np.zeros(1, np.int64) for _ in range(6))
    for call in (lambda: tok.midi_to_notes(path, duplicates="first"),
                 lambda: tok.build_notes(np.array([[0, 0, 60, 4, 80, 0]]), duplicates="first"),
                 lambda: tok._finish(cols, "x", 16, "first")):
        with pytest.raises(ValueError, match="duplicates must be one of 'longest', 'keep', got 'first'"):
            call()
