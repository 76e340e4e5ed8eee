"""Does a foundation LM keep playing the prompt's band? A continuation measure on held-out prompts.

    python -m m4mjax.continuation --workdir=W [--untrained] [--n_prompts=32 --prompt_frames=128 --n_frames=128]
        [--data_name=m4m_default/full] [--out=FILE]  -> W/continuation.json (or W/continuation_untrained.json)

The measures (held-out windows, the stats per prompt): ``m4mjax.continuation_scores``.
"""
from __future__ import annotations

import json
import os

from m4mjax import continuation_scores as scores


def main(argv=None) -> None:
    from absl import flags

    from m4mjax.run import cli

    flags.DEFINE_string("workdir", None, "run directory of an LM (config.json + checkpoints/)", required=True)
    flags.DEFINE_bool("untrained", False, "measure a freshly initialised model of the same config instead")
    flags.DEFINE_integer("n_prompts", 32, "held-out prompts", lower_bound=1)
    flags.DEFINE_integer("prompt_frames", 128, "prompt length in frames", lower_bound=1)
    flags.DEFINE_integer("n_frames", 128, "frames sampled after each prompt", lower_bound=1)
    flags.DEFINE_float("temperature", 1.0, "sampling temperature", lower_bound=0.0)
    flags.DEFINE_float("top_p", 0.95, "nucleus mass", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("seed", 0, "sampling seed")
    flags.DEFINE_string("data_name", "", "take the prompts from another dataset (e.g. m4m_default/full), so runs "
                        "trained on different data are measured on the same prompts")
    flags.DEFINE_string("out", "", "output JSON (default W/continuation[_untrained].json)")
    FLAGS = flags.FLAGS

    def run(_):
        from flax import nnx

        from m4mjax import model as lm, runs
        from m4mjax.run import io

        cfg = cli.load_config(FLAGS.workdir)
        if FLAGS.data_name:
            cfg.data.name = FLAGS.data_name
        if FLAGS.untrained:
            model = lm.M4MTransformer(cfg.model, rngs=nnx.Rngs(cfg.seed))
        else:
            model, _ = runs.load_run(FLAGS.workdir, streams=runs.LM_STREAMS)  # one-line error for a bad run
        windows = scores.held_out_windows(cfg, FLAGS.n_prompts, FLAGS.prompt_frames + FLAGS.n_frames)
        res = scores.measure(model, windows, FLAGS.prompt_frames, FLAGS.seed, FLAGS.temperature, FLAGS.top_p)
        res.update(untrained=FLAGS.untrained, data=cfg.data.name)
        name = "continuation_untrained.json" if FLAGS.untrained else "continuation.json"
        io.atomic_write(FLAGS.out or os.path.join(FLAGS.workdir, name), json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))

    cli.run_main(run, "m4mjax.continuation", argv=argv)


if __name__ == "__main__":
    main()
