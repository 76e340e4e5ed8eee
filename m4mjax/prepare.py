"""Convert a folder of MIDI files (e.g. Lakh MIDI, unchanged) into an m4mjax dataset.

    python -m m4mjax.prepare --midi_dir=DIR --out=OUT [--workers=N] [--shard_size=256] [--duplicates=longest]

Parallel (``--workers`` processes), resumable (a re-run skips finished shards; an interrupted run loses only
the shards in flight), incremental (a re-run on a changed folder converts the new and changed files, drops the
removed ones and says so), bounded memory (a worker holds one shard of songs), read-only on the input. Any
file name works (names that are not UTF-8 are written with backslash escapes). Every bad or skipped path is
listed with its reason in OUT/report.json. Splits: file index (sorted relative paths; files added later get
the next indices) mod 10 -> 0 test, 1 valid, else train. ``--duplicates``: exact duplicate notes (same frame,
instrument, pitch) keep the longest ('longest', the default) or all ('keep', as the official pretraining corpus
la_cp16_v2; see m4mjax.tokenizer); the choice is recorded in OUT/plan.json (``settings``) and the report, a
training run whose ``data.duplicates`` disagrees stops, and a re-run with the other value converts every file
again. Read with ``cfg.data.name='prepared'``, ``cfg.data.dir=OUT``. User errors (bad flags, unwritable --out,
no MIDI files, a run that leaves the dataset with no song) print one line ``m4mjax.prepare: error: ...`` and exit 2.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from m4mjax.datasets import convert
from m4mjax.run import cli

MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")
LOADER = "m4mjax.datasets.sources:load_item"  # by name: the parent process never imports the tokenizer
DUPLICATES = ("longest", "keep")  # = m4mjax.tokenizer.DUPLICATES (not imported, as above); the first is the default


def display_name(name: str | os.PathLike) -> str:
    """A file name as printable text: bytes that are not UTF-8 become ``\\xNN`` escapes."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def find_midi(midi_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(items, skipped) for the MIDI files under midi_dir (recursive, symlinks followed, sorted by key).

    An item's ``key`` is its relative path as printable text; ``size``/``mtime_ns`` let a re-run see edits.
    ``skipped`` lists paths with a MIDI suffix that are not files (directories, broken links, devices) and
    folders that cannot be listed, each as ``{key, error}``.
    """
    root = os.fspath(midi_dir)
    if not os.path.isdir(root):
        raise cli.UserError("not a directory" if os.path.exists(root) else "no such directory",
                           f"--midi_dir={display_name(root)}")
    items: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    group_root = display_name(os.path.basename(os.path.abspath(root)))
    seen_dirs: set[tuple[int, int]] = set()
    stack = [("", root)]
    while stack:
        rel_dir, d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen_dirs:
                skipped.append({"key": display_name(rel_dir),
                                "error": f"{display_name(rel_dir)}: directory already scanned (symlink loop)"})
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = list(it)
        except OSError as e:
            name = display_name(rel_dir or ".")
            skipped.append({"key": name, "error": f"{name}: cannot list directory ({e.strerror})"})
            continue
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            is_midi = e.name.lower().endswith(MIDI_SUFFIXES)
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if is_midi:
                    skipped.append({"key": display_name(rel), "error": f"{display_name(rel)}: a directory, not a MIDI file"})
                stack.append((rel, e.path))
                continue
            if not is_midi:
                continue
            key = display_name(rel)
            try:
                st = e.stat()
            except OSError as err:
                skipped.append({"key": key, "error": f"{key}: cannot read ({err.strerror})"})
                continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append({"key": key, "error": f"{key}: not a regular file"})
                continue
            items.append({"key": key, "kind": "midi", "path": os.path.abspath(e.path),
                          "group": key.split("/")[0] if "/" in key else group_root,
                          "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    items.sort(key=lambda it: it["key"])
    for a, b in zip(items, items[1:]):  # two raw names that escape to the same text: keep the first
        if a["key"] == b["key"]:
            skipped.append({"key": b["key"], "error": f"{b['key']}: name collides with another file's escaped name"})
    items = [it for i, it in enumerate(items) if i == 0 or it["key"] != items[i - 1]["key"]]
    return items, sorted(skipped, key=lambda s: s["key"])


def check_out(midi_dir: str | Path, out: str | Path) -> None:
    """Raise a UserError (before anything is created) when ``out`` cannot hold the dataset."""
    out_abs, in_abs = Path(out).resolve(), Path(midi_dir).resolve()
    where = f"--out={display_name(out)}"
    if out_abs == in_abs or in_abs in out_abs.parents:
        raise cli.UserError("must not be inside --midi_dir (the input is never modified)", where)
    if out_abs.exists() and not out_abs.is_dir():
        raise cli.UserError("exists and is not a directory", where)
    probe = out_abs
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise cli.UserError(f"cannot write into {display_name(probe)}", where)
    if out_abs.is_dir() and not (out_abs / "plan.json").exists() and any(p.name != "shards" for p in out_abs.iterdir()):
        raise cli.UserError("is a folder prepare did not write (no plan.json); choose a new or empty one", where)


def prepare(midi_dir: str | Path, out: str | Path, workers: int = 2, shard_size: int = 256, progress: bool = True,
            max_chunks: int | None = None, duplicates: str = "longest") -> dict[str, Any]:
    """Convert midi_dir into out (see module docstring); returns the report (also in out/report.json)."""
    if workers < 1:
        raise cli.UserError("must be >= 1", f"--workers={workers}")
    if shard_size < 1:
        raise cli.UserError("must be >= 1", f"--shard_size={shard_size}")
    if duplicates not in DUPLICATES:
        raise cli.UserError(f"must be {' or '.join(DUPLICATES)}", f"--duplicates={duplicates}")
    check_out(midi_dir, out)
    items, skipped = find_midi(midi_dir)
    if not items and not (Path(out) / "plan.json").exists():
        why = f"no MIDI files ({', '.join(MIDI_SUFFIXES)})"
        if skipped:
            why += f"; {len(skipped)} paths skipped, e.g. {skipped[0]['error']}"
        raise cli.UserError(why, f"--midi_dir={display_name(midi_dir)}")
    if duplicates != DUPLICATES[0]:
        # the loader reads the setting from each item, so it is part of the chunk digests and another value redoes
        # every chunk; the default is left out, so folders prepared before the flag existed stay valid
        items = [{**it, "duplicates": duplicates} for it in items]
    try:
        return convert.convert(items, LOADER, out, shard_size=shard_size, workers=workers, desc="prepare",
                               progress=progress, max_chunks=max_chunks, skipped=skipped,
                               settings={"duplicates": duplicates})
    except ValueError as e:  # an unreadable or foreign plan.json in --out
        raise cli.UserError(str(e), f"--out={display_name(out)}") from None
    except OSError as e:  # --out not writable after all (read-only mount, disk full)
        raise cli.UserError(f"cannot write {display_name(e.filename or out)} ({e.strerror or e})",
                           f"--out={display_name(out)}") from None


def describe_changes(changes: dict[str, int]) -> str:
    """One line: ``+N new, -M removed, K unchanged`` (and ``, C changed`` when files were edited)."""
    line = f"+{changes.get('new', 0)} new, -{changes.get('removed', 0)} removed, {changes.get('unchanged', 0)} unchanged"
    return line + (f", {changes['changed']} changed" if changes.get("changed") else "")


def _run(argv: list[str] | None) -> int:
    ap = cli.ArgumentParser(prog="m4mjax.prepare", description=__doc__.split("\n")[0])
    ap.add_argument("--midi_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--shard_size", type=int, default=256, help="songs per shard (memory per worker)")
    ap.add_argument("--duplicates", default=DUPLICATES[0],
                    help="exact duplicate notes: 'longest' keeps one, 'keep' keeps all (the official corpus)")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")
    args = ap.parse_args(argv)
    rep = prepare(args.midi_dir, args.out, args.workers, args.shard_size, progress=not args.no_progress,
                  duplicates=args.duplicates)
    report_path = display_name(Path(args.out) / "report.json")
    if rep["songs"] == 0:
        first = rep["bad"][0] if rep["bad"] else None
        raise cli.UserError(f"no song converted: {len(rep['bad'])} paths skipped"
                           + (f", e.g. {first['error']}" if first else "")
                           + f"; reasons in {report_path}", f"--midi_dir={display_name(args.midi_dir)}")
    print(f"m4mjax.prepare: {describe_changes(rep['changes'])}", file=sys.stderr)
    if rep["bad"]:
        print(f"m4mjax.prepare: skipped {len(rep['bad'])} paths, reasons in {report_path}", file=sys.stderr)
    print(json.dumps({k: v for k, v in rep.items() if k not in ("bad", "groups")}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 when the dataset holds songs (bad files are reported, not fatal); 2 with one line on
    stderr for a user error (nothing created, except the report of a run whose every file was bad)."""
    with cli.report_errors("m4mjax.prepare"):
        return _run(argv)


if __name__ == "__main__":
    sys.exit(main())
