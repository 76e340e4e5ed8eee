"""Parallel, resumable conversion of input items (MIDI files, ABC files, WAD lumps) into song shards.

Layout of an output directory::

    plan.json                    the item list fixed on the first run (new items are appended, never reordered)
    shards/00012.json            written LAST for chunk 12: its songs (id, group, split, n_frames, n_notes) and errors
    shards/00012.<split>.array_record   the chunk's songs of that split (records.py format)
    report.json                  totals and every bad item with its reason

A chunk is done iff its marker JSON exists, so an interrupted run loses at most the chunks in flight and a
re-run never redoes finished ones. Workers convert one chunk at a time (memory bounded by the chunk size).
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from m4mjax.datasets import records

Item = dict[str, Any]  # must hold a unique "key" (str); the rest is for the loader
Loader = Callable[[Item], list[dict[str, Any]]]  # item -> songs (id, group, notes, n_frames); ValueError if bad
SplitFn = Callable[[str, int], str]  # (song id, item index) -> split name


def index_split(song_id: str, item_index: int) -> str:
    """Default split: item index mod 10 (spec §5)."""
    return records.split_of_index(item_index)


def _plan(out: Path, items: Sequence[Item], shard_size: int) -> tuple[list[Item], int]:
    """Load or create plan.json; items new since the last run are appended in a stable order."""
    path = out / "plan.json"
    if path.exists():
        plan = records.read_json(path)
        if plan.get("format") != records.FORMAT_VERSION:
            raise ValueError(f"{out}: written with record format {plan.get('format')}, this code writes "
                             f"{records.FORMAT_VERSION}; delete the directory to rebuild it")
        known = {it["key"] for it in plan["items"]}
        new = [it for it in items if it["key"] not in known]
        if new:
            plan["items"] += new
            records.write_json(path, plan)
        return plan["items"], int(plan["shard_size"])
    plan = {"format": records.FORMAT_VERSION, "shard_size": shard_size, "items": list(items)}
    records.write_json(path, plan)
    return plan["items"], shard_size


def _run_chunk(args: tuple) -> dict[str, Any]:
    """Convert one chunk of items and write its shards, then its marker (the commit point)."""
    k, chunk, first, loader, split_fn, out = args
    t0 = time.time()
    by_split: dict[str, list[bytes]] = {}
    meta: dict[str, list[dict[str, Any]]] = {}
    errors = []
    for i, item in enumerate(chunk):
        try:
            songs = loader(item)
        except ValueError as e:
            errors.append({"key": item["key"], "error": str(e)})
            continue
        except Exception as e:  # a batch job never dies on one bad input: report it
            errors.append({"key": item["key"], "error": f"{type(e).__name__}: {e}"})
            continue
        for song in songs:
            split = split_fn(song["id"], first + i)
            by_split.setdefault(split, []).append(records.encode_song(song))
            meta.setdefault(split, []).append({"id": song["id"], "group": song["group"], "n_frames": int(song["n_frames"]),
                                "n_notes": int(len(song["notes"])),
                                                **({"n_chords": song["n_chords"]} if song.get("n_chords") else {})})
    shard_dir = Path(out) / "shards"
    for split, recs in by_split.items():
        if recs:
            records.write_array_record(shard_dir / f"{k:05d}.{split}.array_record", recs)
    marker = {"chunk": k, "n_items": len(chunk), "songs": meta, "errors": errors, "seconds": time.time() - t0}
    records.write_json(shard_dir / f"{k:05d}.json", marker)
    return marker


def convert(items: Sequence[Item], loader: Loader, out: str | Path, *, shard_size: int = 256, workers: int = 1,
            split_fn: SplitFn = index_split, desc: str = "convert", progress: bool = True,
            max_chunks: int | None = None) -> dict[str, Any]:
    """Convert items into ``out`` (resumable, ``workers`` processes); returns and writes report.json.

    ``max_chunks`` stops after that many new chunks (used to test resuming).
    """
    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    items, shard_size = _plan(out, items, shard_size)
    n_chunks = -(-len(items) // shard_size)
    todo = [k for k in range(n_chunks) if not (out / "shards" / f"{k:05d}.json").exists()]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    jobs = [(k, items[k * shard_size:(k + 1) * shard_size], k * shard_size, loader, split_fn, str(out)) for k in todo]
    t0 = time.time()
    bar = tqdm(total=len(items), initial=len(items) - sum(len(j[1]) for j in jobs), desc=desc, unit="file",
               disable=not progress, smoothing=0.1)
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            bar.update(_run_chunk(j)["n_items"])
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            for marker in pool.imap_unordered(_run_chunk, jobs):
                bar.update(marker["n_items"])
    bar.close()
    return write_report(out, seconds=time.time() - t0, n_items=len(items))


def write_report(out: Path, seconds: float, n_items: int) -> dict[str, Any]:
    """Summarise all chunk markers (this run and earlier ones) into out/report.json."""
    markers = load_markers(out)
    bad = [e for m in markers for e in m["errors"]]
    split_stats = {}
    for s in sorted({s for m in markers for s in m["songs"]}):
        songs = [x for m in markers for x in m["songs"].get(s, [])]
        split_stats[s] = {"songs": len(songs), "frames": int(sum(x["n_frames"] for x in songs)),
                          "notes": int(sum(x["n_notes"] for x in songs))}
    groups: dict[str, dict[str, int]] = {}
    for m in markers:
        for songs in m["songs"].values():
            for x in songs:
                g = groups.setdefault(x["group"], {"songs": 0, "frames": 0, "notes": 0})
                g["songs"] += 1
                g["frames"] += x["n_frames"]
                g["notes"] += x["n_notes"]
    report = {"items": n_items, "items_done": int(sum(m["n_items"] for m in markers)), "bad_items": len(bad),
              "splits": split_stats, "groups": groups, "seconds_this_run": round(seconds, 2),
              "cpu_seconds_all_chunks": round(sum(m["seconds"] for m in markers), 2), "bad": bad}
    records.write_json(out / "report.json", report)
    return report


def load_markers(out: str | Path) -> list[dict[str, Any]]:
    """All finished chunk markers of a conversion directory, in chunk order."""
    return [records.read_json(p) for p in sorted((Path(out) / "shards").glob("[0-9]*[0-9].json"))]


class ShardSource:
    """Random-access source over one split of a conversion directory (grain-compatible: len + getitem)."""

    def __init__(self, out: str | Path, split: str):
        import grain  # local: keep conversion workers light

        markers = load_markers(out)
        paths = [str(Path(out) / "shards" / f"{m['chunk']:05d}.{split}.array_record") for m in markers
                 if m["songs"].get(split)]
        if not paths:
            raise ValueError(f"{out}: no '{split}' songs (run m4mjax.prepare first, or check the split name)")
        self.lengths = np.array([x["n_frames"] for m in markers for x in m["songs"].get(split, [])], np.int64)
        self.ids = [x["id"] for m in markers for x in m["songs"].get(split, [])]
        self._src = grain.sources.ArrayRecordDataSource(paths)
        if len(self._src) != len(self.lengths):
            raise ValueError(f"{out}: shard markers list {len(self.lengths)} '{split}' songs, files hold "
                             f"{len(self._src)}")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return records.decode_song(self._src[int(i)])
