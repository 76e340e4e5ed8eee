"""Chord-labelled data from installable packages, as a prepare-style folder with a recorded split.

    python -m m4mjax.datasets.chords --out=data/analysis [--n_synth=1000] [--workers=2] [--groups=synth,romantext,auto]

Each song's notes = its music (tracks < 250) + the chord track (``labels.CHORD_TRACK``) + the beat track
(``labels.BEAT_TRACK``); read it with ``data.name='prepared'``, ``data.dir=OUT``, ``data.reference='notrack:...'``
style selectors. ``OUT/labels.json`` holds the exact labels per song id (Harte segments in frames and seconds,
downbeats, beats, tempo map, group, split) so evaluation scores against them, not against the rendered track.
Groups (docs/DATA.md): ``synth/mma`` (generated charts rendered by mma, labels exact; split = piece index mod
10), ``romantext/bach`` and ``romantext/monteverdi`` (music21's human RomanText analyses; all 'test': the real-
music evaluation set), ``auto/corpus`` (Debian game MIDI + Bach chorales labelled by chorder's Dechorder; split =
the embedded corpus's recorded split, so songs held out from the LM stay held out). Resumable like prepare.
The building itself: ``m4mjax.datasets.chord_data``.
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
