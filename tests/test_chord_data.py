"""Chord-labelled data (m4mjax.datasets.chords): exact labels from charts, RomanText and Dechorder, the split."""
from __future__ import annotations

import json
import shutil

import mir_eval
import numpy as np
import pytest

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.datasets import chord_data, chord_songs, chords_synth, convert
from m4mjax.datasets.pipeline import select_stream

needs_mma = pytest.mark.skipif(shutil.which("mma") is None,
                               reason="Debian package `mma` not installed (make install adds it via APT_PKGS)")

# a hand-written chart: C | Am7 Dm7 | G7/B (inversion) | Fmaj7 C/G, 4/4, one token per quarter beat
CHART = {"groove": "50sRock", "groove2": None, "beats_per_bar": 4, "timesig": "4/4", "tempo": 100, "tempo2": None,
         "key": "C:maj", "style": "pop", "rtime": 0, "rvolume": 0,
         "bars": [[(0, 0, "maj", None)], [(0, 9, "min7", None), (2, 2, "min7", None)], [(0, 7, "7", 4)],
                  [(0, 5, "maj7", None), (2, 0, "maj", 7)]]}
EXPECTED = [(0, 16, "C:maj"), (16, 24, "A:min7"), (24, 32, "D:min7"), (32, 48, "G:7/3"), (48, 56, "F:maj7"),
            (56, 64, "C:maj/5")]


def test_chart_text_and_segments_match_the_hand_written_chart():
    text = chords_synth.chart_text(CHART).splitlines()
    assert text[-4:] == ["1 C / / /", "2 Am7 / Dm7 /", "3 G7/B / / /", "4 FM7 / C/G /"]
    assert chords_synth.chart_segments(CHART) == EXPECTED


def test_piece_params_are_deterministic_and_varied():
    if shutil.which("mma") is None and not chords_synth.MMA_LIB.is_dir():
        pytest.skip("mma's groove library not installed")
    a = [chords_synth.piece_params(7, i) for i in range(30)]
    assert a == [chords_synth.piece_params(7, i) for i in range(30)]
    assert len({p["groove"] for p in a}) > 10 and len({p["key"] for p in a}) > 5
    assert {p["beats_per_bar"] for p in [chords_synth.piece_params(0, i) for i in range(200)]} >= {3, 4}


@needs_mma
@pytest.mark.integration  # runs an external program (mma / fluidsynth / the compiler)
def test_mma_song_labels_and_chord_track_equal_the_chart(tmp_path):
    item = {"key": "synth/test", "group": "synth/mma", "out": str(tmp_path), "index": 0}
    (song,) = chords_synth.synth_song(item, CHART)
    rec = json.loads(chord_songs.label_path(tmp_path, "synth/test").read_text())
    assert [tuple(s) for s in rec["segments"]] == EXPECTED
    assert rec["downbeats"] == [0, 16, 32, 48]
    # 100 qpm: a 16th-note frame lasts 0.15 s
    assert rec["downbeats_s"] == pytest.approx([0.0, 2.4, 4.8, 7.2])
    assert [t for s in rec["segments_s"] for t in s[:2]] == pytest.approx([t * 0.15 for s in EXPECTED for t in s[:2]])
    notes = song["notes"]
    music = notes[notes[:, tok.TRACK] < labels.CHORD_TRACK]
    assert (music[:, tok.INSTRUMENT] == tok.DRUM).any() and len(np.unique(music[:, tok.INSTRUMENT])) >= 3
    decoded = labels.track_to_chords(select_stream(notes, f"track:{labels.CHORD_TRACK}"))
    assert [s for s in decoded if s[2] != "N"] == EXPECTED
    assert labels.track_to_downbeats(notes).tolist() == [0, 16, 32, 48]
    # the music itself follows the chart: bar 3's downbeat strikes G7 tones only, its bass B among them
    # (mma's Walk tracks walk from the root G; its Bass and Chord tracks voice the slash note)
    bar3 = music[(music[:, tok.FRAME] == 32) & (music[:, tok.INSTRUMENT] != tok.DRUM)]
    assert 11 in set(bar3[:, tok.PITCH] % 12) <= {7, 11, 2, 5}


def _encode(label: str) -> tuple:
    root, bitmap, bass = mir_eval.chord.encode(label)
    return root, tuple(bitmap), bass


@needs_mma
@pytest.mark.integration  # runs an external program (mma / fluidsynth / the compiler)
def test_build_records_decode_to_labels_and_split_is_recorded_and_deterministic(tmp_path):
    for d in ("a", "b"):
        chord_data.build(tmp_path / d, n_synth=3, seed=5, workers=1, groups=("synth",), progress=False)
    splits = json.loads((tmp_path / "a" / "splits.json").read_text())
    assert splits == {"synth/mma/5/00000": "test", "synth/mma/5/00001": "valid", "synth/mma/5/00002": "train"}
    assert (tmp_path / "b" / "splits.json").read_text() == (tmp_path / "a" / "splits.json").read_text()
    lab = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert (tmp_path / "b" / "labels.json").read_text() == (tmp_path / "a" / "labels.json").read_text()
    for split, song_id in [("test", "synth/mma/5/00000"), ("valid", "synth/mma/5/00001")]:
        src = convert.ShardSource(tmp_path / "a", split)
        song = src[0]
        assert song["id"] == song_id and lab[song_id]["split"] == split
        p = chords_synth.piece_params(5, int(song_id[-5:]))
        assert [tuple(s) for s in lab[song_id]["segments"]] == chords_synth.chart_segments(p)
        decoded = labels.track_to_chords(song["notes"], n_frames=song["n_frames"])
        for s, e, want in lab[song_id]["segments"]:
            for f in range(s, e):
                got = next(lab_ for a, b, lab_ in decoded if a <= f < b)
                assert _encode(got) == _encode(want), (song_id, f, got, want)


RNTXT = """Composer: Test
Title: tiny
Analyst: hand
Time Signature: 4/4

m1 C: I b3 V6
m2 vi b2 ii65 b3 V7 b4 viio7
m3 a: It6 b3 V
m4 i
"""


def test_romantext_conversion_gives_hand_expected_harte_labels(tmp_path):
    music21 = pytest.importorskip("music21")
    analysis = music21.converter.parse(RNTXT, format="romantext")
    part = music21.stream.Part()
    for k in range(4):
        m = music21.stream.Measure(number=k + 1)
        if k == 0:
            m.append(music21.meter.TimeSignature("4/4"))
        m.append(music21.note.Note("C4", quarterLength=4))
        part.append(m)
    score = music21.stream.Score([part])
    item = {"key": "romantext/test", "group": "romantext/test", "out": str(tmp_path)}
    (song,) = chord_data.romantext_song(item, score, analysis)
    rec = json.loads(chord_songs.label_path(tmp_path, "romantext/test").read_text())
    assert [tuple(s) for s in rec["segments"]] == [
        (0, 8, "C:maj"), (8, 16, "G:maj/3"), (16, 20, "A:min"), (20, 24, "D:min7/b3"), (24, 28, "G:7"),
        (28, 32, "B:dim7"), (32, 40, "X"), (40, 48, "E:maj"), (48, 64, "A:min")]
    assert rec["downbeats"] == [0, 16, 32, 48] and rec["beats"] == list(range(0, 64, 4))
    assert rec["n_x"] == 1
    # 'X' (unnameable) is not drawn: the chord track is silent there
    decoded = labels.track_to_chords(song["notes"])
    assert (32, 40, "N") in decoded and (40, 48, "E:maj") in decoded


def test_dechorder_labels_ignore_drums():
    pytest.importorskip("chorder")
    rows = [(0, 0, p, 5, 90, 0) for p in (48, 52, 55, 60)] + [(8, 0, p, 5, 90, 0) for p in (45, 52, 57, 60)]
    rows += [(f, tok.DRUM, p, 9, 120, 1) for f in range(0, 16, 2) for p in (39, 46, 42)]  # loud long Eb/Bb/F#
    music = tok.sort_notes(np.array(rows, np.int32))
    assert chord_data.chorder_segments(music, 16) == [(0, 8, "C:maj"), (8, 16, "A:min")]


def test_harte_of_pcs_names_qualities_and_inversions():
    assert chord_data.harte_of_pcs(7, [7, 11, 2, 5], 11) == "G:7/3"
    assert chord_data.harte_of_pcs(2, [2, 5, 9, 0], None) == "D:min7"
    assert chord_data.harte_of_pcs(5, [5, 9, 3], None) == "X"  # italian sixth / 7 without fifth
