"""The analysis task (experiments/m4m/analysis.py:tiny): training touches only the link, the trainable switch,
labels-aware selectors and transposition, `m4mjax.analyze` end to end (windows, tempo map, odd metre, bad
files) and the evaluation's scores against hand-computed values."""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest
import symusic
from flax import nnx

from m4m_fixtures import REPO, tiny_config
from smf import read_smf
from m4mjax import analysis_scores, analyze, labels, tasks, windows
from m4mjax import runs as run_dir
from m4mjax import tokenizer as tok
from m4mjax.datasets import pipeline

TRIADS = {"maj": (0, 4, 7), "min": (0, 3, 7)}


# ------------------------------------------------------------------------------------------- fixtures
def _fixture_song(item):
    """Piano block chords (one per bar) + root bass + drums, in 3/4 or 4/4, with its exact labels."""
    from m4mjax.datasets import chord_songs

    rng = np.random.default_rng(item["seed"])
    bpb, n_bars, qpm = item["bpb"], item["bars"], item["qpm"]
    bar = 4 * bpb
    rows, segments = [], []
    for b in range(n_bars):
        root, q = int(rng.integers(12)), ("maj", "min")[int(rng.integers(2))]
        segments.append((b * bar, (b + 1) * bar, f"{labels.NAMES[root]}:{q}"))
        rows += [(b * bar, 0, 60 + (root + iv) % 12, bar, 80, 0) for iv in TRIADS[q]]
        rows += [(b * bar + k, 33, 36 + root, 4, 80, 1) for k in range(0, bar, 4)]
        rows += [(b * bar + k, tok.DRUM, 36 if k == 0 else 42, 1, 80, 2) for k in range(0, bar, 2)]
    music, n = tok.build_notes(np.array(rows))
    downs = [b * bar for b in range(n_bars)]
    return chord_songs.make_song(item, music, n, segments, downs, [d + k for d in downs for k in range(0, bar, 4)],
                            [(0, qpm)])


@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory) -> pathlib.Path:
    """A chord-data folder like `m4mjax.datasets.chords` writes: 24 synth songs (split by index mod 10) and 4
    'romantext' songs (all test), labels.json beside the shards."""
    from m4mjax.datasets import chord_data, convert

    out = tmp_path_factory.mktemp("analysis_data")
    items = [{"key": f"synth/mma/0/{i:05d}", "group": "synth/mma", "seed": i, "bpb": 3 + i % 2, "bars": 4 + i % 3,
              "qpm": 100 + 5 * i, "out": str(out)} for i in range(24)]
    items += [{"key": f"romantext/bach/{i}", "group": "romantext/bach", "seed": 100 + i, "bpb": 4, "bars": 5,
               "qpm": 80, "out": str(out)} for i in range(4)]
    split = {it["key"]: ("test" if it["group"] != "synth/mma" or it["seed"] % 10 == 0 else
                         "valid" if it["seed"] % 10 == 1 else "train") for it in items}
    rep = convert.convert(items, _fixture_song, out, shard_size=8, workers=1, split_fn=lambda sid, i: split[sid],
                          progress=False)
    assert not rep["bad_items"], rep
    chord_data.gather(out, rep, 0.0)
    return out


def _config(data_dir, **overrides):
    return tiny_config(data_dir, "analysis", **overrides)


@pytest.fixture(scope="module")
def lm_workdir(tmp_path_factory) -> pathlib.Path:
    """A foundation checkpoint of experiments/m4m/lm_pretrain.py:tiny's shape (random weights of another seed
    than the analysis runs', so "the foundation equals the LM" cannot hold by accident)."""
    from experiments.sweep import load_experiment
    from m4mjax.model import M4MTransformer
    from m4mjax.run import checkpoint

    cfg = load_experiment(str(REPO / "experiments/m4m/lm_pretrain.py")).get_config("tiny")
    lm = M4MTransformer(cfg.model, rngs=nnx.Rngs(123))
    wd = tmp_path_factory.mktemp("lm_tiny")
    ck = checkpoint.Checkpointer(str(wd), every=1)
    ck.save(1, {"params": nnx.state(lm, nnx.Param).to_pure_dict()}, force=True)
    ck.close()
    return wd


@pytest.fixture(scope="module")
def runs(analysis_dir, lm_workdir, tmp_path_factory) -> dict[str, pathlib.Path]:
    """analysis.py:tiny trained 2 steps from the tiny LM, once per link kind."""
    from m4mjax import train

    out = {}
    for kind in ("fa_self", "fa_cross"):
        wd = tmp_path_factory.mktemp(f"analysis_{kind}")
        cfg = _config(analysis_dir, **{"link.kind": kind, "init_from": str(lm_workdir)})
        if kind == "fa_cross":
            cfg.train.eval_every = 0  # one held-out evaluation (fa_self's) covers the linked eval step
        train.train(cfg, str(wd))
        out[kind] = wd
    return out


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["fa_self", "fa_cross"])
def test_training_changes_only_the_link(runs, lm_workdir, analysis_dir, kind):
    from m4mjax.layers import AdapterParam, LoRAParam
    from m4mjax.run import checkpoint

    lm = _flat(checkpoint.restore_params(str(lm_workdir)))
    trained = _flat(checkpoint.restore_params(str(runs[kind])))
    cfg = _config(analysis_dir, **{"link.kind": kind})
    fresh = tasks.get_task("analysis").build(cfg, nnx.Rngs(cfg.seed))
    link_init = _flat(nnx.state(fresh, nnx.Any(LoRAParam, AdapterParam)).to_pure_dict())
    assert lm and set(lm) | set(link_init) == set(trained)  # foundation + link, nothing else
    for k, v in lm.items():  # every foundation weight is the LM's, bit for bit
        np.testing.assert_array_equal(trained[k], v, err_msg=k)
    changed = [k for k, v in link_init.items() if not np.array_equal(trained[k], v)]
    assert any("lora" in k for k in changed), changed
    assert kind != "fa_cross" or any("adapters" in k for k in changed), changed
    assert kind != "fa_self" or any("segment" in k for k in changed), changed
    rows = [json.loads(x) for x in (runs[kind] / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite([r["train/loss"] for r in rows if "train/loss" in r]).all()
    # config.json says the LoRA rank that was trained (the shape of every lora_b)
    rank = json.loads((runs[kind] / "config.json").read_text())["link"]["lora_rank"]
    assert {v.shape[1] for k, v in trained.items() if k.endswith("lora_b")} == {rank}  # [q|v, rank, heads, hd]


def test_a_run_config_is_resolved_before_it_is_written():
    """``--config.link.kind=fa_cross`` leaves lora_rank 0 (= the kind's official size); the config a run records
    must hold the size itself (train calls tasks.resolved before writing config.json)."""
    from experiments.sweep import load_experiment

    for kind, want in (("fa_self", (64, 128.0)), ("fa_cross", (16, 32.0))):
        cfg = load_experiment(str(REPO / "experiments/m4m/analysis.py")).get_config("small")
        cfg.link.kind = kind
        assert cfg.link.lora_rank == 0
        got = tasks.resolved(cfg)
        assert (got.link.lora_rank, got.link.lora_alpha) == want
        assert tasks.resolved(got).to_dict() == got.to_dict()


def test_a_linked_run_resumes_with_its_link_weights(runs, lm_workdir, analysis_dir, tmp_path, capsys):
    """A stopped FA run resumes: the restore target holds the link variables as well as the foundation's (it
    once held only the frozen ones, so every linked checkpoint read as 'unreadable'), restored bit for bit."""
    from m4mjax import steps, train
    from m4mjax.run import checkpoint
    from m4mjax.run import mesh as mesh_lib

    wd = tmp_path / "run"
    shutil.copytree(runs["fa_self"], wd)
    cfg = _config(analysis_dir, **{"link.kind": "fa_self", "init_from": str(lm_workdir), "train.steps": 3,
                                   "train.eval_every": 0})
    mesh = mesh_lib.make_mesh(cfg.mesh)
    with mesh_lib.use_mesh(mesh):
        s = steps.Setup(cfg, mesh)
        step, items, _ = checkpoint.Checkpointer(str(wd), 1).restore({"params": s.pure_abstract(),
                                                                      "opt": s.abstract_opt})
    saved, got = _flat(checkpoint.restore_params(str(runs["fa_self"]))), _flat(items["params"])
    assert step == 2 and set(got) == set(saved)
    assert any("lora" in k for k in got) and any("segment" in k for k in got)
    for k, v in saved.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    train.train(cfg, str(wd))
    assert "resumed from step 2" in capsys.readouterr().err
    rows = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]


def test_link_train_switch_selects_the_trainable_variables(analysis_dir):
    from m4mjax import steps
    from m4mjax.run import mesh as mesh_lib

    for train, want_all in (("link", False), ("full", True)):
        cfg = _config(analysis_dir, **{"link.kind": "fa_cross", "link.train": train})
        mesh = mesh_lib.make_mesh(cfg.mesh)
        with mesh_lib.use_mesh(mesh):
            s = steps.Setup(cfg, mesh, with_optimizer=False)
        names = list(_flat(s.abstract[0].to_pure_dict()))
        frozen = list(_flat(s.abstract[1].to_pure_dict()))
        assert all(("lora" in n) or n.startswith(("adapters", "mask_embed")) for n in names) != want_all
        assert any("global_decoder" in n and "lora" not in n for n in names) == want_all
        assert (len(frozen) == 0) == want_all


def test_every_table_row_builds_with_the_variables_it_trains(analysis_dir):
    """The sweep rows of analysis.py and generation.py (finetune.ROWS), applied as overrides to :tiny: the FA rows
    train only link variables, full / scratch / seq2seq train everything; only seq2seq changes the shapes."""
    from experiments.sweep import load_experiment

    for exp, arg in (("analysis", "tiny"), ("generation", "melody_to_chord,tiny")):
        mod = load_experiment(str(REPO / f"experiments/m4m/{exp}.py"))
        rows = mod.get_sweep(arg)
        assert [r["name"].rsplit("/", 1)[1].rsplit("_", 1)[-1] for r in rows][-1] == "seq2seq"
        for row in rows:
            cfg = mod.get_config(arg)
            for k, v in row.items():
                if k != "name":
                    sect, _, key = k.rpartition(".")
                    (cfg[sect] if sect else cfg)[key] = v
            task = tasks.get_task(cfg.task)
            model = nnx.eval_shape(lambda: task.build(cfg, nnx.Rngs(0)))
            n_train = sum(x.size for x in jax.tree.leaves(nnx.state(model, task.trainable(cfg))))
            n_all = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
            link_only = row["name"].endswith(("fa_self", "fa_cross"))
            assert (n_train < n_all / 2) == link_only, row
            assert hasattr(model, "encoder") == row["name"].endswith("seq2seq"), row


def test_resolve_link_follows_the_kind():
    from m4mjax import linked

    for kind, (r, a) in {"fa_self": (64, 128.0), "fa_cross": (16, 32.0)}.items():
        lk = linked.link_config(kind)
        lk.lora_rank, lk.lora_alpha = 0, 0.0
        got = linked.resolve_link(lk)
        assert (got.lora_rank, got.lora_alpha) == (r, a)
        assert linked.resolve_link(got) == got  # idempotent
    lk.lora_rank = 8
    assert linked.resolve_link(lk).lora_alpha == 16.0


# -------------------------------------------------------------------------------------- data plumbing
def test_music_and_labels_selectors_and_transposed_chord_track():
    a_min = [45, 48, 52, 57]  # A:min on the chord-track layout: bass A, tones C E A
    notes = np.array([(0, 0, 64, 3, 80, 0), (0, tok.DRUM, 36, 0, 80, 1)]
                     + [(0, 0, p, 5, 100, labels.CHORD_TRACK) for p in a_min]
                     + [(0, tok.DRUM, 35, 0, 100, labels.BEAT_TRACK)], np.int32)
    assert sorted(pipeline.select_stream(notes, "music")[:, tok.TRACK]) == [0, 1]
    assert sorted(pipeline.select_stream(notes, "labels")[:, tok.TRACK]) == [250] * 4 + [251]
    up = pipeline.shift_song(notes, 3)  # A:min + 3 = C:min: bass 36 (C), tones C Eb G = 48 51 55
    # storage order (instrument, pitch, ...): the chord notes in layout order, the piano's 64 -> 67, drums unmoved
    assert up[:, tok.PITCH].tolist() == [36, 48, 51, 55, 67, 35, 36]
    assert up[:, tok.TRACK].tolist() == [250] * 4 + [0, 251, 1]
    down = pipeline.shift_song(notes, -5)  # E:min: bass E 40, tones E G B = 52 55 59; piano 64 -> 59
    assert down[:, tok.PITCH].tolist() == [40, 52, 55, 59, 59, 35, 36]
    assert down[:, tok.TRACK].tolist() == [250, 250, 250, 0, 250, 251, 1]  # equal pitch: ordered by duration


# ---------------------------------------------------------------------------------------------- analyze
def _fake_labels(reference: np.ndarray) -> np.ndarray:
    """A stand-in analyser, frame by frame: a piano (program 0) chord struck -> that chord on the chord-track
    layout (bass = its lowest note's pitch class) for the same duration; a kick (36) -> a downbeat marker (35)."""
    B, F, L = reference.shape
    out = np.full((B, F, L), tok.PAD, np.int32)
    for b in range(B):
        ref = tok.tokens_to_notes(reference[b])
        piano = ref[ref[:, tok.INSTRUMENT] == 0]
        rows = []
        for f in np.unique(piano[:, tok.FRAME]):
            grp = piano[piano[:, tok.FRAME] == f]
            d = grp[0, tok.DURATION]
            rows.append((f, 0, labels.BASS_LOW + grp[:, tok.PITCH].min() % 12, d, 100, 0))
            rows += [(f, 0, labels.TONE_LOW + p % 12, d, 100, 0) for p in grp[:, tok.PITCH]]
        kicks = ref[(ref[:, tok.INSTRUMENT] == tok.DRUM) & (ref[:, tok.PITCH] == 36)]
        rows += [(f, tok.DRUM, labels.BEAT_DOWN, 0, 100, 0) for f in kicks[:, tok.FRAME]]
        out[b] = tok.notes_to_tokens(tok.sort_notes(np.array(rows, np.int32).reshape(-1, 6)), 0, F, L)
    return out


@pytest.fixture()
def fake_model(monkeypatch):
    """analyze's model call replaced by _fake_labels; the prompt must equal what was decided for its frames."""
    calls = []

    def sample(model, reference, prompt, n_frames, rng, temperature, decode="sample", open_mode="joint"):
        assert decode == "scored" and open_mode == "joint"  # analyze's default: chord rows scored whole
        full = _fake_labels(np.asarray(reference))
        f0 = 0 if prompt is None else prompt.shape[1]
        assert f0 + n_frames == reference.shape[1]
        if f0:
            np.testing.assert_array_equal(prompt, full[:, :f0])  # the stitched labels of those frames
        calls.append((reference.shape, f0))
        return full

    monkeypatch.setattr(windows, "sample_target", sample)
    return calls


def _write_piece(path: pathlib.Path) -> None:
    """6 bars of 3/4 (tpq 480): piano block chords C Am | F G C Am, a bass track and drums (kick on each
    downbeat, hi-hat on every beat); 120 qpm, then 96 qpm from bar 3 (frame 24)."""
    s = symusic.Score(480)
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.tempos.append(symusic.Tempo(0, qpm=120.0))
    s.tempos.append(symusic.Tempo(2880, qpm=96.0))
    piano, bass, drums = symusic.Track(program=0), symusic.Track(program=33), symusic.Track(is_drum=True)
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62), (60, 64, 67), (57, 60, 64)]
    for b, ch in enumerate(chords):
        for p in ch:
            piano.notes.append(symusic.Note(b * 1440, 1440, p, 80))
        for k in range(3):
            bass.notes.append(symusic.Note(b * 1440 + k * 480, 480, ch[0] - 24, 80))
            drums.notes.append(symusic.Note(b * 1440 + k * 480, 60, 36 if k == 0 else 42, 80))
    s.tracks.extend([piano, bass, drums])
    s.dump_midi(str(path))


# 3/4 bars of 12 frames: 1.5 s at 120 qpm, 1.875 s at 96 qpm (625000 us per quarter, exact in the file)
EXPECTED_LAB = ("0.000000\t1.500000\tC:maj\n1.500000\t3.000000\tA:min\n3.000000\t4.875000\tF:maj\n"
                "4.875000\t6.750000\tG:maj\n6.750000\t8.625000\tC:maj\n8.625000\t10.500000\tA:min\n")
EXPECTED_BEATS = "0.000000\n1.500000\n3.000000\n4.875000\n6.750000\n8.625000\n"


def test_window_starts_cover_any_length():
    assert windows.window_starts(10, 16, 4) == [0]
    assert windows.window_starts(72, 16, 4) == [0, 12, 24, 36, 48, 56]
    assert windows.window_starts(32, 16, 0) == [0, 16]


def test_analyze_writes_lab_beats_and_midi_on_the_tempo_map(runs, tmp_path, fake_model, capsys):
    _write_piece(tmp_path / "piece.mid")
    (tmp_path / "bad.mid").write_bytes(b"this is not a MIDI file")
    (tmp_path / "empty.mid").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        analyze.main(["--workdir", str(runs["fa_self"]), str(tmp_path / "bad.mid"), str(tmp_path / "piece.mid"),
                      str(tmp_path / "empty.mid"), "--out", str(out), "--context", "4"])
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert any("not a MIDI file" in ln and "bad.mid" in ln for ln in err) and any("empty.mid" in ln for ln in err)
    assert len(err) == 3  # one line per bad file + the summary
    assert sorted(p.name for p in out.iterdir()) == ["piece.beats", "piece.lab", "piece.mid"]
    assert (out / "piece.lab").read_text() == EXPECTED_LAB
    assert (out / "piece.beats").read_text() == EXPECTED_BEATS
    assert [f0 for _, f0 in fake_model] == [0, 4, 4, 4, 4, 4]  # windows 0 12 24 36 48 56, prompts after the first
    smf = read_smf(out / "piece.mid")  # the input's tempo map and metre kept (an independent SMF reader)
    assert smf.tempos == [(0, 500000), (2880, 625000)]  # 120 qpm, then 96 qpm
    assert smf.time_signatures == [(0, 3, 4)]
    downs = sorted(on for ch, p, on, off in smf.notes if ch == 9 and p == labels.BEAT_DOWN)
    assert downs == [0, 1440, 2880, 4320, 5760, 7200]
    score = symusic.Score(str(out / "piece.mid"))
    assert [t.name for t in score.tracks][-2:] == [windows.CHORD_NAME, windows.BEAT_NAME] and len(score.tracks) == 5
    bar3 = sorted(n.pitch for n in score.tracks[-2].notes if n.time == 2880)
    assert bar3 == [41, 48, 53, 57]  # F:maj on the chord-track layout: bass F, tones C F A


def test_analyze_with_the_real_tiny_model(runs, tmp_path):
    _write_piece(tmp_path / "piece.mid")
    for kind in ("fa_cross",):  # (fa_self decodes in test_evaluate_dispatches_to_the_analysis_evaluation)
        written, bad = analyze.analyze_files(str(runs[kind]), [str(tmp_path / "piece.mid")], str(tmp_path / kind),
                                             progress=False)
        assert not bad and len(written) == 3
        lab = labels.read_lab(tmp_path / kind / "piece.lab")  # parses as mir_eval labels
        assert lab and lab[0][0] == 0.0 and lab[-1][1] == pytest.approx(10.5)
        assert all(0 <= float(t) <= 10.5 for t in (tmp_path / kind / "piece.beats").read_text().split())


# ------------------------------------------------------------------------------------------- evaluation
def _truth_by_notes(data_dir):
    table = analysis_scores.read_labels(str(data_dir))
    out = {}
    for name, groups in analysis_scores.SETS.items():
        for sid, song, rec in analysis_scores.held_out_songs(str(data_dir), groups, table=table):
            out[song.notes.tobytes()] = rec
    return out


def test_evaluation_scores_truth_as_one_and_a_known_fraction(runs, analysis_dir, monkeypatch):
    truth = _truth_by_notes(analysis_dir)
    assert len(truth) == 3 + 4  # synth test songs 0, 10, 20 and the four 'romantext' songs

    def perfect(model, songs, frames, **kw):
        for s in songs:
            rec = truth[s.notes.tobytes()]
            yield windows.Result([tuple(x) for x in rec["segments"]], np.array(rec["downbeats"]), tok.empty_notes())

    monkeypatch.setattr(analysis_scores, "label_songs", perfect)
    res = analysis_scores.evaluate(str(runs["fa_self"]))
    for name, n_songs in (("synth_test", 3), ("romantext", 4)):
        r = res["sets"][name]
        assert r["songs"] == n_songs
        assert all(r[m] == 1.0 for m in ("root", "thirds", "majmin", "mirex", "sevenths", "downbeat_f")), r
    assert json.loads((runs["fa_self"] / "eval.json").read_text())["sets"] == res["sets"]

    # every odd-numbered segment estimated 'X' (never correct), every other downbeat dropped
    def half(model, songs, frames, **kw):
        for s in songs:
            rec = truth[s.notes.tobytes()]
            segs = [(a, b, lab if i % 2 == 0 else "X") for i, (a, b, lab) in enumerate(rec["segments"])]
            yield windows.Result(segs, np.array(rec["downbeats"][::2]), tok.empty_notes())

    monkeypatch.setattr(analysis_scores, "label_songs", half)
    res = analysis_scores.evaluate(str(runs["fa_self"]))
    for name, groups in analysis_scores.SETS.items():
        recs = [r for r in truth.values() if r["group"] in groups]
        dur = lambda keep: sum(b - a for r in recs for i, (a, b, _) in enumerate(r["segments_s"]) if keep(i))  # noqa
        want = dur(lambda i: i % 2 == 0) / dur(lambda i: True)
        n_ref = sum(len(r["downbeats"]) for r in recs)
        n_est = sum(len(r["downbeats"][::2]) for r in recs)
        want_f = 2 * n_est / (n_ref + n_est)  # every estimated downbeat is a hit
        for m in ("root", "thirds", "majmin", "mirex", "sevenths"):
            assert res["sets"][name][m] == pytest.approx(want, abs=1e-4), (name, m)
        assert res["sets"][name]["downbeat_f"] == pytest.approx(want_f, abs=1e-4)


def test_evaluate_dispatches_to_the_analysis_evaluation(runs):
    from m4mjax import evaluate

    res = evaluate.evaluate(str(runs["fa_self"]), max_batches=1)  # the real tiny model, 1 batch of songs
    assert set(res["sets"]) == {"synth_test", "romantext"}
    for r in res["sets"].values():
        assert all(0.0 <= r[m] <= 1.0 for m in ("root", "majmin", "sevenths", "downbeat_f"))


def test_baselines_score_the_template_matcher_on_clean_triads(analysis_dir, tmp_path):
    """The fixture's music is one root-position triad per bar: the per-bar template matcher is exact."""
    res = analysis_scores.baselines(str(analysis_dir))
    for name in analysis_scores.SETS:
        assert res["sets"][name]["template_bar"]["majmin"] == 1.0
        assert set(res["sets"][name]) == {"template_bar", "template_beat", "chorder"}
    # every row names the songs' labels it was scored on: the same set gives the same fingerprint in every row,
    # another set another one
    fps = {name: {r["labels_sha1"] for r in res["sets"][name].values()} for name in analysis_scores.SETS}
    assert all(len(f) == 1 for f in fps.values()) and fps["synth_test"] != fps["romantext"]


def test_labels_fingerprint_changes_with_any_label_boundary_length_or_order():
    a = {"n_frames": 32, "segments": [[0, 16, "C:maj"], [16, 32, "A:min"]]}
    b = {"n_frames": 16, "segments": [[0, 16, "G:7"]]}
    fp = analysis_scores.labels_fingerprint
    assert fp([a, b]) == fp([dict(a), dict(b)]) and len(fp([a, b])) == 12
    variants = [[dict(a, segments=[[0, 16, "C:maj"], [16, 32, "A:min7"]]), b],
                [dict(a, segments=[[0, 8, "C:maj"], [8, 32, "A:min"]]), b],
                [dict(a, n_frames=33), b], [b, a], [a]]
    assert len({fp([a, b])} | {fp(v) for v in variants}) == 1 + len(variants)


# ---------------------------------------------------------------------------------------- shipped weights
def test_an_exported_run_is_read_like_the_run_and_a_mismatch_is_one_line(runs, tmp_path, fake_model, monkeypatch,
                                                                         capsys):
    """The shipped folder loads the run's exact weights (below), so analyze's model call is the fake one here: the
    real tiny model decodes in test_analyze_with_the_real_tiny_model and test_evaluate_dispatches_to_the_analysis_
    evaluation; what this pins is that analyze without --workdir reads the shipped folder (its config, weights)."""
    from m4mjax import export
    from m4mjax.run import checkpoint, cli

    ship = tmp_path / "pretrained" / "analysis"
    rec = export.export(str(runs["fa_self"]), str(ship))
    assert sorted(p.name for p in ship.iterdir()) == ["config.json", "params.npz", "source.json"]
    assert rec["step"] == checkpoint.latest_step(str(runs["fa_self"])) and rec["task"] == "analysis"
    m_run, _ = run_dir.load_run(str(runs["fa_self"]))
    m_ship, _ = run_dir.load_run(str(ship))
    a, b = nnx.state(m_run, nnx.Param).to_pure_dict(), nnx.state(m_ship, nnx.Param).to_pure_dict()
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    # analyze with no --workdir reads the shipped folder: its weights load, its config sets the windows (16 frames,
    # context 4: prompts after the first) and the labels land on the input's tempo map
    _write_piece(tmp_path / "piece.mid")
    monkeypatch.setattr(analyze, "SHIPPED", ship)
    loaded, load_run = [], analyze.load_run
    monkeypatch.setattr(analyze, "load_run", lambda w, **kw: loaded.append(w) or load_run(w, **kw))
    analyze.main([str(tmp_path / "piece.mid"), f"--out={tmp_path / 'out'}"])
    assert loaded == [str(ship)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["piece.beats", "piece.lab", "piece.mid"]
    assert [f0 for _, f0 in fake_model] == [0, 4, 4, 4, 4, 4]
    assert (tmp_path / "out" / "piece.lab").read_text() == EXPECTED_LAB
    # a file whose shapes are not the model's is refused, naming a parameter
    with np.load(ship / "params.npz") as z:
        flat = {k: z[k] for k in z.files}
    key = sorted(flat)[0]
    flat[key] = np.zeros(flat[key].shape + (2,), np.float32)
    np.savez(ship / "params.npz", **flat)
    with pytest.raises(cli.UserError, match="weights do not match the model.*" + key.split("/")[0]):
        run_dir.load_run(str(ship))
    monkeypatch.setattr(analyze, "SHIPPED", tmp_path / "nowhere")
    with pytest.raises(SystemExit):
        analyze.main([str(tmp_path / "piece.mid"), f"--out={tmp_path / 'out2'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no shipped analyser" in err[0]


def test_label_prompt_gives_the_true_labels_of_the_first_frames_and_keeps_them(monkeypatch):
    """The official protocol's prompt: the first window's target prompt is the song's own first P frames of true
    labels, and they stay in the result; later windows get the usual context prompt."""
    L = tok.MAX_FRAME_TOKENS
    chords = labels.chord_track([(0, 16, "C:maj"), (16, 40, "A:min")], 40, [0, 16, 32])
    song = windows.Song(np.array([(0, 0, 60, 3, 80, 0)], np.int32), 40, chords)
    seen = []

    def sample(model, reference, prompt, n_frames, rng, temperature, decode="sample", open_mode="joint"):
        seen.append((None if prompt is None else np.asarray(prompt).copy(), n_frames, decode, temperature))
        f0 = 0 if prompt is None else prompt.shape[1]
        out = np.full((reference.shape[0], f0 + n_frames, L), tok.PAD, np.int32)
        out[:, :f0] = prompt if f0 else out[:, :0]
        out[:, f0:, 0] = tok.EOS  # nothing decided beyond the prompt
        return out

    monkeypatch.setattr(windows, "sample_target", sample)
    model = type("M", (), {"cfg": ml_collections.ConfigDict({"max_frame_tokens": L})})()
    res = next(windows.label_songs(model, [song], 16, context=4, batch_size=1, temperature=1.0, decode="sample",
                                   label_prompt=6))
    want = tok.notes_to_tokens(chords, 0, 6, L, song_frames=40)
    np.testing.assert_array_equal(seen[0][0][0], want)
    assert seen[0][1] == 10 and seen[0][2:] == ("sample", 1.0)
    assert [s[1] for s in seen[1:]] == [12, 12]  # windows 12 and 24: 4 context frames each
    assert res.segments[0] == (0, 16, "C:maj") and res.segments[1][2] == "N"


def test_official_protocol_averages_eight_sampled_runs_with_a_true_label_prompt(runs, analysis_dir, monkeypatch):
    truth = _truth_by_notes(analysis_dir)
    calls = []

    def alternate(model, songs, frames, **kw):  # even seeds: the truth; odd seeds: every chord 'X'
        calls.append(kw)
        for s in songs:
            assert s.labels is not None and len(s.labels)
            rec = truth[s.notes.tobytes()]
            segs = [(a, b, lab if kw.get("seed", 0) % 2 == 0 else "X") for a, b, lab in rec["segments"]]
            yield windows.Result(segs, np.array(rec["downbeats"]), tok.empty_notes())

    real_load = analysis_scores.load_run

    def load_with_ensemble(*a, **kw):  # the run's analysis default is a transposition ensemble (as the shipped one)
        model, cfg = real_load(*a, **kw)
        cfg.analyze.transpose = [0, 4, -4]
        return model, cfg

    monkeypatch.setattr(analysis_scores, "label_songs", alternate)
    monkeypatch.setattr(analysis_scores, "load_run", load_with_ensemble)
    res = analysis_scores.evaluate(str(runs["fa_self"]), sets=["synth_test"], decode="official", out_name="off.json")
    assert [c["seed"] for c in calls] == list(range(8))
    assert all(c["label_prompt"] == 16 and c["decode"] == "sample" and c["temperature"] == 1.0 for c in calls)
    assert all(tuple(c["transpose"]) == (0,) for c in calls)  # the official protocol: no ensemble by default
    assert res["transpose"] == [0]
    r = res["sets"]["synth_test"]
    assert r["majmin"] == pytest.approx(0.5) and r["downbeat_f"] == pytest.approx(1.0) and r["songs"] == 3
    assert res["decode"] == "official" and (runs["fa_self"] / "off.json").is_file()
    calls.clear()  # other decodings keep the run's ensemble as their default
    res = analysis_scores.evaluate(str(runs["fa_self"]), sets=["synth_test"], decode="greedy", out_name="g.json")
    assert tuple(calls[0]["transpose"]) == (0, 4, -4) and res["transpose"] == [0, 4, -4]
