"""Labels written as music: hand-written pitch tables, hand-named decodes, barline re-strikes, beat tracks,
.lab I/O and tempo maps. Round trips are judged by mir_eval.chord.encode (an independent reference)."""
import mir_eval
import numpy as np
import pytest

from m4mjax import labels as L
from m4mjax import tokenizer as tok
from m4mjax.run.cli import UserError

# (label, MIDI pitches) worked out by hand from spec §5: bass 36+pc, chord tones 48+pc, 9/11/13 at 60+pc.
# pc: C0 C#1 D2 Eb3 E4 F5 F#6 G7 Ab8 A9 Bb10 B11
PITCH_TABLE = [
    ("A:min", [45, 48, 52, 57]),
    ("C:maj", [36, 48, 52, 55]),
    ("C:maj/3", [40, 48, 52, 55]),
    ("C:maj/5", [43, 48, 52, 55]),
    ("G:7", [43, 50, 53, 55, 59]),
    ("D:min7", [38, 48, 50, 53, 57]),
    ("F:maj7", [41, 48, 52, 53, 57]),
    ("B:dim", [47, 50, 53, 59]),
    ("Eb:aug", [39, 51, 55, 59]),
    ("F#:hdim7", [42, 48, 52, 54, 57]),
    ("E:dim7", [40, 49, 52, 55, 58]),
    ("C:sus2", [36, 48, 50, 55]),
    ("C:sus4", [36, 48, 53, 55]),
    ("G:sus4", [43, 48, 50, 55]),
    ("A:minmaj7", [45, 48, 52, 56, 57]),
    ("C:maj6", [36, 48, 52, 55, 57]),
    ("D:min6", [38, 50, 53, 57, 59]),
    ("G:9", [43, 50, 53, 55, 59, 69]),
    ("C:maj9", [36, 48, 52, 55, 59, 62]),
    ("D:min9", [38, 48, 50, 53, 57, 64]),
    ("C:7/b7", [46, 48, 52, 55, 58]),
    ("C:maj/b7", [46, 48, 52, 55, 58]),  # the bass joins mir_eval's bitmap
    ("C:min/b3", [39, 48, 51, 55]),
    ("C:maj(9)", [36, 48, 52, 55, 62]),
    ("C:13", [36, 48, 52, 55, 58, 62, 65, 69]),
    ("Bb:maj", [46, 50, 53, 58]),
    ("Db:maj/5", [44, 49, 53, 56]),
    ("B:7(b9)", [47, 51, 54, 57, 59, 60]),
    ("F:min7/b7", [39, 48, 51, 53, 56]),
    ("E:1", [40, 52]),
    ("A:5", [45, 52, 57]),
    ("N", []),
    ("X", []),
]


@pytest.mark.parametrize("label,pitches", PITCH_TABLE)
def test_chord_pitches_hand_table(label, pitches):
    assert L.chord_pitches(label) == pitches


# (bass pc, chord-tone pcs, extension pcs) -> the canonical label, named by hand (see labels' module doc)
NAMING_TABLE = [
    ((9, {0, 4, 9}, ()), "A:min"),
    ((4, {0, 4, 7}, ()), "C:maj/3"),
    ((7, {0, 4, 7}, ()), "C:maj/5"),
    ((10, {0, 4, 7, 10}, ()), "C:7/b7"),
    ((7, {2, 5, 7, 11}, {9}), "G:9"),
    ((0, {0, 4, 7, 10}, {2, 5, 9}), "C:13"),
    ((0, {0, 4, 7, 10}, {1}), "C:7(b9)"),
    ((0, {0, 4, 7}, {2}), "C:maj(9)"),
    ((0, {0, 2, 4, 7}, ()), "C:maj(2)"),
    ((2, {0, 4, 7}, ()), "C:maj/2"),  # a bass outside the chord tones
    ((0, {0, 4, 7, 9}, ()), "C:maj6"),
    ((9, {0, 4, 7, 9}, ()), "A:min7"),
    ((4, {0, 4, 7, 9}, ()), "A:min7/5"),  # C:maj6/3 has the same notes: the earlier quality wins
    ((0, {0, 3, 6, 9}, ()), "C:dim7"),
    ((3, {0, 3, 6, 9}, ()), "Eb:dim7"),  # symmetric chord: the bass is the root
    ((0, {0, 4, 8}, ()), "C:aug"),
    ((7, {0, 2, 7}, ()), "G:sus4"),
    ((0, {0, 2, 7}, ()), "C:sus2"),
    ((None, {0, 4, 7}, ()), "C:maj"),
    ((2, (), ()), "D:1"),
    ((None, (), ()), "N"),
]


@pytest.mark.parametrize("args,label", NAMING_TABLE)
def test_notes_to_harte_hand_table(args, label):
    assert L.notes_to_harte(*args) == label


def test_harte_to_notes_parts():
    assert L.harte_to_notes("C:maj/3") == (4, (0, 4, 7), ())
    assert L.harte_to_notes("G:9") == (7, (2, 5, 7, 11), (9,))
    assert L.harte_to_notes("N") == (None, (), ())
    with pytest.raises(ValueError, match="bad chord label 'H:maj'"):
        L.harte_to_notes("H:maj")


def _note(frame, pitch, length, track=L.CHORD_TRACK, ins=0):
    return [frame, ins, pitch, int(np.searchsorted(tok.DURATION_FRAMES, length)), 100, track]


def test_track_to_chords_hand_notes():
    rows = ([_note(0, p, 8) for p in (45, 48, 52, 57)]                # A:min 0-8
            + [_note(8, p, 8) for p in (43, 50, 53, 55, 59)]          # G:7 8-16
            + [_note(16, p, 8) for p in (43, 50, 53, 55, 59)]         # re-struck at the barline
            + [_note(32, p, 4) for p in (40, 48, 52, 55)]             # C:maj/3 after a gap
            + [_note(0, 60, 16, track=0), _note(0, 36, 4, track=L.BEAT_TRACK, ins=tok.DRUM)])  # other tracks
    notes = tok.sort_notes(np.array(rows, np.int32))
    assert L.track_to_chords(notes) == [(0, 8, "A:min"), (8, 24, "G:7"), (24, 32, "N"), (32, 36, "C:maj/3")]
    assert L.track_to_chords(notes, n_frames=40)[-1] == (36, 40, "N")


def test_chord_track_restrikes_at_barlines_any_meter():
    notes = L.chord_track([(0, 40, "C:maj")], 48, bar_starts=[0, 16, 32])
    assert sorted(set(notes[:, tok.FRAME].tolist())) == [0, 16, 32]
    assert (notes[:, tok.TRACK] == L.CHORD_TRACK).all() and (notes[:, tok.INSTRUMENT] == 0).all()
    assert sorted(tok.DURATION_FRAMES[notes[notes[:, tok.PITCH] == 36, tok.DURATION]].tolist()) == [8, 16, 16]
    # 3/4 bars every 12 frames; times snapped to the eighth grid (3 -> 4, 29 -> 30)
    notes = L.chord_track([(3, 29, "A:min")], 36, bar_starts=[0, 12, 24])
    assert sorted(set(notes[:, tok.FRAME].tolist())) == [4, 12, 24]
    assert L.track_to_chords(notes) == [(4, 30, "A:min")]
    # 10 frames has no duration class: written as 8 + 2, read back as one chord 0-10
    notes = L.chord_track([(0, 10, "G:7"), (12, 16, "C:maj")], 16, bar_starts=[0])
    assert sorted(set(notes[:, tok.FRAME].tolist())) == [0, 8, 12]
    assert L.track_to_chords(notes) == [(0, 10, "G:7"), (10, 12, "N"), (12, 16, "C:maj")]


QUALITIES = ["maj", "min", "7", "maj7", "min7", "dim", "aug", "sus2", "sus4", "dim7", "hdim7", "minmaj7", "maj6",
             "min6", "9", "maj9", "min9", "11", "min11", "13", "maj13", "min13", "5", "1"]
# chords whose inversion has the same notes as another chord's root position or inversion (module doc)
AMBIGUOUS = {("aug", "3"), ("aug", "b6"), ("dim7", "b3"), ("dim7", "b5"), ("dim7", "6"), ("hdim7", "b3"),
             ("maj6", "3"), ("maj6", "5"), ("maj6", "6"), ("min6", "b3"), ("min6", "5"), ("min6", "6"),
             ("min7", "b3"), ("sus2", "2"), ("sus2", "5"), ("sus4", "4")}


def _same(a, b):
    return all(x[0] == y[0] and (np.asarray(x[1]) == np.asarray(y[1])).all() and x[2] == y[2]
               for x, y in ((mir_eval.chord.encode(a, reduce_extended_chords=r),
                             mir_eval.chord.encode(b, reduce_extended_chords=r)) for r in (False, True)))


def test_every_quality_and_inversion_round_trips_through_the_track():
    labels = ["N"]
    for q in QUALITIES:
        degrees = [L.DEGREES[i] for i in np.flatnonzero(mir_eval.chord.QUALITIES[q])]
        for root in ["C", "C#", "Db", "E", "F#", "Gb", "A", "Bb", "B"]:
            labels += [f"{root}:{q}" + ("" if d == "1" else f"/{d}") for d in degrees if (q, d) not in AMBIGUOUS]
    labels += ["C:maj(9)", "A:min(9)", "G:7(b9)", "G:7(#9)", "D:7(#11)", "E:min7(11)", "F:maj7(#11)", "C:maj/2"]
    chords = [(12 * i, 12 * i + 10, lab) for i, lab in enumerate(labels)]  # 2-frame gaps keep equal chords apart
    n = 12 * len(labels)
    notes = L.chord_track(chords, n, bar_starts=range(0, n, 16))
    back = L.track_to_chords(notes, n_frames=n)
    chords, back = [c for c in chords if c[2] != "N"], [c for c in back if c[2] != "N"]
    assert [(s, e) for s, e, _ in back] == [(s, e) for s, e, _ in chords]
    bad = [(a, b) for (_, _, a), (_, _, b) in zip(chords, back) if not _same(a, b)]
    assert not bad
    # the documented ambiguity really is one: both spellings give the same notes
    assert L.chord_pitches("C:maj6/3") == L.chord_pitches("A:min7/5")


def test_beat_track_four_four_and_three_four():
    notes = L.beat_track([0, 16], range(0, 32, 4), 32)
    assert (notes[:, tok.INSTRUMENT] == tok.DRUM).all() and (notes[:, tok.TRACK] == L.BEAT_TRACK).all()
    by = {p: notes[notes[:, tok.PITCH] == p, tok.FRAME].tolist() for p in (35, 38, 42)}
    assert by == {35: [0, 16], 38: [8, 24], 42: list(range(0, 32, 2))}
    notes = L.beat_track([0, 12, 24], range(0, 36, 4), 36)
    by = {p: notes[notes[:, tok.PITCH] == p, tok.FRAME].tolist() for p in (35, 38, 42)}
    assert by == {35: [0, 12, 24], 38: [6, 18, 30], 42: list(range(0, 36, 2))}
    assert L.track_to_downbeats(notes).tolist() == [0, 12, 24]
    again, _ = tok.midi_to_notes(tok.notes_to_midi(notes), name="beats")  # through a MIDI file
    assert L.track_to_downbeats(again, track=None).tolist() == [0, 12, 24]


@pytest.mark.parametrize("ts,n,downs,mids", [
    ((0, 6, 8), 24, [0, 12], [6, 18]),   # compound: beats are dotted quarters
    ((0, 5, 4), 40, [0, 20], [10, 30]),  # the "and" of beat 3
    ((0, 7, 8), 28, [0, 14], [6, 20]),   # 3.5 eighths -> 3 (halves round down)
    ((0, 2, 4), 16, [0, 8, ], [4, 12]),
])
def test_meter_grid_and_mid_bar_in_odd_meters(ts, n, downs, mids):
    d, b = L.meter_grid([ts], n)
    assert d.tolist() == downs
    notes = L.beat_track(d, b, n)
    assert notes[notes[:, tok.PITCH] == 38, tok.FRAME].tolist() == mids


def test_meter_grid_beats_and_changes():
    d, b = L.meter_grid([(0, 6, 8)], 24)
    assert b.tolist() == [0, 6, 12, 18]
    d, b = L.meter_grid([(0, 4, 4), (32, 3, 4)], 56)
    assert d.tolist() == [0, 16, 32, 44]
    assert b.tolist() == list(range(0, 56, 4))


def test_lab_round_trip(tmp_path):
    segs = [(0.0, 1.5, "C:maj"), (1.5, 2.25, "A:min/b3"), (2.25, 3.0, "N")]
    path = tmp_path / "song.lab"
    L.write_lab(path, segs)
    assert path.read_text() == "0.000000\t1.500000\tC:maj\n1.500000\t2.250000\tA:min/b3\n2.250000\t3.000000\tN\n"
    assert L.read_lab(path) == segs
    iv, labs = mir_eval.io.load_labeled_intervals(str(path))  # mir_eval reads what we write
    assert labs == ["C:maj", "A:min/b3", "N"] and iv.tolist() == [[0, 1.5], [1.5, 2.25], [2.25, 3.0]]
    path.write_text("0 1 C:maj\n1 2 C:wrong\n")
    with pytest.raises(UserError, match="song.lab:2"):
        L.read_lab(path)


def test_frames_to_seconds_with_a_tempo_change():
    tempo = L.tempo_anchors([(0, 120.0), (16, 60.0)])  # 120 qpm: 0.125 s per frame; from frame 16: 0.25 s
    got = L.frames_to_seconds([0, 8, 16, 24, 40], tempo)
    assert got.tolist() == pytest.approx([0.0, 1.0, 2.0, 4.0, 8.0])
    assert L.seconds_to_frames([1.0, 4.0, 8.0], tempo).tolist() == pytest.approx([8, 24, 40])
    assert L.frames_to_seconds(24, {"tempos": [(0, 120.0), (16, 60.0)]}) == pytest.approx(4.0)
    assert L.frames_to_seconds(8, [(0, 0.0), (4, 1.0)]) == pytest.approx(2.0)  # plain anchors, extrapolated
    assert L.segments_to_seconds([(0, 16, "C:maj"), (16, 24, "N")], tempo) == [(0.0, 2.0, "C:maj"), (2.0, 4.0, "N")]
