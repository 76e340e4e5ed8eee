"""The command line both held-out evaluations share (``m4mjax.analysis_eval``, ``m4mjax.gen_eval``): ``--workdir=W``
evaluates a run (writes W/eval.json), ``--baselines`` scores the reference analysers / generators on the same songs
(``--out``: also written as JSON); ``--data_dir`` and ``--max_songs`` choose the songs."""
from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Sequence

from m4mjax.run import cli, io

Args = argparse.Namespace


def run(prog: str, description: str, argv: Sequence[str] | None, *, evaluate: Callable[[Args], Any],
        baselines: Callable[[Args], dict], nothing_to_do: str, helps: dict[str, str],
        add_arguments: Callable[[argparse.ArgumentParser], None] = lambda ap: None,
        check: Callable[[Args], None] = lambda args: None) -> None:
    """Parse the shared flags (``helps``: their help texts, by flag name) plus the command's own
    (``add_arguments``), ``check`` them, then run ``baselines(args)`` (its JSON written to ``--out`` when given)
    or ``evaluate(args)``; every UserError is the one-line error of ``prog``."""
    ap = cli.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--workdir", default="", help=helps["workdir"])
    ap.add_argument("--baselines", action="store_true", help=helps["baselines"])
    ap.add_argument("--data_dir", default="", help=helps["data_dir"])
    ap.add_argument("--out", default="", help="--baselines: JSON file to write (default: print only)")
    ap.add_argument("--max_songs", type=int, default=0, help=helps["max_songs"])
    add_arguments(ap)
    with cli.report_errors(prog):
        args = ap.parse_args(argv)
        check(args)
        if args.baselines:
            res = baselines(args)
            if args.out:
                io.atomic_write(args.out, json.dumps(res, indent=2))
                print(f"wrote {args.out}")
        elif args.workdir:
            evaluate(args)
        else:
            raise cli.UserError(nothing_to_do)
