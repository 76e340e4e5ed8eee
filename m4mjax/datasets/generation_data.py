"""Data for the conditional-generation tasks, cut from the chord-labelled folder (``m4mjax.datasets.chords``).

    python -m m4mjax.datasets.generation_data --kind=chorales --src=data/analysis --out=data/gen_chorales
    python -m m4mjax.datasets.generation_data --kind=drums --src=data/analysis --out=data/gen_drums

Both outputs are ``m4mjax.prepare``-style folders (``data.name='prepared'``, ``data.dir=OUT``) whose split is
the source's recorded split of the same song (whole songs held out; ``OUT/splits.json`` lists it).

* ``chorales`` (chord_to_melody / melody_to_chord): every Bach chorale of the source (``auto/corpus`` chorales,
  chords by chorder, train/valid/test as the embedded corpus; ``romantext/bach``, human chords, all test).
  Song = the melody (the part with the highest mean pitch, i.e. the soprano, as track 0) + the chord track
  (track 250, ``m4mjax.labels`` layout). The other voices and the beat track are left out. Where the soprano
  part has two notes at once (divisi, final chords) the higher one is kept.
* ``drums`` (drums_to_others / others_to_drums): every song of the source that has both drum and non-drum
  music (``synth/mma`` band arrangements, ``auto/corpus`` Debian game MIDI); label tracks left out.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from m4mjax import labels
from m4mjax import tokenizer as tok
from m4mjax.datasets import convert, records

KINDS = ("chorales", "drums")


@functools.lru_cache(maxsize=8)
def _source(src: str, split: str) -> Any:
    return convert.ShardSource(src, split)


def is_chorale(song_id: str) -> bool:
    """Bach chorale ids of the chord folder (auto/music21/bach/..., romantext/bach/...)."""
    return "/bach/" in song_id


def melody_and_chords(notes: np.ndarray, name: str) -> np.ndarray:
    """Soprano (highest mean pitch of the non-drum music tracks, its top note per frame) as track 0 + the chord
    track; ValueError when the song has no music or no chord notes."""
    music = notes[(notes[:, tok.TRACK] < labels.CHORD_TRACK) & (notes[:, tok.INSTRUMENT] != tok.DRUM)]
    chord = notes[notes[:, tok.TRACK] == labels.CHORD_TRACK]
    if not len(music) or not len(chord):
        raise ValueError(f"{name}: no music or no chord track")
    tracks = np.unique(music[:, tok.TRACK])
    top = max(tracks, key=lambda t: music[music[:, tok.TRACK] == t, tok.PITCH].mean())
    mel = music[music[:, tok.TRACK] == top]
    mel = mel[np.r_[mel[1:, tok.FRAME] != mel[:-1, tok.FRAME], True]].copy()  # sorted by pitch per frame: the top
    mel[:, tok.TRACK] = 0
    return tok.sort_notes(np.concatenate([mel, chord]))


def drums_and_others(notes: np.ndarray, name: str) -> np.ndarray:
    """The music tracks (< 250) of a song that has both drum and non-drum notes; ValueError otherwise."""
    music = notes[notes[:, tok.TRACK] < labels.CHORD_TRACK]
    drums = music[:, tok.INSTRUMENT] == tok.DRUM
    if not drums.any() or drums.all():
        raise ValueError(f"{name}: needs both drum and non-drum notes")
    return music


def load_item(item: dict[str, Any]) -> list[dict[str, Any]]:
    """One source song -> the generation song of ``item['kind']`` (ValueError if it does not qualify)."""
    song = _source(item["src"], item["split"])[item["pos"]]
    pick = melody_and_chords if item["kind"] == "chorales" else drums_and_others
    notes = pick(song["notes"], item["key"])
    return [{"id": item["key"], "group": item["group"], "notes": notes, "n_frames": int(song["n_frames"])}]


def plan_items(src: str, kind: str) -> list[dict[str, Any]]:
    """The items of one kind: source songs that may qualify, with their recorded split."""
    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    table = records.read_json(Path(src) / "labels.json")
    items = []
    for split in records.SPLITS:
        try:
            s = _source(src, split)
        except ValueError:
            continue  # the source has no songs in this split
        for i, sid in enumerate(s.ids):
            group = table.get(sid, {}).get("group", "")
            if (kind == "chorales") == is_chorale(sid) and (kind == "chorales" or not group.startswith("romantext")):
                items.append({"key": sid, "group": group, "split": split, "pos": i, "src": str(src), "kind": kind})
    return items


def build(src: str, out: str, kind: str, *, progress: bool = True) -> dict[str, Any]:
    """Write the ``kind`` folder; returns the summary (pieces and frames per group and split, skipped items)."""
    items = plan_items(src, kind)
    if not items:
        raise ValueError(f"{src}: no songs for --kind={kind} (build it with `python -m m4mjax.datasets.chords`)")
    split = {it["key"]: it["split"] for it in items}
    rep = convert.convert(items, load_item, out, shard_size=64, workers=1, split_fn=lambda sid, i: split[sid],
                          desc=f"generation {kind}", progress=progress)
    counts: dict[str, dict[str, dict[str, int]]] = {}
    splits = {}
    for m in convert.load_markers(out):
        for sp, songs in m["songs"].items():
            for s in songs:
                splits[s["id"]] = sp
                c = counts.setdefault(s.get("group") or _group(s["id"]), {}).setdefault(sp, {"pieces": 0, "frames": 0})
                c["pieces"] += 1
                c["frames"] += int(s["n_frames"])
    records.write_json(Path(out) / "splits.json", dict(sorted(splits.items())))
    summary = {"kind": kind, "source": str(src), "counts": counts, "bad_items": rep["bad_items"],
               "split_rule": "the source folder's recorded split of the same song"}
    records.write_json(Path(out) / "summary.json", summary)
    return summary


def _group(song_id: str) -> str:
    return "/".join(song_id.split("/")[:2])


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    from m4mjax.run.cli import UserError, report_errors

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", required=True, choices=KINDS)
    ap.add_argument("--src", default="data/analysis")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    with report_errors("m4mjax.datasets.generation_data"):
        try:
            summary = build(args.src, args.out, args.kind)
        except ValueError as e:
            raise UserError(str(e), args.src) from None
    print(json.dumps(summary, indent=1))
    if summary["bad_items"]:
        print(f"skipped {summary['bad_items']} songs, reasons in {Path(args.out) / 'report.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
