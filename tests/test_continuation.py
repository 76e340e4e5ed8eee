"""The continuation measure (hand-made prompts/continuations) and length-proportional window sampling."""
import math

import numpy as np

from m4mjax import continuation_scores as cont
from m4mjax import tokenizer as tk


def notes(rows):
    """rows of (frame, instrument, pitch) -> notes array (duration class 0, velocity 100, track 0)."""
    a = np.array([(f, i, p, 0, 100, 0) for f, i, p in rows], np.int32).reshape(-1, 6)
    return tk.sort_notes(a)


def test_stats_hand_computed():
    prompt = notes([(0, 0, 60), (0, 33, 36), (0, tk.DRUM, 42), (4, 0, 64)])  # piano C E, bass C, drums
    # continuation: piano only, pitch classes {C: 1, G: 1}
    c = notes([(0, 0, 60), (2, 0, 67)])
    s = cont.continuation_stats(prompt, c, n_frames=8)
    assert s["instruments_kept"] == 1 / 3
    assert s["drums_kept"] == 0.0
    # prompt pc histogram (non-drum): C 2/3, E 1/3; continuation: C 1/2, G 1/2 -> TV = (1/6 + 1/3 + 1/2)/2
    assert math.isclose(s["pc_distance"], 0.5)
    assert s["notes_per_frame"] == 2 / 8


def test_stats_silent_continuation_and_no_drums():
    prompt = notes([(0, 0, 60)])
    s = cont.continuation_stats(prompt, tk.empty_notes(), n_frames=4)
    assert s["instruments_kept"] == 0.0 and s["pc_distance"] == 1.0 and math.isnan(s["drums_kept"])
    m = cont.mean_stats([s, cont.continuation_stats(prompt, notes([(1, 0, 60)]), 4)])
    assert m["instruments_kept"] == 0.5 and m["drums_kept_n"] == 0 and m["pc_distance"] == 0.5


def test_length_sampling_draws_long_songs_in_proportion(prepared_dir, monkeypatch):
    """data.sampling='length': each song is listed once per full window it holds (at least once)."""
    from m4m_fixtures import tiny_config
    from m4mjax.datasets import pipeline
    from m4mjax.run import data as run_data

    seen = {}
    real = run_data.sharded_dataset

    def spy(indices, options=None):
        seen["songs"] = np.asarray(indices)
        return real(indices, options)

    monkeypatch.setattr(run_data, "sharded_dataset", spy)
    cfg = tiny_config(prepared_dir)
    cfg.data.update(frames=100, sampling="length")
    _, lengths = pipeline.open_split(cfg.data, "train")
    pipeline.make_dataset(cfg.data, "train", seed=0)
    expected = [i for i, n in enumerate(lengths) if n >= 100 for _ in range(n // 100)]
    assert sorted(seen["songs"].tolist()) == expected and max(np.bincount(expected)) >= 2
    cfg.data.sampling = "song"
    pipeline.make_dataset(cfg.data, "train", seed=0)
    assert sorted(seen["songs"].tolist()) == [i for i, n in enumerate(lengths) if n >= 100]
