"""m4mjax.prepare keeps its promise: any file name, incremental re-runs that say what changed, every skipped
path reported by name, one-line user errors (exit 2, nothing created), and the record bytes TFDS reads."""
import json
import os
import struct

import numpy as np
import pytest

from m4m_fixtures import write_song
from m4mjax import prepare as prep
from m4mjax import tokenizer as tok
from m4mjax.datasets import convert, records


def _songs(out):
    """song id -> notes over every split of a prepared folder."""
    got = {}
    for split in records.SPLITS:
        try:
            src = convert.ShardSource(out, split)
        except ValueError:
            continue
        got.update({src.ids[i]: src[i]["notes"] for i in range(len(src))})
    return got


def _run(capsys, *argv):
    """Run the CLI in-process; returns (exit status, stderr lines)."""
    try:
        rc = prep.main(list(argv) + ["--no_progress"])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def test_rerun_on_changed_folder(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(0)
    for i in range(5):  # shard_size 4: the last chunk holds one file, the case where new files were lost
        write_song(src / f"s{i}.mid", rng, 40 + 8 * i)
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1", "--shard_size=4")
    assert rc == 0 and err[0] == "m4mjax.prepare: +5 new, -0 removed, 0 unchanged"
    assert sorted(_songs(out)) == [f"s{i}.mid" for i in range(5)]

    write_song(src / "s5.mid", rng, 64)
    write_song(src / "a_first.mid", rng, 72)  # sorts before every old file: old indices must not move
    (src / "s2.mid").unlink()
    write_song(src / "s3.mid", rng, 24)  # edited in place (different length)
    os.utime(src / "s3.mid", ns=(1, 1))
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1", "--shard_size=4")
    assert rc == 0 and err[0] == "m4mjax.prepare: +2 new, -1 removed, 3 unchanged, 1 changed"
    songs = _songs(out)
    assert sorted(songs) == ["a_first.mid", "s0.mid", "s1.mid", "s3.mid", "s4.mid", "s5.mid"]
    for name in songs:
        np.testing.assert_array_equal(songs[name], tok.midi_to_notes(src / name)[0])
    rep = json.loads((out / "report.json").read_text())
    assert rep["bad"] == [] and rep["items"] == 6 and rep["songs"] == 6
    plan = json.loads((out / "plan.json").read_text())
    index = {it["key"]: it["index"] for c in plan["chunks"] for it in c["items"]}
    assert index == {"s0.mid": 0, "s1.mid": 1, "s3.mid": 3, "s4.mid": 4, "a_first.mid": 5, "s5.mid": 6}

    (src / "s0.mid").write_bytes(b"MThd")  # now bad: its error appears; once removed, the error goes too
    _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1")
    assert [b["key"] for b in json.loads((out / "report.json").read_text())["bad"]] == ["s0.mid"]
    (src / "s0.mid").unlink()
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1")
    assert rc == 0 and err == ["m4mjax.prepare: +0 new, -1 removed, 5 unchanged"]
    assert json.loads((out / "report.json").read_text())["bad"] == [] and "s0.mid" not in _songs(out)


def test_any_file_name_and_every_skipped_path_reported(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(1)
    latin1 = os.fsdecode(b"caf\xe9.mid")  # not UTF-8: only surrogate-escaped str can name it
    write_song(src / latin1, rng, 48)
    write_song(src / "x.mid" / "inner.mid", rng, 32)  # a directory named like a MIDI file (its files count)
    (src / "empty.mid").write_bytes(b"")
    os.symlink(tmp_path / "missing", src / "dangling.mid")
    tpq, trk = 96, b"\x00\x90\x3c\x40\xff\xff\xff\x7f\x80\x3c\x40\x00\xff\x2f\x00"  # a note 2^28-1 ticks
    (src / "huge.mid").write_bytes(b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk"
                                   + struct.pack(">I", len(trk)) + trk)
    for i in range(3):
        write_song(src / f"ok{i}.mid", rng, 40)
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=2", "--shard_size=2")
    assert rc == 0, err
    rep = json.loads((out / "report.json").read_text())
    bad = {b["key"]: b["error"] for b in rep["bad"]}
    assert sorted(bad) == ["dangling.mid", "empty.mid", "huge.mid", "x.mid"]
    assert all(v.startswith(k + ": ") for k, v in bad.items())  # every message names its file
    assert "directory" in bad["x.mid"] and "empty" in bad["empty.mid"] and "cannot read" in bad["dangling.mid"]
    assert "frame 0 lasting 11184811 frames" in bad["huge.mid"]  # (2^28 - 1) ticks / 96 per quarter * 4
    songs = _songs(out)
    assert sorted(songs) == ["caf\\xe9.mid", "ok0.mid", "ok1.mid", "ok2.mid", "x.mid/inner.mid"]
    np.testing.assert_array_equal(songs["caf\\xe9.mid"], tok.midi_to_notes(src / latin1)[0])
    assert err[0] == "m4mjax.prepare: +7 new, -0 removed, 0 unchanged" and "skipped 4 paths" in err[1]  # 2 bad files


def _one_line_error(rc, err, *words):
    assert rc == 2 and len(err) == 1 and err[0].startswith("m4mjax.prepare: error: "), err
    assert all(w in err[0] for w in words), err


def test_folder_of_only_bad_files_fails(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.mid").write_bytes(b"")
    (src / "b.mid").write_bytes(b"not midi at all")
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={tmp_path / 'out'}", "--workers=1")
    _one_line_error(rc, err, "no song converted", "2 paths skipped", "a.mid: empty file")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["bad_items"] == 2  # the reasons stay


@pytest.mark.parametrize("case", ["no_midi_dir_flag", "missing_dir", "out_inside", "out_is_file", "out_under_file",
                                  "workers_0", "shard_size_bad", "no_midi", "foreign_out", "duplicates_bad"])
def test_user_errors_one_line_nothing_created(tmp_path, capsys, case):
    src, out = tmp_path / "in", tmp_path / "out"
    write_song(src / "a.mid", np.random.default_rng(2), 32)
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("someone else's folder")
    (tmp_path / "empty").mkdir()
    args, words = {
        "no_midi_dir_flag": ([f"--out={out}"], ["--midi_dir"]),
        "missing_dir": ([f"--midi_dir={tmp_path / 'nope'}", f"--out={out}"], ["no such directory", "nope"]),
        "out_inside": ([f"--midi_dir={src}", f"--out={src / 'o'}"], ["inside --midi_dir"]),
        "out_is_file": ([f"--midi_dir={src}", f"--out={tmp_path / 'file'}"], ["not a directory", "--out="]),
        "out_under_file": ([f"--midi_dir={src}", f"--out={tmp_path / 'file' / 'o'}"], ["cannot write", "--out="]),
        "workers_0": ([f"--midi_dir={src}", f"--out={out}", "--workers=0"], ["--workers=0"]),
        "shard_size_bad": ([f"--midi_dir={src}", f"--out={out}", "--shard_size=x"], ["--shard_size"]),
        "no_midi": ([f"--midi_dir={tmp_path / 'empty'}", f"--out={out}"], ["no MIDI files", "empty"]),
        "foreign_out": ([f"--midi_dir={src}", f"--out={tmp_path / 'other'}"], ["did not write", "other"]),
        "duplicates_bad": ([f"--midi_dir={src}", f"--out={out}", "--duplicates=first"],
                           ["--duplicates=first", "must be longest or keep"]),
    }[case]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc, err = _run(capsys, *args)
    _one_line_error(rc, err, *words)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created


def test_bug_in_loader_is_reported_and_retried(tmp_path):
    items = [{"key": k, "kind": "test"} for k in ("a", "b", "c")]
    song = {"group": "g", "notes": np.array([[0, 1, 60, 3, 90, 0]], np.int32), "n_frames": 4}

    def buggy(item):
        if item["key"] == "b":
            raise KeyError("oops")
        return [{**song, "id": item["key"]}]

    rep = convert.convert(items, buggy, tmp_path, shard_size=2, progress=False)
    assert rep["bad"] == [{"key": "b", "error": "b: KeyError: 'oops'", "retry": True}] and rep["songs"] == 2
    rep = convert.convert(items, lambda it: [{**song, "id": it["key"]}], tmp_path, shard_size=2, progress=False)
    assert rep["bad"] == [] and rep["songs"] == 3 and rep["changes"]["unchanged"] == 3


def test_layout2_plan_is_migrated_without_redoing_chunks(tmp_path):
    """Conversion folders written before plans had chunks (the embedded-corpus cache in data/) stay valid."""
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(3)
    for i in range(5):
        write_song(src / f"s{i}.mid", rng, 32)
    items, _ = prep.find_midi(src)
    items = [{k: v for k, v in it.items() if k not in ("size", "mtime_ns")} for it in items]  # no stamps then
    convert.convert(items, prep.LOADER, out, shard_size=2, progress=False)
    old_items = [it for c in json.loads((out / "plan.json").read_text())["chunks"] for it in c["items"]]
    records.write_json(out / "plan.json", {"format": records.FORMAT_VERSION, "shard_size": 2,
                                           "items": [{k: v for k, v in it.items() if k != "index"} for it in old_items]})
    for p in (out / "shards").glob("*.json"):
        m = json.loads(p.read_text())
        del m["digest"]
        records.write_json(p, m)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.array_record")}
    rep = convert.convert(items, prep.LOADER, out, shard_size=2, progress=False)
    assert rep["songs"] == 5 and rep["changes"] == {"new": 0, "removed": 0, "changed": 0, "unchanged": 5}
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.array_record")} == stamps  # not redone


def test_record_bytes_are_the_tfds_example():
    """encode_song writes by hand the message FEATURES.serialize_example builds (the TFDS reader's format)."""
    from tensorflow_datasets.proto import tf_example_pb2

    rng = np.random.default_rng(4)
    for notes in (np.zeros((0, 6), np.int32), rng.integers(0, 300, (700, 6)).astype(np.int32)):
        song = {"id": "caf\\xe9/é.mid", "group": "g", "notes": notes, "n_frames": 70_000}
        mine = tf_example_pb2.Example.FromString(records.encode_song(song))
        ref = tf_example_pb2.Example.FromString(records.FEATURES.serialize_example(records.to_example(song)))
        assert mine == ref
        back = records.decode_song(records.encode_song(song))
        assert back["id"] == song["id"] and back["n_frames"] == 70_000
        np.testing.assert_array_equal(back["notes"], np.concatenate([notes[:, :1], np.clip(notes[:, 1:], 0, 255)], 1))


def test_duplicates_keep_stores_every_duplicate_and_is_recorded(tmp_path, capsys):
    """--duplicates=keep (the official la_cp16_v2) stores both notes of a doubled part and records the choice;
    a re-run with the other value converts the file again; a run whose data.duplicates disagrees stops."""
    import ml_collections
    import symusic

    from m4mjax.datasets import pipeline
    from m4mjax.run import cli

    assert prep.DUPLICATES == tok.DUPLICATES
    src, out = tmp_path / "in", tmp_path / "out"
    score = symusic.Score(96)  # 24 ticks per frame; program 3 plays pitch 60 at frame 0 on two tracks
    for length, vel in ((2, 70), (8, 90)):
        track = symusic.Track(program=3)
        track.notes.append(symusic.Note(0, length * 24, 60, vel))
        score.tracks.append(track)
    src.mkdir()
    score.dump_midi(str(src / "doubled.mid"))
    both = [[0, 3, 60, 1, 70, 0], [0, 3, 60, 5, 90, 1]]  # 2 frames = class 1, 8 frames = class 5
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1", "--duplicates=keep")
    assert rc == 0 and err == ["m4mjax.prepare: +1 new, -0 removed, 0 unchanged"]
    assert _songs(out)["doubled.mid"].tolist() == both
    assert json.loads((out / "plan.json").read_text())["settings"] == {"duplicates": "keep"}
    assert json.loads((out / "report.json").read_text())["settings"] == {"duplicates": "keep"}
    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1", "--duplicates=keep")
    assert rc == 0 and err == ["m4mjax.prepare: +0 new, -0 removed, 1 unchanged"]  # same setting: nothing redone

    cfg = ml_collections.ConfigDict(dict(name=str(out), dir="", duplicates="keep"))
    src_, lengths = pipeline.open_split(cfg, "test")  # file index 0: the test split
    assert src_[0]["notes"].tolist() == both and lengths.tolist() == [8]
    cfg.duplicates = "longest"
    with pytest.raises(cli.UserError) as e:
        pipeline.open_split(cfg, "test")
    msg = str(e.value)
    assert "\n" not in msg and "--duplicates=keep" in msg and "data.duplicates='longest'" in msg, msg
    cfg.duplicates = "newest"
    with pytest.raises(cli.UserError, match="data.duplicates='newest'"):
        pipeline.open_split(cfg, "test")

    rc, err = _run(capsys, f"--midi_dir={src}", f"--out={out}", "--workers=1")  # back to the default, 'longest'
    assert rc == 0 and err == ["m4mjax.prepare: +0 new, -0 removed, 0 unchanged, 1 changed"]
    assert _songs(out)["doubled.mid"].tolist() == [[0, 3, 60, 5, 90, 1]]  # the longest only
    assert json.loads((out / "plan.json").read_text())["settings"] == {"duplicates": "longest"}
    cfg.duplicates = "longest"
    assert pipeline.open_split(cfg, "test")[0][0]["notes"].tolist() == [[0, 3, 60, 5, 90, 1]]
    plan = json.loads((out / "plan.json").read_text())
    del plan["settings"]  # a folder prepared before the setting was recorded: nothing to check against
    records.write_json(out / "plan.json", plan)
    cfg.duplicates = "keep"
    assert len(pipeline.open_split(cfg, "test")[0]) == 1
    embedded = ml_collections.ConfigDict(dict(name="m4m_default/full", dir=str(tmp_path / "none"), duplicates="keep"))
    with pytest.raises(cli.UserError, match="m4m_default/full was built with --duplicates=longest"):
        pipeline.open_split(embedded, "train")  # the embedded corpus is built 'longest', before any build check
