"""SPS audio data: FluidSynth rendering, features, splits and the TFDS cache."""
import time

import numpy as np
import pytest

from symmetry import audio, data, metrics

pytestmark = [pytest.mark.skipif(not __import__("os").path.isfile(audio.FLUID_R3),
                                 reason="FluidR3_GM soundfont not installed (Debian fluid-soundfont-gm)"),
              pytest.mark.integration]  # renders audio with fluidsynth (which looks itself up with ldconfig)


@pytest.fixture(scope="module")
def renderer():
    return audio.NoteRenderer()


def test_bend_values():
    assert audio.bend_of(60.0) == (60, 0)
    assert audio.bend_of(60.5) == (60, 2048)       # half to even, +0.5 semitone = 8191 * 0.5 * 0.5
    assert audio.bend_of(60.37) == (60, 1515)
    assert audio.bend_of(60.75) == (61, -1024)


@pytest.mark.parametrize("pitch", [60.0, 69.0, 64.37, 72.5])
def test_rendered_note_pitch(renderer, pitch):
    wav = renderer.render(audio.FLUID_R3, 21, pitch)
    assert wav.shape == (audio.NOTE_SAMPLES,) and wav.dtype == np.float32
    assert np.abs(wav).max() > 1e-3
    assert abs(metrics.detect_pitch(wav) - pitch) < 0.15


def test_render_cache_and_fade(renderer):
    a = renderer.render(audio.FLUID_R3, 21, 61.0)
    n = len(renderer)
    b = renderer.render(audio.FLUID_R3, 21, 61.0)
    assert len(renderer) == n and np.array_equal(a, b)
    faded = renderer.render(audio.FLUID_R3, 21, 61.0, fade=True)
    assert faded[-1] == 0 and np.array_equal(faded[:-512], a[:-512])


def test_missing_soundfont_and_silence(renderer, tmp_path):
    with pytest.raises(ValueError, match="nope.sf2"):
        renderer.render(str(tmp_path / "nope.sf2"), 21, 60)
    bad = tmp_path / "broken.sf2"
    bad.write_bytes(b"not a soundfont")
    with pytest.raises(ValueError, match="broken.sf2"):
        renderer.render(str(bad), 21, 60)
    cfg = data.default_data_config()
    cfg.soundfont, cfg.dir = str(tmp_path / "nope.sf2"), str(tmp_path)
    with pytest.raises(ValueError, match="nope.sf2"):
        data.build_audio_dataset(cfg)


def test_sequence_features(renderer):
    wav = audio.render_sequence(renderer, audio.FLUID_R3, 21, audio.scale_pitches(60), (58, 84))
    assert wav.shape == (15 * 2560,) and not np.any(wav[:512])
    y = audio.sequence_features(wav, 15)
    assert y.shape == (15, 513, 5) and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 1 and y.max() > 0.1
    # note k's block = that note's own features, shifted by the first note's leading zeros
    lead = int(np.flatnonzero(renderer.render(audio.FLUID_R3, 21, 60, fade=True))[0])
    note = renderer.render(audio.FLUID_R3, 21, 65, fade=True)[lead:]
    np.testing.assert_allclose(y[3], audio.note_features(note, strip=False), atol=1e-5)
    assert audio.sequence_features(wav, 15, n_bins=257).shape == (15, 257, 5)
    np.testing.assert_array_equal(audio.sequence_features(wav, 15, n_bins=257), y[:, :257])
    c = audio.sequence_features(wav, 15, "cqt")
    assert c.shape == (15, audio.feature_size("cqt"), 5) and 0 <= c.min() and c.max() <= 1
    mag = audio.features_to_magnitude(y)
    np.testing.assert_allclose(audio.normalise(mag), y, atol=1e-6)


def test_bend_split_specs():
    cfg = data.default_data_config()
    _, train = data.scale_specs(cfg, "train")
    _, bend = data.scale_specs(cfg, "bend")
    _, bend2 = data.scale_specs(cfg, "bend")
    assert len(train) == len(bend) == 26
    starts = np.array([s["pitches"][0] for s in bend])
    offsets = starts - np.arange(58, 84)
    assert np.all((offsets >= 0) & (offsets <= 1)) and len(set(offsets.round(2))) > 10
    np.testing.assert_allclose(offsets, offsets.round(2), atol=1e-9)
    assert all(np.array_equal(a["pitches"], b["pitches"]) for a, b in zip(bend, bend2))
    np.testing.assert_array_equal(train[0]["pitches"] - 58, audio.MAJOR_SCALE)


def test_fade_switch(renderer):
    cfg = data.default_data_config()
    assert all(s["fade"] == (58, 84) for s in data.scale_specs(cfg, "train")[1])
    key_official = data.settings_key(cfg, "train")[0]
    key_bend = data.settings_key(cfg, "bend")[0]
    cfg.train_fade = "none"
    assert all(s["fade"] is None for s in data.scale_specs(cfg, "train")[1])
    assert data.settings_key(cfg, "train")[0] != key_official  # a separate cache
    assert all(s["fade"] == (58, 84) for s in data.scale_specs(cfg, "bend")[1])  # test sets stay the paper's
    assert data.settings_key(cfg, "bend")[0] == key_bend
    pitches = [60.0, 60.5, 84.0]
    faded = audio.render_sequence(renderer, audio.FLUID_R3, 21, pitches, (58, 84))
    plain = audio.render_sequence(renderer, audio.FLUID_R3, 21, pitches, None)
    note = lambda a, i: a[i * 2560 + 512:(i + 1) * 2560]  # noqa: E731
    assert note(faded, 0)[-1] == 0 and note(plain, 0)[-1] != 0      # only the in-range integer note fades
    np.testing.assert_array_equal(note(faded, 1), note(plain, 1))
    np.testing.assert_array_equal(note(faded, 2), note(plain, 2))
    cfg.train_fade = "some"
    with pytest.raises(ValueError, match="train_fade"):
        data.scale_specs(cfg, "train")


def test_unknown_key(tmp_path):
    cfg = dict(dir=str(tmp_path), soundfnt="x")
    with pytest.raises(ValueError, match="soundfnt"):
        data.build_audio_dataset(cfg)


def test_cache_reused(tmp_path, monkeypatch):
    cfg = data.default_data_config()
    cfg.dir, cfg.start_pitches = str(tmp_path), (60, 61, 83)
    d1 = data.build_audio_dataset(cfg, "bend")
    assert d1["x"].shape == (3, 15, 513, 5) and d1["pitch"].shape == (3, 15)
    assert d1["program"].tolist() == [21] * 3 and d1["scored"].tolist() == [True, True, True]
    np.testing.assert_allclose(d1["pitch"][:, 0], d1["start_pitch"])

    def boom(*a, **k):
        raise AssertionError("re-rendered instead of reading the cache")

    monkeypatch.setattr(data, "render_examples", boom)
    t = time.perf_counter()
    d2 = data.build_audio_dataset(cfg, "bend")
    assert time.perf_counter() - t < 2.0
    for k in d1:
        np.testing.assert_array_equal(d1[k], d2[k])


def test_multi_instrument_and_unseen(renderer):
    cfg = data.default_data_config()
    cfg.instruments, cfg.start_pitches = ("Piano", "Flute"), (60,)
    d = data.render_examples(cfg, "train", renderer)
    assert d["x"].shape == (2, 15, 513, 5) and d["program"].tolist() == [0, 73]
    if __import__("os").path.isfile(audio.TIMGM6MB):
        u = data.render_examples(cfg, "unseen", renderer)
        assert u["x"].shape == d["x"].shape and not np.allclose(u["x"], d["x"])
