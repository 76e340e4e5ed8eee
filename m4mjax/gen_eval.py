"""Evaluation of the conditional-generation tasks on held-out songs (issue: generation tables).

    python -m m4mjax.evaluate --workdir=W [--max_batches=N]          # a generation run -> W/eval.json
    python -m m4mjax.gen_eval --workdir=W [--max_songs=N] [--seed=S]
    python -m m4mjax.gen_eval --baselines --task=TASK --data_dir=D [--max_songs=N] [--lm=LM_WORKDIR]

The songs, the protocol, the metrics per task and the baselines: ``m4mjax.gen_scores``.
"""
from __future__ import annotations

from m4mjax import eval_command
from m4mjax import gen_scores as scores
from m4mjax.run import cli


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    def add_arguments(ap):
        ap.add_argument("--task", default="", help="--baselines: the task")
        ap.add_argument("--lm", default="", help="--baselines: foundation LM workdir for the unconditioned floor")
        ap.add_argument("--seed", type=int, default=0)

    def check(args):
        if args.baselines and (not args.task or not args.data_dir):
            raise cli.UserError("--baselines needs --task and --data_dir", "--baselines")

    eval_command.run(
        "m4mjax.gen_eval", __doc__.split("\n")[0], argv, add_arguments=add_arguments, check=check,
        baselines=lambda a: scores.baselines(a.task, a.data_dir, a.max_songs, a.lm, a.seed),
        evaluate=lambda a: scores.evaluate(a.workdir, max_songs=a.max_songs, seed=a.seed,
                                           data_dir=a.data_dir or None),
        nothing_to_do="nothing to do: give --workdir=W (a generation run) or --baselines --task=T --data_dir=D",
        helps={"workdir": "a generation run to evaluate (writes W/eval.json)",
               "baselines": "score truth / rule / LM floor instead",
               "data_dir": "held-out songs (default: the run's data.dir)",
               "max_songs": f"songs, evenly spaced (0 = {scores.DEFAULT_SONGS})"})


if __name__ == "__main__":
    main()
