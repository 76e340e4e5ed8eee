"""Chord-labelled data from installable packages, as a prepare-style folder with a recorded split.

    python -m m4mjax.datasets.chords --out=data/analysis [--n_synth=1000] [--workers=2] [--groups=synth,romantext,auto]

OUT/labels.json holds the exact labels per song id; the groups, their splits and the song layout are described
in ``m4mjax.datasets.chord_data`` (the library this command runs). Resumable like prepare.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m4mjax.datasets.chord_data import build


def main(argv: list[str] | None = None) -> None:
    """CLI: build the chord-labelled folder and print per-group/split counts."""
    from m4mjax.run.cli import UserError, report_errors

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/analysis")
    ap.add_argument("--n_synth", type=int, default=1000, help="synthetic mma pieces (deterministic in --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--groups", default="synth,romantext,auto", help="comma list of synth, romantext, auto")
    ap.add_argument("--debian_dir", default="data/debian_midi")
    args = ap.parse_args(argv)
    with report_errors("m4mjax.datasets.chords"):
        try:
            summary = build(args.out, args.n_synth, args.seed, args.workers, args.groups.split(","), args.debian_dir)
        except ValueError as e:
            raise UserError(str(e), args.out) from None
    print(json.dumps(summary, indent=1))
    if summary["bad_items"]:
        print(f"chords: skipped {summary['bad_items']} items, reasons in {Path(args.out) / 'report.json'}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
