"""Transposition of labels written as music, property by property (issue 23, the transposed-chord defect).

The training pipeline moves a song by a random shift k (``pipeline.shift_song``); a chord track moves by pitch
class inside its registers. What the model reads must not depend on how the window was produced: the tokens of
``shift_song(track(label), k)`` must equal the tokens of ``track(label transposed by k)``, ORDER INCLUDED (the old
code left the moved notes unsorted, so ~70% of (chord, shift) pairs tokenised in a rotated order that told the
model nothing but the hidden shift). Expectations are written here, not taken from the code under test: the
transposed label is spelled by hand (root name moved, quality and bass degree kept), and the expected frame row
is built from the layout rules (bass 36+pc, tones 48+pc ascending, extensions 60+pc ascending).
"""
from __future__ import annotations

import numpy as np
import pytest

from m4mjax import labels, tokenizer as tok
from m4mjax.datasets import pipeline

NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
# quality -> chord-tone intervals above the root (written out, not read from mir_eval)
QUALITIES = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (0, 4, 7, 10), "min7": (0, 3, 7, 10), "maj7": (0, 4, 7, 11),
             "dim": (0, 3, 6), "aug": (0, 4, 8), "dim7": (0, 3, 6, 9), "hdim7": (0, 3, 6, 10),
             "minmaj7": (0, 3, 7, 11), "maj6": (0, 4, 7, 9), "min6": (0, 3, 7, 9), "sus4": (0, 5, 7),
             "sus2": (0, 2, 7), "5": (0, 7), "1": (0,)}
DEGREE_NAME = {3: "b3", 4: "3", 5: "4", 2: "2", 6: "b5", 7: "5", 8: "#5", 9: "6", 10: "b7", 11: "7"}
# extended qualities the chord track renders with a 60+pc register: (quality, tones, extensions above the root)
EXTENDED = {"9": ((0, 4, 7, 10), (2,)), "maj9": ((0, 4, 7, 11), (2,)), "min9": ((0, 3, 7, 10), (2,)),
            "13": ((0, 4, 7, 10), (2, 5, 9))}
SHIFTS = range(-5, 7)
FRAMES = 16


def _cases():
    """(label, root pc, bass interval, tone intervals, extension intervals): every quality x 12 roots, root
    position and every inversion (bass on another chord tone), plus the extended chords in root position."""
    for q, iv in QUALITIES.items():
        for root in range(12):
            for b in iv:
                bass = "" if b == 0 else "/" + ("#5" if (q == "aug" and b == 8) else
                                               "bb7" if (q == "dim7" and b == 9) else
                                               "6" if b == 9 else DEGREE_NAME[b])
                yield f"{NAMES[root]}:{q}{bass}", root, b, iv, ()
    for q, (iv, ext) in EXTENDED.items():
        for root in range(12):
            yield f"{NAMES[root]}:{q}", root, 0, iv, ext


CASES = list(_cases())


def _song_of(label: str, piano_pitch: int = 60) -> np.ndarray:
    """A song whose only notes are one bar of ``label`` on the chord track, plus a beat track and a piano note."""
    chords = labels.chord_track([(0, FRAMES, label)], FRAMES, [0])
    beats = labels.beat_track([0], None, FRAMES)
    piano = np.array([(0, 0, piano_pitch, 3, 90, 0)], np.int32)
    return tok.sort_notes(np.concatenate([piano, chords, beats]))


def _expected_chord_row(root: int, bass_iv: int, tones: tuple, ext: tuple) -> list[int]:
    """The chord track's first frame written from the layout rules: (instrument 0, pitch-duration) per note,
    bass first, then tones ascending, then extensions ascending; whole-bar duration class (16 frames)."""
    pitches = [36 + (root + bass_iv) % 12] + sorted(48 + (root + i) % 12 for i in tones) \
        + sorted(60 + (root + i) % 12 for i in ext)
    dur = int(np.flatnonzero(tok.DURATION_FRAMES == FRAMES)[0])
    return [t for p in pitches for t in (0, p + (dur + 1) * 128)]


def _tokens(notes: np.ndarray) -> np.ndarray:
    return tok.notes_to_tokens(notes, 0, FRAMES, tok.MAX_FRAME_TOKENS)


def test_cases_cover_every_rendered_quality_root_and_inversion():
    assert {q for q in labels.QUALITY_ORDER} <= set(QUALITIES)
    assert len(CASES) == sum(len(iv) for iv in QUALITIES.values()) * 12 + len(EXTENDED) * 12


@pytest.mark.parametrize("shift", SHIFTS)
def test_shifted_chord_track_tokenises_as_the_transposed_label(shift):
    """For every chord x shift, the shifted song's tokens equal the tokens of the song built from the transposed
    label, and frame 0's chord notes come out in layout order (bass, tones, extensions, each ascending)."""
    bad = []
    for label, root, bass_iv, tones, ext in CASES:
        moved_label = label.replace(NAMES[root] + ":", NAMES[(root + shift) % 12] + ":", 1)
        got = _tokens(pipeline.shift_song(_song_of(label), shift))
        want = _tokens(_song_of(moved_label, 60 + shift))
        # frame 0: piano note (instrument 0, pitch 60+k), chord notes (instrument 0), then drums (instrument 127)
        row = got[0].tolist()
        n_chord = 2 * (1 + len(tones) + len(ext))
        piano = [0, 60 + shift + (3 + 1) * 128]
        chord_row = _expected_chord_row((root + shift) % 12, bass_iv, tones, ext)
        # the storage order is (instrument, pitch, duration): the piano note sits among the chord notes by pitch
        merged = sorted([piano[i:i + 2] for i in (0,)] + [chord_row[i:i + 2] for i in range(0, n_chord, 2)],
                        key=lambda t: (t[0], (t[1] % 128), t[1] // 128))
        want_prefix = [x for pair in merged for x in pair]
        if not np.array_equal(got, want) or row[:len(want_prefix)] != want_prefix:
            bad.append(label)
    assert not bad, f"shift {shift:+d}: {len(bad)} of {len(CASES)} chords tokenise differently, e.g. {bad[:5]}"


def test_a_minor_up_three_reads_bass_then_tones_in_ascending_order():
    """The worked example of the issue: A:min (45, 48, 52, 57) shifted +3 must read 36, 48, 51, 55 (C:min), not
    the rotated 36, 51, 55, 48."""
    chords = labels.chord_track([(0, FRAMES, "A:min")], FRAMES, [0])
    row = _tokens(pipeline.shift_song(chords, 3))[0]
    pitches = [int(t) % 128 for t in row[1:8:2]]
    assert pitches == [36, 48, 51, 55]


@pytest.mark.parametrize("shift", SHIFTS)
def test_beat_track_and_drums_never_move(shift):
    song = _song_of("C:maj")
    got = _tokens(pipeline.shift_song(song, shift))
    drums_before = song[song[:, tok.INSTRUMENT] == tok.DRUM]
    moved = pipeline.shift_song(song, shift)
    assert np.array_equal(moved[moved[:, tok.INSTRUMENT] == tok.DRUM], drums_before)
    assert np.array_equal(labels.track_to_downbeats(moved), [0])
    # the beat row of frame 0: downbeat 35 then eighth 42, drum instrument, duration class 0
    drum_tokens = [t for t in got[0].tolist() if t != tok.PAD and t != tok.EOS]
    assert drum_tokens[-4:] == [tok.DRUM, 35 + 128, tok.DRUM, 42 + 128]


@pytest.mark.parametrize("shift", [-5, -1, 1, 6])
def test_shifted_windows_decode_to_the_transposed_chords(shift):
    """Window cut + tokens -> notes -> chord segments: a two-chord song shifted by k reads back as the
    transposed labels at the same frames (checks the window cut and the read-back, not just the first row)."""
    seq = [(0, 16, "A:min"), (16, 32, "G:7/3"), (32, 48, "F:maj7"), (48, 64, "E:sus4")]
    n = 64
    notes = labels.chord_track(seq, n, range(0, n, 16))
    moved = pipeline.shift_song(notes, shift)
    toks = tok.notes_to_tokens(moved, 16, 32, tok.MAX_FRAME_TOKENS)  # frames 16..47
    back = labels.track_to_chords(tok.tokens_to_notes(toks, start_frame=16), track=None)
    def up(lab):
        r, rest = lab.split(":")
        return NAMES[(NAMES.index(r) + shift) % 12] + ":" + rest
    assert back == [(16, 32, up("G:7/3")), (32, 48, up("F:maj7"))]
