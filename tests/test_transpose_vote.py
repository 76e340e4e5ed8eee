"""The transposition ensemble of analysis (windows.vote, label_songs(transpose=...)) and labels.transpose_label:
expectations written out by hand, fake analysers with known behaviour under transposition."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from m4mjax import labels, windows
from m4mjax import tokenizer as tok


def test_transpose_label_moves_the_root_and_keeps_quality_and_bass():
    assert labels.transpose_label("C:maj", 3) == "Eb:maj"
    assert labels.transpose_label("Bb:min7/b3", 3) == "C#:min7/b3"
    assert labels.transpose_label("F#:hdim7", -7) == "B:hdim7"
    assert labels.transpose_label("A", 2) == "B" and labels.transpose_label("Eb/5", -1) == "D/5"
    assert labels.transpose_label("N", 5) == "N" and labels.transpose_label("X", 5) == "X"


def _res(segments, downbeats):
    return windows.Result(segments, np.array(downbeats, np.int64), tok.empty_notes())


def test_vote_takes_each_frames_majority_after_moving_each_analysis_back():
    # the analyses were made on the song moved by 0, +2 and -3
    a0 = _res([(0, 8, "E:min"), (8, 16, "G:7")], [0, 8])
    a2 = _res([(0, 4, "D:maj"), (4, 16, "A:7")], [0, 8])  # moved back: C:maj 0-4, G:7 4-16
    am3 = _res([(0, 12, "A:maj"), (12, 16, "N")], [4])  # moved back: C:maj 0-12, N 12-16
    out = windows.vote([a0, a2, am3], [0, 2, -3], 16)
    assert windows.vote([am3, a0, a2], [-3, 0, 2], 16).downbeats.tolist() == [4]
    # 0-4: C:maj twice; 4-8: E:min / G:7 / C:maj, a tie the first shift wins; 8-16: G:7 at least twice
    assert out.segments == [(0, 4, "C:maj"), (4, 8, "E:min"), (8, 16, "G:7")]
    assert out.downbeats.tolist() == [0, 8]  # the first shift's
    assert labels.track_to_chords(out.notes, None, n_frames=16) == out.segments  # the notes say the same


def test_vote_breaks_ties_by_the_order_of_the_shifts():
    runs = [_res([(0, 4, "C:maj")], []), _res([(0, 4, "C:maj")], []), _res([(0, 4, "C:maj")], [])]
    # moved back by 0, +4, -4: C:maj, Ab:maj, E:maj -- one vote each
    assert windows.vote(runs, [0, 4, -4], 4).segments == [(0, 4, "C:maj")]
    assert windows.vote(runs, [4, 0, -4], 4).segments == [(0, 4, "Ab:maj")]


def _fake_analyser(equivariant: bool):
    """sample_target stand-in: every frame of the window gets the major chord on the pitch class of the window's
    first reference note (equivariant), or C:maj whatever the music (not), and a downbeat, from the first frame
    after the prompt on."""
    L = tok.MAX_FRAME_TOKENS

    def sample(model, reference, prompt, n_frames, rng, temperature, decode="sample", open_mode="joint"):
        f0 = 0 if prompt is None else prompt.shape[1]
        out = np.full((reference.shape[0], f0 + n_frames, L), tok.PAD, np.int32)
        for b, ref in enumerate(np.asarray(reference)):
            pd = ref[:, 1][(ref[:, 1] >= tok.N_PITCHES) & (ref[:, 1] < tok.SOS)]
            pc = int(pd[0] % tok.N_PITCHES) % 12 if equivariant else 0
            F = f0 + n_frames
            notes = np.concatenate([labels.chord_track([(f0, F, f"{labels.NAMES[pc]}:maj")], F, [f0]),
                                    labels.beat_track([f0], None, F)])
            out[b] = tok.notes_to_tokens(tok.sort_notes(notes), 0, F, L)
        if f0:
            out[:, :f0] = prompt
        return out

    return sample


@pytest.mark.parametrize("equivariant,want", [(True, "D:maj"), (False, "Ab:maj")])
def test_label_songs_transposes_the_music_and_votes(monkeypatch, equivariant, want):
    """An analyser that moves with the music gives its own answer under any shifts; one that ignores the music
    gives C:maj, moved back from +4 / -4 / 0 to Ab:maj / E:maj / C:maj: a three-way tie the first shift wins."""
    monkeypatch.setattr(windows, "sample_target", _fake_analyser(equivariant))
    music = np.array([(f, 0, 62, 2, 80, 0) for f in range(0, 40, 4)], np.int32)  # D4 every beat
    song = windows.Song(music, 40)
    model = type("M", (), {"cfg": ml_collections.ConfigDict({"max_frame_tokens": tok.MAX_FRAME_TOKENS})})()
    plain = next(windows.label_songs(model, [song], 16, context=4, batch_size=1, decode="sample"))
    voted = next(windows.label_songs(model, [song], 16, context=4, batch_size=1, decode="sample",
                                     transpose=(4, -4, 0)))
    assert [s[2] for s in plain.segments] == ["D:maj" if equivariant else "C:maj"]
    assert voted.segments == [(0, 40, want)] and voted.downbeats.tolist() == plain.downbeats.tolist()
    with pytest.raises(Exception, match="distinct"):
        next(windows.label_songs(model, [song], 16, transpose=(0, 0)))
