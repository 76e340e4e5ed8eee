"""Evaluation of MIDI chord & downbeat analysis against exact labels, and the rule-based baselines' scores on
the same songs with the same scorer (m4mjax.chord_eval).

    python -m m4mjax.evaluate --workdir=W        # an analysis run -> W/eval.json (dispatches here)
    python -m m4mjax.analysis_eval --baselines --data_dir=data/analysis --out=baselines.json [--max_songs=N]
    python -m m4mjax.analysis_eval --workdir=W [--sets=synth_test,romantext] [--decode=official] [--out_name=F]
                                   [--step=N]

The sets, the protocol and the scores: ``m4mjax.analysis_scores``.
"""
from __future__ import annotations

from m4mjax import analysis_scores as scores
from m4mjax import eval_command
from m4mjax.run import cli

SETS = scores.SETS


def main(argv: list[str] | None = None) -> None:
    """Command line: --baselines scores the rule-based analysers; --workdir evaluates an analysis run."""
    def add_arguments(ap):
        ap.add_argument("--sets", default=",".join(SETS), help=f"comma list of {', '.join(SETS)}")
        ap.add_argument("--decode", default=None, help="scored (default) | greedy | sample | official (16-frame "
                        "true-label prompt, temperature 1, mean of 8 samples)")
        ap.add_argument("--transpose", default=None, help="comma list of semitone shifts: a transposition ensemble "
                        "(each song analysed once per shift, frames voted; default: the run's analyze.transpose)")
        ap.add_argument("--out_name", default="eval.json", help="--workdir: file written inside the run directory")
        ap.add_argument("--step", type=int, default=None, help="--workdir: that checkpoint's weights (default: the "
                        "latest; train.ckpt_keep_every keeps every N-th step)")

    def check(args):
        args.sets = [s for s in args.sets.split(",") if s]
        args.transpose = cli.int_list(args.transpose, "--transpose") if args.transpose is not None else None
        bad = [s for s in args.sets if s not in SETS]
        if bad:
            raise cli.UserError(f"unknown set(s) {bad}; known: {list(SETS)}", "--sets")

    eval_command.run(
        "m4mjax.analysis_eval", __doc__.split("\n")[0], argv, add_arguments=add_arguments, check=check,
        baselines=lambda a: scores.baselines(a.data_dir or "data/analysis", a.sets, a.max_songs),
        evaluate=lambda a: scores.evaluate(a.workdir, sets=a.sets, data_dir=a.data_dir or None,
                                           max_songs=a.max_songs, decode=a.decode, out_name=a.out_name,
                                           step=a.step, transpose=a.transpose),
        nothing_to_do="nothing to do: give --baselines or --workdir",
        helps={"workdir": "an analysis run to evaluate (as m4mjax.evaluate)",
               "baselines": "score the template matchers and chorder",
               "data_dir": "chord-data folder (default: data/analysis, or the run's)",
               "max_songs": "songs per set, evenly spaced (0 = all)"})


if __name__ == "__main__":
    main()
