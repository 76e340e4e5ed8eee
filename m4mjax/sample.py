"""KV-cache sampling from the foundation LM: a whole batch of prompts in one jitted loop.

    python -m m4mjax.sample --workdir=W --prompt=in.mid --out=x.mid [--n_frames=64 --temperature=1.0
        --top_p=1.0 --seed=0 --num_samples=1 --prompt_frames=64]

The sampling itself lives in ``m4mjax.sampling``; this command reads the flags, the prompt and the run, and
writes the samples.
"""
from __future__ import annotations

import os
import sys

import jax
import numpy as np

from m4mjax import runs, sampling


def main(argv=None) -> None:
    """Sample continuations of a prompt MIDI file and write them as MIDI."""
    from absl import flags

    from m4mjax.run import cli

    flags.DEFINE_string("workdir", None, "run directory (config.json + checkpoints/)", required=True)
    flags.DEFINE_string("prompt", None, "prompt MIDI file (default: the first window of the run's test split)")
    flags.DEFINE_string("out", None, "output MIDI path (sample i > 0 gets a _i suffix)", required=True)
    flags.DEFINE_integer("prompt_frames", None, "frames of the prompt to keep (16th notes; default: half the "
                         "run's training window)")
    flags.DEFINE_integer("n_frames", None, "frames to generate (default: the rest of the training window)")
    flags.DEFINE_float("temperature", 1.0, "sampling temperature (0 = greedy)")
    flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
    flags.DEFINE_integer("seed", 0, "random seed")
    flags.DEFINE_integer("num_samples", 1, "continuations sampled at once (one batch)")
    FLAGS = flags.FLAGS
    cli.check_nonempty_flag("workdir")
    cli.check_flag("prompt", lambda p: p is None or os.path.isfile(p), "no such file")
    cli.check_flag("out", lambda p: bool(p) and os.path.isdir(os.path.dirname(p) or "."),
                   "must be a file path in an existing folder")
    cli.check_flag("prompt_frames", lambda n: n is None or n >= 1, "must be >= 1")
    cli.check_flag("n_frames", lambda n: n is None or n >= 1, "must be >= 1")
    cli.check_flag("num_samples", lambda n: n >= 1, "must be >= 1")
    cli.check_flag("temperature", lambda t: t >= 0, "must be >= 0")
    cli.check_flag("top_p", lambda p: 0 < p <= 1, "must be in (0, 1]")

    def run(argv):
        if len(argv) > 1:
            raise cli.UserError("unexpected positional arguments", " ".join(argv[1:]))
        cfg = cli.load_config(FLAGS.workdir)  # fail fast, before the model and the checkpoint load
        window = int(cfg.data.frames)  # the model saw positions < window in training
        prompt_frames = FLAGS.prompt_frames or max(window // 2, 1)
        n_frames = FLAGS.n_frames or max(window - prompt_frames, 1)
        if prompt_frames + n_frames > window:
            print(f"m4mjax.sample: warning: {prompt_frames} + {n_frames} frames exceed the training window of "
                  f"{window} frames; positions past it were never trained", file=sys.stderr)
        timing = None
        if FLAGS.prompt:
            try:
                prompt, timing = sampling.load_prompt(FLAGS.prompt, prompt_frames, cfg.model.max_frame_tokens,
                                                      cfg.model.get("row_format", "eos"))
            except ValueError as e:  # tokenizer.load_midi / midi_to_notes name the file and the problem
                raise cli.user_error(e, FLAGS.prompt) from e
        model, _ = runs.load_run(FLAGS.workdir, streams=runs.LM_STREAMS)
        if not FLAGS.prompt:
            prompt = sampling.test_prompt(FLAGS.workdir, prompt_frames)
        f0 = prompt.shape[0]
        batch = np.repeat(prompt[None], FLAGS.num_samples, axis=0)
        out = np.asarray(sampling.generate(model, batch, n_frames, jax.random.key(FLAGS.seed), FLAGS.temperature,
                                           FLAGS.top_p))
        for path in sampling.write_samples(out, FLAGS.out, timing):
            print(f"wrote {path} ({f0} prompt + {n_frames} sampled frames)")

    cli.run_main(run, "m4mjax.sample", argv=argv)


if __name__ == "__main__":
    main()
