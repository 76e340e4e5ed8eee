"""Convert a folder of MIDI files (e.g. Lakh MIDI, unchanged) into an m4mjax dataset.

    python -m m4mjax.prepare --midi_dir=DIR --out=OUT [--workers=N] [--shard_size=256]

Parallel (``--workers`` processes), resumable (a re-run skips finished shards; an interrupted run loses only
the shards in flight), bounded memory (a worker holds one shard of songs), read-only on the input. Every bad
file is skipped and listed with its reason in OUT/report.json. Splits: file index (sorted relative paths)
mod 10 -> 0 test, 1 valid, else train. Read with ``cfg.data.name='prepared'``, ``cfg.data.dir=OUT``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from m4mjax.datasets import convert, sources

MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")


def find_midi(midi_dir: str | Path) -> list[dict[str, Any]]:
    """Items for every MIDI file under midi_dir (recursive, sorted relative paths, symlinks followed)."""
    root = Path(midi_dir)
    if not root.is_dir():
        raise ValueError(f"--midi_dir={midi_dir}: not a directory")
    items = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.lower().endswith(MIDI_SUFFIXES):
                p = Path(dirpath) / f
                rel = p.relative_to(root).as_posix()
                items.append({"key": rel, "kind": "midi", "path": str(p), "group": rel.split("/")[0] if "/" in rel
                              else root.name})
    items.sort(key=lambda it: it["key"])
    return items


def prepare(midi_dir: str | Path, out: str | Path, workers: int = 2, shard_size: int = 256, progress: bool = True,
            max_chunks: int | None = None) -> dict[str, Any]:
    """Convert midi_dir into out (see module docstring); returns the report (also in out/report.json)."""
    out = Path(out)
    if out.resolve() == Path(midi_dir).resolve() or Path(midi_dir).resolve() in out.resolve().parents:
        raise ValueError(f"--out={out} must not be inside --midi_dir={midi_dir} (the input is never modified)")
    items = find_midi(midi_dir)
    if not items:
        raise ValueError(f"--midi_dir={midi_dir}: no MIDI files ({', '.join(MIDI_SUFFIXES)})")
    return convert.convert(items, sources.load_item, out, shard_size=shard_size, workers=workers,
                           desc="prepare", progress=progress, max_chunks=max_chunks)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the summary and returns 0 (bad files are reported, not fatal)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--midi_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)))
    ap.add_argument("--shard_size", type=int, default=256, help="songs per shard (memory per worker)")
    args = ap.parse_args(argv)
    try:
        rep = prepare(args.midi_dir, args.out, args.workers, args.shard_size)
    except ValueError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in rep.items() if k not in ("bad", "groups")}
    print(json.dumps(summary, indent=1))
    if rep["bad"]:
        print(f"prepare: skipped {len(rep['bad'])} bad files, reasons in {Path(args.out) / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
