"""Chord/downbeat scoring on hand-computed cases, and the two rule-based analysers on hand-made notes."""
import mir_eval
import numpy as np
import pytest

from m4mjax import chord_eval as E
from m4mjax import labels as L
from m4mjax import tokenizer as tok


def test_half_the_duration_right_scores_one_half():
    got = E.score_chords([(0, 2, "C:maj"), (2, 4, "A:min")], [(0, 4, "C:maj")])
    assert {m: got[m] for m in E.CHORD_METRICS} == {m: 0.5 for m in E.CHORD_METRICS}
    assert got["weights"]["majmin"] == 4.0


def test_boundaries_merged_over_the_union():
    # correct on [0, 1) and [3, 4) only: 2 of 4 seconds
    got = E.score_chords([(0, 3, "C:maj"), (3, 4, "G:maj")], [(0, 1, "C:maj"), (1, 4, "G:maj")])
    assert got["majmin"] == pytest.approx(0.5)
    # the estimate stops early: the rest counts as N (wrong); gaps are N too
    assert E.score_chords([(0, 4, "C:maj")], [(0, 1, "C:maj")])["root"] == pytest.approx(0.25)
    assert E.score_chords([(0, 4, "C:maj")], [(0, 1, "C:maj"), (3, 4, "C:maj")])["root"] == pytest.approx(0.5)


def test_estimated_x_is_never_correct():
    ref = np.array([[0.0, 4.0]])
    assert mir_eval.chord.evaluate(ref, ["C:maj"], ref, ["X"])["mirex"] == 1.0  # the trap being avoided
    got = E.score_chords([(0, 4, "C:maj")], [(0, 4, "X")])
    assert all(got[m] == 0.0 for m in E.CHORD_METRICS)
    # a reference X is left out of the score (weight 2, not 4)
    got = E.score_chords([(0, 2, "C:maj"), (2, 4, "X")], [(0, 4, "C:maj")])
    assert got["majmin"] == 1.0 and got["weights"]["majmin"] == 2.0


def test_metrics_differ_where_they_should():
    got = E.score_chords([(0, 4, "C:7")], [(0, 4, "C:maj")])
    assert got["root"] == 1.0 and got["thirds"] == 1.0 and got["sevenths"] == 0.0
    got = E.score_chords([(0, 4, "C:maj")], [(0, 4, "C:min")])
    assert got["root"] == 1.0 and got["thirds"] == 0.0 and got["majmin"] == 0.0


def test_agrees_with_mir_eval_evaluate_on_contiguous_segments():
    ref = [(0, 1.5, "C:maj"), (1.5, 3, "A:min7"), (3, 5, "F:maj/3"), (5, 6, "G:7")]
    est = [(0, 1, "C:maj"), (1, 2.5, "A:min"), (2.5, 5.5, "F:maj"), (5.5, 6, "G:7")]
    got = E.score_chords(ref, est)
    want = mir_eval.chord.evaluate(np.array([r[:2] for r in ref]), [r[2] for r in ref],
                                   np.array([e[:2] for e in est]), [e[2] for e in est])
    for m in E.CHORD_METRICS:
        assert got[m] == pytest.approx(want[m])


def test_set_aggregate_is_duration_weighted():
    a = E.score_chords([(0, 2, "C:maj"), (2, 4, "A:min")], [(0, 4, "C:maj")])  # 0.5 over 4 s
    b = E.score_chords([(0, 12, "G:maj")], [(0, 12, "G:maj")])               # 1.0 over 12 s
    assert E.aggregate([a, b])["majmin"] == pytest.approx((2 + 12) / 16)


def test_downbeat_f_measure_and_pooling():
    got = E.score_downbeats([1, 2, 3, 4], [1.01, 2.2, 3.0])  # 2 hits within 70 ms: F = 2*2 / (4 + 3)
    assert got["downbeat_f"] == pytest.approx(4 / 7)
    other = E.score_downbeats([1.0], [1.0])
    assert E.aggregate([got, other])["downbeat_f"] == pytest.approx(2 * 3 / (7 + 2))
    assert E.score_downbeats([1.0], [])["downbeat_f"] == 0.0


def _note(frame, pitch, length, track=0, ins=0):
    return [frame, ins, pitch, int(np.searchsorted(tok.DURATION_FRAMES, length)), 100, track]


def _bars():
    rows = ([_note(0, p, 16) for p in (60, 64, 67)]                      # bar 1: C major triad
            + [_note(16, p, 16) for p in (57, 60, 64)]                   # bar 2: A minor triad
            + [_note(t, p, 1, track=1, ins=tok.DRUM) for t in range(0, 48, 2) for p in (40, 44, 47)]  # E-major drums
            + [_note(32, p, 16, track=L.CHORD_TRACK) for p in (40, 52, 56, 59)])  # a label track: not music
    return tok.sort_notes(np.array(rows, np.int32))                      # bar 3: silent


def test_template_matcher_per_bar_and_per_beat():
    want = [(0, 16, "C:maj"), (16, 32, "A:min"), (32, 48, "N")]
    assert E.template_chords(_bars(), [0, 16, 32], 48) == want
    assert E.template_chords(_bars(), range(0, 48, 4), 48) == want


def test_template_matcher_bass_weight():
    # A C E G held: A:min and C:maj tie (3 of 4 tones each) and the first template wins; an A bass decides
    rows = [_note(0, p, 16) for p in (45, 60, 64, 67)]
    notes = tok.sort_notes(np.array(rows, np.int32))
    assert E.template_chords(notes, [0], 16) == [(0, 16, "C:maj")]
    assert E.template_chords(notes, [0], 16, bass_weight=1.0) == [(0, 16, "A:min")]


def test_dechorder_baseline():
    assert E.dechorder_chords(_bars(), 48) == [(0, 16, "C:maj"), (16, 32, "A:min"), (32, 48, "N")]
    rows = [_note(0, 40, 16)] + [_note(0, p, 16) for p in (60, 64, 67)]  # C major over an E bass
    assert E.dechorder_chords(tok.sort_notes(np.array(rows, np.int32)), 16) == [(0, 16, "C:maj/3")]


def test_chorder_quality_names():
    from chorder import Chord

    assert E.chorder_to_harte(Chord(args=(9, "m7", 0))) == "A:min7/b3"
    assert E.chorder_to_harte(Chord(args=(11, "/o7", 11))) == "B:hdim7"
    assert E.chorder_to_harte(Chord(args=(2, "sus4", 2))) == "D:sus4"
    assert E.chorder_to_harte(Chord()) == "N"
