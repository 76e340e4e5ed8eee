"""The embedded default corpus as a TFDS dataset (array_record): music21's bundled scores + Debian game MIDI.

Build (parallel, cached, resumable; converted songs are cached per source group under ``--cache_dir``)::

    python -m m4mjax.datasets.default --variant=demo --workers=2   # demo subset, ~1-2 min on 2 cores
    python -m m4mjax.datasets.default --variant=full --workers=2   # whole corpus, see report for timings

What is built, its groups and its recorded splits: ``m4mjax.datasets.corpus`` (the library this command runs;
read the corpus with ``corpus.builder(variant, data_dir).as_data_source()[split]``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from m4mjax.datasets import convert, records
from m4mjax.datasets.corpus import SPLITS_FILE, VARIANTS, build_cache, builder, split_table, write_splits


def main(argv: list[str] | None = None) -> None:
    """CLI: build the default corpus (and print per-group sizes and times)."""
    from m4mjax.run import cli

    ap = cli.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", default="demo", choices=sorted(VARIANTS))
    ap.add_argument("--data_dir", default="data/tfds")
    ap.add_argument("--cache_dir", default="data/cache/default")
    ap.add_argument("--debian_dir", default="data/debian_midi")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--write_splits", action="store_true", help="(maintainers) re-record splits/default.json")
    with cli.report_errors("m4mjax.datasets.default"):
        args = ap.parse_args(argv)
        if args.workers < 1:
            raise cli.UserError("must be >= 1", f"--workers={args.workers}")
        build(args)


def build(args: argparse.Namespace) -> None:
    """Build (or re-use) the corpus named by the parsed CLI arguments; print and record the build report."""
    t0 = time.time()
    if args.write_splits:
        build_cache(args.variant, args.cache_dir, args.debian_dir, args.workers)
        print(f"recorded {len(write_splits(args.cache_dir))} songs in {SPLITS_FILE}")
        return
    b = builder(args.variant, args.data_dir, cache_dir=args.cache_dir, debian_dir=args.debian_dir,
                workers=args.workers)
    b.download_and_prepare()
    table = split_table()
    summary = {"variant": args.variant, "seconds": round(time.time() - t0, 1),
               "splits": {s: b.info.splits[s].num_examples for s in records.SPLITS}}
    reps = getattr(b, "cache_reports", None) or build_cache(args.variant, args.cache_dir, args.debian_dir, 1, False)
    summary["groups"] = {g: {**r["groups"].get(g, {}), "bad": r["bad_items"], "wall_s": r.get("wall_seconds")}
                         for g, r in reps.items()}
    ids = [x["id"] for g in reps for m in convert.load_markers(Path(args.cache_dir) / g) for x in m["songs"].get("all", [])]
    summary["songs_without_recorded_split"] = sum(i not in table for i in ids)
    records.write_json(Path(b.data_dir) / "build_report.json", {**summary, "bad": [e for r in reps.values() for e in r["bad"]]})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
