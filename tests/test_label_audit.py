"""Teacher-forced accuracy by token class (m4mjax.label_audit.class_stats), counted by hand."""
import numpy as np
import pytest

from m4mjax import label_audit
from m4mjax import tokenizer as tok

d = lambda p, c: p + (c + 1) * 128  # noqa: E731


def test_class_stats_counts_by_hand():
    P, E, D = tok.PAD, tok.EOS, tok.DRUM
    target = np.array([[0, d(36, 7), 0, d(48, 7), 0, d(52, 7), D, d(35, 0), E, P, P],  # a chord + a downbeat
                       [D, d(42, 0), E, P, P, P, P, P, P, P, P],  # a hi-hat only
                       [0, d(41, 7), 0, d(53, 7), E, P, P, P, P, P, P],  # another chord
                       [P] * 11])  # a frame past the song's end
    pred = target.copy()
    pred[0, 3] = d(49, 7)  # one chord note wrong (pitch class wrong too)
    pred[1, 0] = 0  # opens a chord where there is none
    pred[2, 3] = d(53 + 12, 7)  # right pitch class, wrong register: exact wrong, class right
    pred[0, 7] = d(42, 0)  # the downbeat missed
    got = label_audit.class_stats(pred, target)
    assert got["open"] == (2, 2) and got["no_open"] == (0, 1)
    assert got["chord_note"] == (3, 5) and got["chord_pc"] == (4, 5)
    assert got["beat"] == (1, 2) and got["eos"] == (3, 3)  # EOS at position > 0 in rows 0, 1 and 2
    assert got["chord_row"] == (0, 2)  # both chord rows have a wrong note
    assert got["bass"] == (2, 2) and got["bass_pc"] == (2, 2)  # both basses right (36, 41)
    pred[2, 1] = d(41 + 12, 7)  # the second chord's bass an octave up
    pred[0, 1] = d(37, 7)  # the first chord's bass a semitone off
    got = label_audit.class_stats(pred, target)
    assert got["bass"] == (0, 2) and got["bass_pc"] == (1, 2)


def test_reference_ablation_rows():
    """'other' reads window b with window b-1's music; 'empty' with EOS-only rows (PAD past a song's end)."""
    from m4mjax import tokenizer as tok
    from m4mjax.label_audit import ablate
    from m4mjax.run.cli import UserError

    P, E = tok.PAD, tok.EOS
    ref = np.array([[[5, 200, E, P], [E, P, P, P]],
                    [[7, 300, 9, 400], [P, P, P, P]]], np.int32)  # window 1's second frame is past its song's end
    np.testing.assert_array_equal(ablate(ref, "true"), ref)
    np.testing.assert_array_equal(ablate(ref, "other")[0], ref[1])
    np.testing.assert_array_equal(ablate(ref, "other")[1], ref[0])
    np.testing.assert_array_equal(ablate(ref, "empty"), [[[E, P, P, P], [E, P, P, P]], [[E, P, P, P], [P, P, P, P]]])
    with pytest.raises(UserError):
        ablate(ref, "shuffled")


def test_chord_support_counts_sounding_chord_tones_by_hand():
    """C major (C E G) for 8 frames from frame 0, A minor (A C E) from frame 8. The music: a C held frames 0-3,
    an E at frame 6 for 2 frames, a drum B (pitch 47 = B, ignored) at frame 0, an A at frame 12, and a G at frame 8
    (after the C chord ends). C chord: C, E sound, G does not (2 of 3); A minor: A, and nothing else (1 of 3)."""
    L, P, E, D = 9, tok.PAD, tok.EOS, tok.DRUM
    ref = np.full((16, L), P, np.int32)
    ref[:, 0] = E
    ref[0, :5] = [0, d(60, 3), D, d(47, 0), E]  # C4 for 4 frames (class 3 = 4 frames), a drum
    ref[6, :3] = [0, d(64, 1), E]  # E4 for 2 frames
    ref[8, :3] = [0, d(67, 0), E]  # G4, inside the A minor chord
    ref[12, :3] = [0, d(57, 0), E]  # A3
    tgt = np.full((16, L), P, np.int32)
    tgt[:, 0] = E
    tgt[0, :7] = [0, d(36, 5), 0, d(52, 5), 0, d(55, 5), E]  # C E G, 8 frames (class 5)
    tgt[8, :7] = [0, d(45, 5), 0, d(48, 5), 0, d(52, 5), E]  # A C E
    assert tok.DURATION_FRAMES[3] == 4 and tok.DURATION_FRAMES[5] == 8 and tok.DURATION_FRAMES[1] == 2
    assert label_audit.chord_support(ref, tgt) == (3, 6)
