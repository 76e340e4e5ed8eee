"""Parallel, resumable, incremental conversion of input items (MIDI files, ABC files, WAD lumps) into song shards.

Layout of an output directory::

    plan.json                    chunks of items, each item with its fixed ``index`` (the split key), and the
                                 caller's ``settings`` (how the songs were made, e.g. prepare's ``duplicates``)
    shards/00012.json            written LAST for chunk 12: its songs (id, group, split, n_frames, n_notes), errors
                                 and the digest of the chunk's items it was made from
    shards/00012.<split>.array_record   the chunk's songs of that split (records.py format)
    report.json                  totals, what changed since the last run, every bad or skipped item with its reason

A chunk is done iff its marker JSON exists and carries the digest of the chunk's current items, so an interrupted
run loses at most the chunks in flight and a re-run never redoes finished ones. A re-run on a changed input puts
new items in new chunks (existing items keep their index, hence their split) and redoes only the chunks that
lost a removed item or hold a changed one. Workers convert one chunk at a time (memory bounded by the chunk size).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from m4mjax.datasets import records

Item = dict[str, Any]  # must hold a unique "key" (str); the rest is for the loader
Loader = Callable[[Item], list[dict[str, Any]]]  # item -> songs (id, group, notes, n_frames); ValueError if bad
SplitFn = Callable[[str, int], str]  # (song id, item index) -> split name
PLAN_LAYOUT = 3  # plan.json with "chunks" (layout 2 had a flat "items" list; it is migrated on first use)
_VOLATILE = ("path",)  # item fields that may change without the item's content changing (a moved folder)


def index_split(song_id: str, item_index: int) -> str:
    """Default split: item index mod 10 (spec §5)."""
    return records.split_of_index(item_index)


def _identity(item: Item) -> Item:
    return {k: v for k, v in item.items() if k not in _VOLATILE}


def chunk_digest(items: Sequence[Item]) -> str:
    """Digest of a chunk's items (keys, indices, size/mtime stamps): a marker is valid only for these items."""
    return hashlib.sha1(json.dumps([_identity(it) for it in items], sort_keys=True).encode()).hexdigest()


def _marker_path(out: Path, k: int) -> Path:
    return out / "shards" / f"{k:05d}.json"


def _read_plan(out: Path) -> dict[str, Any] | None:
    """plan.json (layout 2 migrated to chunks, its finished markers stamped with their digest), or None."""
    path = out / "plan.json"
    if not path.exists():
        return None
    plan = records.read_json(path)
    if plan.get("format") != records.FORMAT_VERSION:
        raise ValueError(f"{out}: written with record format {plan.get('format')}, this code writes "
                         f"{records.FORMAT_VERSION}; delete the directory to rebuild it")
    if "chunks" not in plan:  # layout 2: items in plan order, chunk k = items[k * size:(k + 1) * size]
        size, old = int(plan["shard_size"]), plan["items"]
        plan = {"format": plan["format"], "layout": PLAN_LAYOUT, "shard_size": size, "next_index": len(old),
                "skipped": [], "chunks": []}
        for k in range(-(-len(old) // size)):
            chunk = [{**it, "index": k * size + j} for j, it in enumerate(old[k * size:(k + 1) * size])]
            plan["chunks"].append({"chunk": k, "items": chunk, "digest": chunk_digest(chunk)})
            mp_ = _marker_path(out, k)
            if mp_.exists():
                m = records.read_json(mp_)
                if m.get("n_items") == len(chunk) and "digest" not in m:
                    records.write_json(mp_, {**m, "digest": plan["chunks"][-1]["digest"]})
        records.write_json(path, plan)
    return plan


def update_plan(out: Path, items: Sequence[Item], shard_size: int, skipped: Sequence[dict[str, str]] = (),
                settings: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """Load or create plan.json for the current items; returns (plan, counts of new/removed/changed/unchanged).

    Existing items keep their chunk and index; removed ones leave their chunk (which is then redone, so their
    songs and errors disappear); new ones fill new chunks in key order; chunks left empty are deleted.
    ``settings`` (JSON) replace the recorded ones; a setting that changes the songs must also be in the items
    (hence in the chunk digests), so that chunks made with another value are redone.
    """
    keys = [it["key"] for it in items]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate item keys: " + ", ".join(sorted({k for k in keys if keys.count(k) > 1})[:5]))
    plan = _read_plan(out)
    current = {it["key"]: it for it in items}
    if plan is None:
        plan = {"format": records.FORMAT_VERSION, "layout": PLAN_LAYOUT, "shard_size": shard_size,
                "next_index": 0, "skipped": [], "chunks": []}
    size = int(plan["shard_size"])
    counts = {"new": 0, "removed": 0, "changed": 0, "unchanged": 0}
    chunks, known = [], set()
    for c in plan["chunks"]:
        kept = []
        for it in c["items"]:
            known.add(it["key"])
            now = current.get(it["key"])
            if now is None:
                counts["removed"] += 1
                continue
            fresh = {**now, "index": it["index"]}
            counts["changed" if _identity(fresh) != _identity(it) else "unchanged"] += 1
            kept.append(fresh)
        if kept:
            chunks.append({"chunk": c["chunk"], "items": kept, "digest": chunk_digest(kept)})
        else:
            _remove_chunk_files(out, c["chunk"])
    new = [it for it in items if it["key"] not in known]
    counts["new"] = len(new)
    k0 = max([c["chunk"] for c in plan["chunks"]], default=-1) + 1
    idx = int(plan["next_index"])
    for j in range(0, len(new), size):
        chunk = [{**it, "index": idx + j + i} for i, it in enumerate(new[j:j + size])]
        chunks.append({"chunk": k0 + j // size, "items": chunk, "digest": chunk_digest(chunk)})
    plan = {**plan, "layout": PLAN_LAYOUT, "next_index": idx + len(new), "skipped": list(skipped), "chunks": chunks}
    if settings is not None:
        plan["settings"] = dict(settings)
    records.write_json(out / "plan.json", plan)
    return plan, counts


def _remove_chunk_files(out: Path, k: int) -> None:
    """Delete a chunk's marker (first: the commit point) and its shards."""
    _marker_path(out, k).unlink(missing_ok=True)
    for p in (out / "shards").glob(f"{k:05d}.*.array_record"):
        p.unlink(missing_ok=True)


def _resolve(loader: Loader | str) -> Loader:
    """A loader given as ``"module:function"`` is imported here (in the worker: the parent stays light)."""
    if isinstance(loader, str):
        mod, _, fn = loader.partition(":")
        return getattr(importlib.import_module(mod), fn)
    return loader


def _run_chunk(args: tuple) -> dict[str, Any]:
    """Convert one chunk of items and write its shards, then its marker (the commit point)."""
    k, chunk, digest, loader, split_fn, out = args
    loader = _resolve(loader)
    t0 = time.time()
    by_split: dict[str, list[bytes]] = {}
    meta: dict[str, list[dict[str, Any]]] = {}
    errors = []
    for item in chunk:
        try:
            songs = loader(item)
        except ValueError as e:
            msg = str(e)
            errors.append({"key": item["key"], "error": msg if item["key"] in msg else f"{item['key']}: {msg}"})
            continue
        except Exception as e:  # a bug, not bad input: report it, never die, and retry on the next run
            errors.append({"key": item["key"], "error": f"{item['key']}: {type(e).__name__}: {e}", "retry": True})
            continue
        for song in songs:
            split = split_fn(song["id"], item["index"])
            by_split.setdefault(split, []).append(records.encode_song(song))
            meta.setdefault(split, []).append({"id": song["id"], "group": song["group"],
                                               "n_frames": int(song["n_frames"]), "n_notes": int(len(song["notes"])),
                                               **({"n_chords": song["n_chords"]} if song.get("n_chords") else {})})
    shard_dir = Path(out) / "shards"
    for split, recs in by_split.items():
        records.write_array_record(shard_dir / f"{k:05d}.{split}.array_record", recs)
    for p in shard_dir.glob(f"{k:05d}.*.array_record"):  # left by an earlier version of this chunk
        if p.name.split(".")[1] not in by_split:
            p.unlink(missing_ok=True)
    marker = {"chunk": k, "n_items": len(chunk), "digest": digest, "songs": meta, "errors": errors,
              "seconds": time.time() - t0}
    records.write_json(_marker_path(Path(out), k), marker)
    return marker


def _done(out: Path, c: dict[str, Any]) -> bool:
    p = _marker_path(out, c["chunk"])
    if not p.exists():
        return False
    try:
        m = records.read_json(p)
    except ValueError:
        return False
    return m.get("digest") == c["digest"] and not any(e.get("retry") for e in m["errors"])


def convert(items: Sequence[Item], loader: Loader | str, out: str | Path, *, shard_size: int = 256,
            workers: int = 1, split_fn: SplitFn = index_split, desc: str = "convert", progress: bool = True,
            max_chunks: int | None = None, skipped: Sequence[dict[str, str]] = (),
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert items into ``out`` (resumable, incremental, ``workers`` processes); returns and writes report.json.

    ``loader`` is a function or ``"module:function"`` (imported only in the workers). ``skipped``: paths the
    caller rejected before conversion (``key``, ``error``), listed in the report. ``settings``: how the songs
    are made, recorded in plan.json and the report (see update_plan). ``max_chunks`` stops after that many
    chunks (used to test resuming).
    """
    out = Path(out)
    plan, counts = update_plan(out, items, shard_size, skipped, settings)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    todo = [c for c in plan["chunks"] if not _done(out, c)]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    jobs = [(c["chunk"], c["items"], c["digest"], loader, split_fn, str(out)) for c in todo]
    n_items = sum(len(c["items"]) for c in plan["chunks"])
    t0 = time.time()
    bar = _progress_bar(n_items, n_items - sum(len(j[1]) for j in jobs), desc, progress)
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            bar.update(_run_chunk(j)["n_items"])
    else:
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for marker in pool.imap_unordered(_run_chunk, jobs):
                bar.update(marker["n_items"])
    bar.close()
    return write_report(out, seconds=time.time() - t0, plan=plan, changes=counts)


def _progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """tqdm bar on stderr (items, rate, ETA)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="file", disable=not enabled, smoothing=0.1,
                mininterval=0.5, dynamic_ncols=True)


def write_report(out: Path, seconds: float, plan: dict[str, Any] | None = None,
                 changes: dict[str, int] | None = None) -> dict[str, Any]:
    """Summarise the valid chunk markers (this run and earlier ones) into out/report.json."""
    plan = plan if plan is not None else _read_plan(out)
    markers = load_markers(out, plan)
    bad = [e for m in markers for e in m["errors"]] + list((plan or {}).get("skipped", []))
    bad.sort(key=lambda e: e["key"])
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
    n_items = sum(len(c["items"]) for c in (plan or {}).get("chunks", []))
    report = {"items": n_items, "items_done": int(sum(m["n_items"] for m in markers)),
              "songs": int(sum(v["songs"] for v in split_stats.values())), "bad_items": len(bad),
              "changes": changes or {}, **({"settings": plan["settings"]} if plan and "settings" in plan else {}),
              "splits": split_stats, "groups": groups,
              "seconds_this_run": round(seconds, 2),
              "cpu_seconds_all_chunks": round(sum(m["seconds"] for m in markers), 2), "bad": bad}
    records.write_json(out / "report.json", report)
    return report


def load_markers(out: str | Path, plan: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The finished chunk markers of a conversion directory that match its plan, in chunk order."""
    out = Path(out)
    plan = plan if plan is not None else _read_plan(out)
    if plan is None:
        return []
    markers = []
    for c in plan["chunks"]:
        p = _marker_path(out, c["chunk"])
        if p.exists():
            m = records.read_json(p)
            if m.get("digest") == c["digest"]:
                markers.append(m)
    return markers


class ShardSource:
    """Random-access source over one split of a conversion directory (grain-compatible: len + getitem)."""

    def __init__(self, out: str | Path, split: str):
        import grain  # local: keep conversion workers light

        plan = _read_plan(Path(out))
        markers = load_markers(out, plan)
        self.settings = dict((plan or {}).get("settings", {}))  # how the songs were made (plan.json)
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
