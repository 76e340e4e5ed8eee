"""prepare (bad files reported, resume), the grain pipeline (shapes, state restore), per-process sharding."""
import json

import grain
import ml_collections
import numpy as np
import pytest

from m4m_fixtures import write_song as _write_song
from m4mjax import prepare as prep
from m4mjax import tokenizer as tok
from m4mjax.datasets import convert, pipeline, records, sources
from m4mjax.run import data as run_data


@pytest.fixture(scope="module")
def midi_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("midi")
    rng = np.random.default_rng(0)
    for i in range(12):
        _write_song(d / f"a{i // 6}" / f"song{i:02d}.mid", rng, n_frames=120 + 10 * i)
    (d / "a0" / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x00\x60MTrk\x00\x00\x10\x00")
    (d / "a1" / "notes.txt").write_text("not a midi file, ignored by suffix")
    return d


def test_prepare_reports_bad_and_resumes(midi_dir, tmp_path):
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in midi_dir.rglob("*") if p.is_file()}
    rep = prep.prepare(midi_dir, out, workers=1, shard_size=4, progress=False, max_chunks=1)  # "interrupted"
    assert rep["items"] == 13 and rep["items_done"] == 4
    first = (out / "shards" / "00000.json").stat().st_mtime_ns
    rep = prep.prepare(midi_dir, out, workers=1, shard_size=4, progress=False)
    assert rep["items_done"] == 13 and (out / "shards" / "00000.json").stat().st_mtime_ns == first  # not redone
    assert [b["key"] for b in rep["bad"]] == ["a0/corrupt.mid"] and "truncated" in rep["bad"][0]["error"]
    assert json.loads((out / "report.json").read_text())["bad_items"] == 1
    assert sum(s["songs"] for s in rep["splits"].values()) == 12
    assert {p: p.read_bytes() for p in midi_dir.rglob("*") if p.is_file()} == before  # input untouched
    src = convert.ShardSource(out, "train")
    song = src[0]
    assert song["notes"].dtype == np.int32 and song["notes"].shape[1] == 6 and len(src) == len(src.lengths)
    notes, n = tok.midi_to_notes(midi_dir / song["id"])
    assert np.array_equal(notes, song["notes"]) and n == song["n_frames"]


def test_prepare_rejects_output_inside_input(midi_dir):
    with pytest.raises(ValueError, match="must not be inside"):
        prep.prepare(midi_dir, midi_dir / "out", workers=1, progress=False)


def _cfg(out, **kw):
    base = dict(name="prepared", dir=str(out), frames=64, batch_size=4, max_frame_tokens=tok.MAX_FRAME_TOKENS,
                pitch_shift=(-5, 6), drop_short=True, reference="drums", target="others", num_threads=1)
    return ml_collections.ConfigDict({**base, **kw})


@pytest.fixture(scope="module")
def prepared(midi_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    prep.prepare(midi_dir, out, workers=1, shard_size=5, progress=False)
    return out


def test_pipeline_shapes_shift_and_resume(prepared):
    cfg = _cfg(prepared)
    it = pipeline.make_dataset(cfg, "train", seed=1)
    batch = next(it)
    assert batch["tokens"].shape == (4, 64, tok.MAX_FRAME_TOKENS) and batch["tokens"].dtype == np.int32
    assert batch["reference"].shape == batch["target"].shape == batch["tokens"].shape
    ref = batch["reference"]
    drum_ins = ref[:, :, 0::2][ref[:, :, 0::2] < 128]
    assert (drum_ins == tok.DRUM).all()  # drums stream holds only drums
    pd = ref[:, :, 1::2][(ref[:, :, 1::2] >= 128) & (ref[:, :, 1::2] < tok.SOS)]
    assert set((pd % 128).tolist()) == {42}  # drums never transposed
    state = run_data.get_state(it)
    nxt = [next(it)["tokens"] for _ in range(2)]
    again = run_data.set_state(pipeline.make_dataset(cfg, "train", seed=1), state)
    for want in nxt:
        np.testing.assert_array_equal(next(again)["tokens"], want)
    other = next(pipeline.make_dataset(cfg, "train", seed=2))["tokens"]
    assert not np.array_equal(other, batch["tokens"])


def test_eval_windows_fixed_and_padded(prepared):
    cfg = _cfg(prepared, batch_size=3, reference="", target="")
    batches = list(pipeline.make_dataset(cfg, "test", seed=0))
    n = sum(int(b["mask"].sum()) for b in batches)
    assert n == pipeline.count_eval_windows(cfg, "test") and n > 0
    assert all(b["tokens"].shape == (3, 64, tok.MAX_FRAME_TOKENS) for b in batches)
    last = batches[-1]
    assert (last["tokens"][~last["mask"]] == tok.PAD).all()
    again = list(pipeline.make_dataset(cfg, "test", seed=5))
    np.testing.assert_array_equal(again[0]["tokens"], batches[0]["tokens"])  # no randomness in eval


def test_short_songs_error_is_clear(prepared):
    with pytest.raises(ValueError, match="no song has >= data.frames=100000"):
        pipeline.make_dataset(_cfg(prepared, frames=100000), "train", seed=0)


def test_per_process_sharding_is_disjoint():
    n, count = 103, 4
    for drop in (True, False):
        parts = [run_data.shard_indices(n, grain.sharding.ShardOptions(k, count, drop_remainder=drop))
                 for k in range(count)]
        flat = np.concatenate(parts)
        assert len(set(flat.tolist())) == len(flat)
        assert len(flat) == (n // count * count if drop else n)
    ds = [list(run_data.sharded_dataset(np.arange(50, 60), grain.sharding.ShardOptions(k, 2))) for k in range(2)]
    assert sorted(ds[0] + ds[1]) == list(range(50, 60)) and not set(ds[0]) & set(ds[1])


def test_global_batch_on_mesh():
    import jax

    from m4mjax.run import mesh as mesh_lib

    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": -1, "tensor": 1})
    arr = run_data.global_batch(mesh, {"tokens": np.zeros((8, 4, 3), np.int32)})["tokens"]
    assert arr.shape == (8, 4, 3) and len(arr.sharding.device_set) == len(jax.devices())


def test_record_format_and_wad_reader(tmp_path):
    notes = np.array([[70000, 127, 35, 0, 90, 300]], np.int32)
    song = records.decode_song(records.encode_song({"id": "x", "group": "g", "notes": notes, "n_frames": 70001}))
    assert song["notes"].tolist() == [[70000, 127, 35, 0, 90, 255]] and song["id"] == "x"  # track clipped
    midi = tmp_path / "m.mid"
    _write_song(midi, np.random.default_rng(1), 16)
    blob = midi.read_bytes()
    lump_off = 12
    wad = b"PWAD" + np.array([1, lump_off + len(blob)], "<i4").tobytes() + blob
    wad += np.array([lump_off, len(blob)], "<i4").tobytes() + b"D_TEST\0\0"
    (tmp_path / "t.wad").write_bytes(wad)
    items = sources.wad_midi_items(tmp_path / "t.wad", "g", "t", set())
    assert [it["key"] for it in items] == ["t:D_TEST"]
    assert len(sources.load_item(items[0])[0]["notes"]) == 16
    with pytest.raises(ValueError, match="not a WAD"):
        sources.wad_lumps(midi)


def test_data_name_may_be_the_prepared_folder(prepared, tmp_path, monkeypatch):
    """README: `prepare --out=data/mine`, then `--config.data.name=data/mine` (a path, relative to the cwd)."""
    want = [b["tokens"] for b in pipeline.make_dataset(_cfg(prepared, reference="", target=""), "test", seed=0)]
    monkeypatch.chdir(prepared.parent)
    cfg = _cfg(prepared, name=prepared.name, dir="data/tfds", reference="", target="")  # data.dir left default
    got = [b["tokens"] for b in pipeline.make_dataset(cfg, "test", seed=0)]
    assert len(got) == len(want) > 0 and all(np.array_equal(a, b) for a, b in zip(got, want))
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="plain.*not one written by `python -m m4mjax.prepare`"):
        pipeline.make_dataset(_cfg(prepared, name=str(tmp_path / "plain")), "test", seed=0)
    with pytest.raises(ValueError, match="nope.*no such folder"):
        pipeline.make_dataset(_cfg(prepared, name=str(tmp_path / "nope")), "test", seed=0)



def test_features_built_once_under_a_lock():
    """The TFDS FeaturesDict is built once (decode_song rebuilt it per record) and under the lock that keeps
    grain's parallel first decodes from deadlocking in TFDS's lazy imports (seen: a run stuck before step 1)."""
    first = records.decode_song(records.encode_song({"id": "s", "group": "g", "notes": np.zeros((2, 6), int),
                                                     "n_frames": 3}))
    assert first["n_frames"] == 3 and records.FEATURES is records._features() is records._features()
    assert not records._FEATURES_LOCK.locked()


def test_train_groups_select_the_training_mix_by_id_prefix():
    """data.train_groups keeps the songs whose id starts with one of the prefixes (the chord data's groups: synth/,
    auto/, romantext/); () keeps all; a prefix matching nothing, or a source without ids, is an error."""
    from m4mjax.datasets.pipeline import group_mask

    ids = ["synth/mma/0/00001", "auto/blupi/music000.mid", "romantext/bach/bwv1", "synth/mma/3/00420", "auto/x"]
    assert group_mask(ids, 5, ()).tolist() == [True] * 5
    assert group_mask(ids, 5, ("synth/",)).tolist() == [True, False, False, True, False]
    assert group_mask(ids, 5, ("synth/", "auto/")).tolist() == [True, True, False, True, True]
    with pytest.raises(ValueError, match="no training song"):
        group_mask(ids, 5, ("mma/",))  # a prefix, not a substring
    with pytest.raises(ValueError, match="no ids"):
        group_mask(None, 5, ("synth/",))


def test_train_groups_reach_the_training_windows(prepared):
    """Only the selected songs' windows come out of the training iterator (the fixture's ids are a0/songNN.mid and
    a1/songNN.mid)."""
    from m4mjax.datasets import convert, pipeline

    cfg = ml_collections.ConfigDict(dict(name="prepared", dir=str(prepared), frames=16, max_frame_tokens=9,
                                         batch_size=4, train_groups=("a1/",), drop_short=True))
    src = convert.ShardSource(str(prepared), "train")
    wanted = {i for i, sid in enumerate(src.ids) if sid.startswith("a1/")}
    assert wanted and len(wanted) < len(src.ids)
    seen = set()
    orig = convert.ShardSource.__getitem__

    def spy(self, i):
        seen.add(int(i))
        return orig(self, i)

    import unittest.mock as mock

    with mock.patch.object(convert.ShardSource, "__getitem__", spy):
        it = pipeline.make_dataset(cfg, "train", seed=0)
        for _ in range(6):
            next(it)
    assert seen and seen <= wanted


def test_song_start_frac_starts_windows_at_a_songs_first_frame(prepared):
    """data.song_start_frac: that share of training windows starts at frame 0 of its song (inference's first
    window); 0 keeps the uniform starts. Expected windows written here from the song records."""
    src = convert.ShardSource(str(prepared), "train")
    firsts = {tok.notes_to_tokens(src[i]["notes"], 0, 64, tok.MAX_FRAME_TOKENS, song_frames=int(src[i]["n_frames"])
                                  ).tobytes() for i in range(len(src))}

    def windows(frac):
        it = pipeline.make_dataset(_cfg(prepared, reference="", target="", pitch_shift=(0, 0), song_start_frac=frac),
                                   "train", seed=3)
        return [w.tobytes() for _ in range(3) for w in next(it)["tokens"]]

    assert all(w in firsts for w in windows(1.0))
    assert sum(w in firsts for w in windows(0.0)) <= 2  # uniform starts over 57-167 choices: frame 0 is rare
