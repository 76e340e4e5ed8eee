"""The conditional-generation tasks (experiments/m4m/generation.py:tiny): task entries and selectors that never
see label tracks, `m4mjax.generate` end to end (reference tracks kept, generated tracks added, tempo map and
metre kept, windows stitched, bad files and a wrong task as one-line errors) and the metrics against
hand-computed values."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest
import symusic
from flax import nnx

from m4m_fixtures import REPO, tiny_config
from smf import read_smf
from m4mjax import gen_metrics as gm
from m4mjax import generate, labels, tasks, windows
from m4mjax import tokenizer as tok
from m4mjax.datasets import pipeline

GEN_TASKS = ("chord_to_melody", "melody_to_chord", "drums_to_others", "others_to_drums")


# ------------------------------------------------------------------------------------------- fixtures
def _song(item):
    """Melody (track 0) + drums (track 1) + the chord track (250) of one chord per 4/4 bar."""
    rng = np.random.default_rng(item["seed"])
    rows, segs = [], []
    for b in range(item["bars"]):
        root, q = int(rng.integers(12)), ("maj", "min")[int(rng.integers(2))]
        segs.append((16 * b, 16 * b + 16, f"{labels.NAMES[root]}:{q}"))
        rows += [(16 * b + k, 73, 60 + (root + (0, 4, 7, 12)[k // 4]) % 12 + 12, 2, 80, 0) for k in range(0, 16, 4)]
        rows += [(16 * b + k, tok.DRUM, 36 if k % 8 == 0 else 38, 1, 80, 1) for k in range(0, 16, 4)]
    music, n = tok.build_notes(np.array(rows))
    notes = np.concatenate([music, labels.chord_track(segs, n, range(0, n, 16))])
    return [{"id": item["key"], "group": "fixture", "notes": tok.sort_notes(notes), "n_frames": n}]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    from m4mjax.datasets import convert

    out = tmp_path_factory.mktemp("gen_data")
    items = [{"key": f"song{i:02d}", "seed": i, "bars": 2 + i % 3} for i in range(20)]
    rep = convert.convert(items, _song, out, shard_size=10, workers=1, progress=False)
    assert not rep["bad_items"], rep
    return out


def _config(task: str, data_dir, **overrides):
    return tiny_config(data_dir, "generation", f"{task},tiny", **overrides)


@pytest.fixture(scope="module")
def lm_workdir(tmp_path_factory) -> pathlib.Path:
    from experiments.sweep import load_experiment
    from m4mjax.model import M4MTransformer
    from m4mjax.run import checkpoint

    cfg = load_experiment(str(REPO / "experiments/m4m/lm_pretrain.py")).get_config("tiny")
    wd = tmp_path_factory.mktemp("lm_tiny")
    ck = checkpoint.Checkpointer(str(wd), every=1)
    ck.save(1, {"params": nnx.state(M4MTransformer(cfg.model, rngs=nnx.Rngs(7)), nnx.Param).to_pure_dict()}, force=True)
    ck.close()
    return wd


@pytest.fixture(scope="module")
def runs(data_dir, lm_workdir, tmp_path_factory) -> dict[str, pathlib.Path]:
    """generation.py:tiny chord_to_melody (FA_self) trained 2 steps; an others_to_drums run = the same weights
    with that task's config (one training keeps the file fast; both links train in test_analysis)."""
    import json
    import shutil

    from m4mjax import train

    wd = tmp_path_factory.mktemp("chord_to_melody")
    train.train(_config("chord_to_melody", data_dir, **{"init_from": str(lm_workdir), "train.eval_every": 0}),
                str(wd))
    o2d = tmp_path_factory.mktemp("others_to_drums") / "run"
    shutil.copytree(wd, o2d)
    cfg = json.loads((o2d / "config.json").read_text())
    cfg["task"], cfg["data"]["reference"], cfg["data"]["target"] = "others_to_drums", "music_others", "music_drums"
    (o2d / "config.json").write_text(json.dumps(cfg))
    return {"chord_to_melody": wd, "others_to_drums": o2d}


def _write_chords(path: pathlib.Path, tpq: int = 480) -> list[tuple[int, int, int]]:
    """6 bars of 3/4: block chords C Am F G C Am (one per bar) + a drum track; 120 qpm, then 96 from bar 3."""
    s = symusic.Score(tpq)
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.tempos.append(symusic.Tempo(0, qpm=120.0))
    s.tempos.append(symusic.Tempo(6 * tpq, qpm=96.0))
    piano, drums = symusic.Track(name="chords", program=0), symusic.Track(name="kit", is_drum=True)
    notes = []
    for b, ch in enumerate([(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62), (60, 64, 67), (57, 60, 64)]):
        for p in ch:
            piano.notes.append(symusic.Note(b * 3 * tpq, 3 * tpq, p, 80))
            notes.append((b * 3 * tpq, p, 3 * tpq))
        drums.notes.append(symusic.Note(b * 3 * tpq, 60, 36, 80))
    s.tracks.extend([piano, drums])
    s.dump_midi(str(path))
    return notes


# --------------------------------------------------------------------------------------- tasks & data
def test_tasks_and_configs_per_generation_task(data_dir):
    want = {"chord_to_melody": ("track:250", "track:0"), "melody_to_chord": ("track:0", "track:250"),
            "drums_to_others": ("music_drums", "music_others"), "others_to_drums": ("music_others", "music_drums")}
    for name, (ref, tgt) in want.items():
        t = tasks.get_task(name)
        assert (t.reference, t.target, t.streams) == (ref, tgt, ("reference", "target"))
        cfg = _config(name, data_dir)
        assert (cfg.task, cfg.data.reference, cfg.data.target) == (name, ref, tgt)


def test_music_selectors_leave_label_tracks_out():
    notes = np.array([(0, 0, 60, 3, 80, 0), (0, tok.DRUM, 36, 0, 80, 1), (0, 0, 48, 5, 100, labels.CHORD_TRACK),
                      (0, tok.DRUM, 35, 0, 100, labels.BEAT_TRACK)], np.int32)
    assert pipeline.select_stream(notes, "music_drums")[:, tok.TRACK].tolist() == [1]
    assert pipeline.select_stream(notes, "music_others")[:, tok.TRACK].tolist() == [0]
    assert len(pipeline.select_stream(notes, "others")) == 2  # the plain selector sees the chord track


def test_chords_from_notes_draw_the_chord_track_layout():
    rows = [(0, 0, p, 16, 80, 0) for p in (57, 60, 64)] + [(16, 0, p, 16, 80, 0) for p in (60, 64, 67)]
    notes, n = tok.build_notes(np.array(rows))
    ref = generate.chords_from_notes(notes, n, [0, 16])
    assert labels.track_to_chords(ref, labels.CHORD_TRACK, n_frames=n) == [(0, 16, "A:min"), (16, 32, "C:maj")]
    assert sorted(ref[ref[:, tok.FRAME] == 0, tok.PITCH]) == [45, 48, 52, 57]


def test_an_analyzed_chord_track_is_read_as_is(tmp_path):
    s = symusic.Score(480)
    tr = symusic.Track(name="m4m chords", program=0)
    for p in (45, 48, 52, 57):  # A:min on the chord-track layout
        tr.notes.append(symusic.Note(0, 1920, p, 100))
    mel = symusic.Track(name="tune", program=73)
    mel.notes.append(symusic.Note(0, 480, 76, 80))
    s.tracks.extend([mel, tr])
    s.dump_midi(str(tmp_path / "a.mid"))
    ref, n, score, tracks = generate.read_reference(str(tmp_path / "a.mid"), "track:250")
    assert ref[:, tok.PITCH].tolist() == [45, 48, 52, 57] and (ref[:, tok.TRACK] == 250).all() and n == 16
    ref, n, score, tracks = generate.read_reference(str(tmp_path / "a.mid"), "track:0")  # melody: m4m tracks off
    assert ref[:, tok.PITCH].tolist() == [76] and [t.name for t in score.tracks] == ["tune"]


# --------------------------------------------------------------------------------------------- generate
@pytest.fixture()
def fake(monkeypatch):
    """The model call replaced: one flute note (program 73) per 4 frames, pitch = 60 + the window's frame
    index, so stitching shows in the output; prompts must equal what was already written."""
    calls = []

    def sample(model, reference, prompt, n_frames, rng, temperature, top_p, scale=None):
        B, F, L = reference.shape
        f0 = 0 if prompt is None else prompt.shape[1]
        full = np.full((B, F, L), tok.PAD, np.int32)
        full[:, :, 0] = tok.EOS
        for f in range(0, F, 4):
            full[:, f, :3] = (73, 60 + f + (2 + 1) * tok.N_PITCHES, tok.EOS)  # duration class 2 (3 frames)
        if f0:
            full[:, :f0] = prompt
        calls.append((B, f0, n_frames))
        return full

    monkeypatch.setattr(windows, "sample_target", sample)
    return calls


def test_generate_keeps_the_reference_and_adds_the_melody(runs, tmp_path, fake, capsys):
    inp = tmp_path / "song.mid"
    _write_chords(inp)
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    (tmp_path / "drums_only.mid").write_bytes(inp.read_bytes())
    s = symusic.Score(str(tmp_path / "drums_only.mid"))
    s.tracks = [t for t in s.tracks if t.is_drum]
    s.dump_midi(str(tmp_path / "drums_only.mid"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        generate.main(["--workdir", str(runs["chord_to_melody"]), "--task", "chord_to_melody", str(inp),
                       str(tmp_path / "bad.mid"), str(tmp_path / "drums_only.mid"), "--out", str(out),
                       "--num_samples", "2", "--context", "4"])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 3 and any("bad.mid" in ln for ln in err) and any("drums_only.mid" in ln for ln in err)
    assert sorted(p.name for p in out.iterdir()) == ["song_0.mid", "song_1.mid"]
    assert [c[1] for c in fake] == [0, 4, 4, 4, 4, 4] and all(c[0] == 2 for c in fake)  # 72 frames: 6 windows
    src = symusic.Score(str(inp))
    for k in range(2):
        got = symusic.Score(str(out / f"song_{k}.mid"))
        assert [t.name for t in got.tracks] == ["chords", "m4m chord_to_melody program73"]  # drums dropped
        assert got.tracks[0].notes.numpy()["pitch"].tolist() == src.tracks[0].notes.numpy()["pitch"].tolist()
        assert got.tracks[0].notes.numpy()["time"].tolist() == src.tracks[0].notes.numpy()["time"].tolist()
        mel = got.tracks[1].notes
        assert [n.time for n in mel] == [f * 120 for f in range(0, 72, 4)]  # one note per 4 frames, all frames
        smf = read_smf(out / f"song_{k}.mid")
        assert smf.tempos == [(0, 500000), (2880, 625000)] and smf.time_signatures == [(0, 3, 4)]


def test_generate_wrong_task_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    _write_chords(tmp_path / "song.mid")
    with pytest.raises(SystemExit) as e:
        generate.main(["--workdir", str(runs["chord_to_melody"]), "--task", "drums_to_others",
                       str(tmp_path / "song.mid"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained for task 'chord_to_melody'" in err[0] and "--task=drums_to_others" in err[0]
    assert not (tmp_path / "out").exists()


def test_others_to_drums_with_the_real_tiny_model(runs, tmp_path):
    _write_chords(tmp_path / "song.mid")
    written, bad = generate.generate_files(str(runs["others_to_drums"]), "others_to_drums",
                                           [str(tmp_path / "song.mid")], str(tmp_path / "out"), seed=1)
    assert not bad and written == [str(tmp_path / "out" / "song.mid")]
    got = symusic.Score(written[0])
    assert got.tracks[0].name == "chords" and not got.tracks[0].is_drum
    assert all(t.name.startswith("m4m others_to_drums") for t in got.tracks[1:])  # the input's drums replaced
    assert all(n.time < 72 * 120 for t in got.tracks for n in t.notes)
    smf = read_smf(written[0])
    assert smf.tempos == [(0, 500000), (2880, 625000)] and smf.time_signatures == [(0, 3, 4)]


def test_scale_reaches_the_sampler_and_needs_fa_cross(runs, tmp_path, monkeypatch, capsys):
    """--scale is passed to linked.generate (the official sampler's adapter multiplier); on an FA_self run it is
    a one-line error and nothing is written."""
    import copy

    from m4mjax import linked

    _write_chords(tmp_path / "song.mid")
    model, cfg, task = generate.load_run(str(runs["chord_to_melody"]), "chord_to_melody")
    cross = copy.deepcopy(cfg)
    cross.link.kind = "fa_cross"
    monkeypatch.setattr(type(model), "accepts_scale", True)  # as an FA_cross model; the sampler is replaced below
    seen = []

    def fake(model, reference, rng, **kw):
        seen.append(kw["scale"])
        return np.full(reference.shape, 3329, np.int32)  # empty frames

    monkeypatch.setattr(generate, "load_run", lambda w, t: (model, cross, task))
    monkeypatch.setattr(linked, "generate", fake)
    generate.generate_files("cross_run", "chord_to_melody", [str(tmp_path / "song.mid")], str(tmp_path / "o"),
                            scale=2.5)
    assert seen and set(seen) == {2.5}
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:
        generate.main(["--workdir", str(runs["chord_to_melody"]), "--task=chord_to_melody", "--scale=2",
                       str(tmp_path / "song.mid"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale=2.0" in err[0] and "FA_cross" in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- metrics
def _notes(rows):
    return np.array(rows, np.int32).reshape(-1, 6)


def test_chord_tone_ratio_and_histograms():
    # C:maj over bar 0, A:min over bar 1; melody C(0) D(4) E(8) F(12) | A(16) B(20) C(24) G(28)
    mel = _notes([(f, 0, p, 2, 80, 0) for f, p in zip(range(0, 32, 4), (60, 62, 64, 65, 69, 71, 72, 67))])
    r = gm.chord_tone_ratio(mel, [(0, 16, "C:maj"), (16, 32, "A:min")])
    assert r["overall"] == pytest.approx(4 / 8)  # C E | A C
    assert r["strong"] == pytest.approx(4 / 4)  # frames 0 8 16 24: C E A C
    assert np.isnan(gm.chord_tone_ratio(mel, [(0, 32, "N")])["overall"])
    h = gm.pitch_class_histogram(mel)
    assert h[0] == pytest.approx(2 / 8) and h.sum() == pytest.approx(1.0)
    iv = gm.interval_histogram(mel)  # +2 +2 +1 +4 +2 +1 -5
    assert iv[12 + 2] == pytest.approx(3 / 7) and iv[12 - 5] == pytest.approx(1 / 7)
    assert gm.histogram_distance(np.eye(12)[0], np.eye(12)[1]) == 1.0
    assert gm.histogram_distance(h, h) == 0.0
    assert gm.histogram_distance([0.5, 0.5, 0], [0.5, 0, 0.5]) == pytest.approx(0.5)
    assert gm.note_density(mel, 32) == 4.0


def test_onsets_grooves_instruments_and_drum_repetition():
    a = _notes([(f, 0, 60, 0, 80, 0) for f in (0, 4, 8, 12)])
    b = _notes([(f, 0, 60, 0, 80, 0) for f in (0, 5, 8)])
    assert gm.onset_f1(a, b, tolerance=0) == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert gm.onset_f1(a, b, tolerance=1) == pytest.approx(2 * (3 / 4) * 1.0 / (3 / 4 + 1.0))
    assert gm.onset_f1(a, a[:0]) == 0.0
    assert gm.groove_similarity(a, a, 16) == 1.0
    assert gm.groove_similarity(a, b, 16) == pytest.approx(1 - 3 / 16)  # differ at 4, 5, 12
    assert gm.groove_similarity(a, b, 32) == pytest.approx((1 - 3 / 16 + 1.0) / 2)  # bar 2 empty in both
    assert gm.instruments_count(_notes([(0, 0, 60, 0, 80, 0), (0, 33, 40, 0, 80, 1), (0, tok.DRUM, 36, 0, 80, 2),
                                        (1, tok.DRUM, 38, 0, 80, 3)])) == 3
    pat = [(0, tok.DRUM, 36, 0, 80, 0), (8, tok.DRUM, 38, 0, 80, 0)]
    drums = _notes([(f + 16 * b, i, p, d, v, t) for b in range(3) for f, i, p, d, v, t in pat]
                   + [(48, tok.DRUM, 42, 0, 80, 0)])
    rep = gm.drum_pattern_repetition(drums, 64)
    assert rep["repeat_prev"] == pytest.approx(2 / 3) and rep["unique"] == pytest.approx(2 / 4)


def test_harmonise_picks_the_best_triad_per_bar():
    mel = _notes([(0, 0, 64, 3, 80, 0), (4, 0, 67, 3, 80, 0), (8, 0, 72, 3, 80, 0), (12, 0, 62, 3, 80, 0),
                  (16, 0, 69, 3, 80, 0), (20, 0, 72, 3, 80, 0), (24, 0, 64, 5, 80, 0)])  # E G C D | A C E- | -
    # bar 1 (duration classes 3 = 4 frames, 5 = 8): A:min covers 16 frames, A:maj and C:maj 12
    assert gm.harmonise(mel, 48) == [(0, 16, "C:maj"), (16, 32, "A:min"), (32, 48, "N")]
    import mir_eval

    for _, _, lab in gm.harmonise(mel, 48):
        mir_eval.chord.encode(lab)  # valid mir_eval labels


# ------------------------------------------------------------------------------------------- evaluation
def test_gen_eval_scores_each_task_by_hand():
    from m4mjax import gen_scores

    truth = labels.chord_track([(0, 16, "C:maj"), (16, 32, "G:maj")], 32, [0, 16])
    est = labels.chord_track([(0, 32, "C:maj")], 32, [0, 16])
    got = gen_scores.score("melody_to_chord", _notes([]), est, truth, 32)
    assert got["majmin"] == pytest.approx(0.5) and got["root"] == pytest.approx(0.5)
    # chord -> melody: C:maj then A:min; melody C D E F | A B C G (chord tones C E | A C; strong all 4)
    mel = _notes([(f, 0, p, 2, 80, 0) for f, p in zip(range(0, 32, 4), (60, 62, 64, 65, 69, 71, 72, 67))])
    ref = labels.chord_track([(0, 16, "C:maj"), (16, 32, "A:min")], 32, [0, 16])
    got = gen_scores.score("chord_to_melody", ref, mel, mel, 32)
    assert (got["chord_tone"], got["chord_tone_strong"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert got["pc_distance"] == 0.0 and got["notes_per_bar"] == 4.0
    drums = _notes([(f, tok.DRUM, 36, 0, 80, 1) for f in (0, 4, 8, 12, 16, 20, 24, 28)])
    late = drums.copy()
    late[:, tok.FRAME] += 1
    got = gen_scores.score("others_to_drums", ref, late, drums, 32)
    assert got["onset_f1"] == 0.0 and got["drum_repeat_prev"] == 1.0 and got["instruments"] == 1.0
    assert gen_scores.score("others_to_drums", ref, drums, drums, 32)["onset_f1"] == 1.0
    rows = [{"majmin": 1.0, "weight": 10.0}, {"majmin": 0.0, "weight": 30.0}, {"majmin": float("nan"), "weight": 5.0}]
    assert gen_scores.summarize("melody_to_chord", rows)["majmin"] == pytest.approx(0.25)


def test_gen_eval_run_and_baselines_on_held_out_songs(runs, data_dir):
    """m4mjax.evaluate dispatches a generation run to gen_eval (eval.json, the task's main metric); on the fixture
    (melody = the bar root's MAJOR arpeggio, whatever the chord) the truth scores 1 and the rule harmoniser exactly
    what labelling every bar root:maj scores (worked out here from the true chord track, not by harmonise)."""
    import json

    from m4mjax import evaluate, gen_scores

    out = evaluate.evaluate(str(runs["chord_to_melody"]), max_batches=2)
    saved = json.loads((runs["chord_to_melody"] / "eval.json").read_text())
    assert saved["test"]["main"] == "chord_tone_strong" and saved["test"]["songs"] == 2 == out["test"]["songs"]
    assert 0.0 <= saved["test"]["chord_tone"] <= 1.0
    from m4mjax import chord_eval

    base = gen_scores.baselines("melody_to_chord", str(data_dir), max_songs=3)
    assert base["truth"]["majmin"] == 1.0
    num = den = 0.0
    for _, _, truth, n in gen_scores.held_out(str(data_dir), tasks.get_task("melody_to_chord"), 3):
        segs = labels.track_to_chords(truth, None, n_frames=n)
        as_major = [(a, b, lab if lab == "N" else lab.split(":")[0] + ":maj") for a, b, lab in segs]
        num, den = num + n * chord_eval.score_chords(segs, as_major)["majmin"], den + n
    assert 0.2 < num / den < 0.9 and base["rule"]["majmin"] == pytest.approx(num / den, abs=1e-3)
    c2m = gen_scores.baselines("chord_to_melody", str(data_dir), max_songs=3)
    assert c2m["truth"]["pc_distance"] == 0.0 and c2m["truth"]["interval_distance"] == 0.0
    per_song = []  # 4 melody notes a bar; over a minor chord the (major) third is the one non-chord tone
    for _, ref, _, n in gen_scores.held_out(str(data_dir), tasks.get_task("chord_to_melody"), 3):
        quals = [lab.split(":")[1] for _, _, lab in labels.track_to_chords(ref, None, n_frames=n) if lab != "N"]
        per_song.append(1 - quals.count("min") / (4 * len(quals)))
    assert c2m["truth"]["chord_tone"] == pytest.approx(np.mean(per_song), abs=1e-3)
