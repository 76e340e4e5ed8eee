"""python -m m4mjax.evaluate --workdir=W  ->  W/eval.json

Held-out token loss / perplexity / accuracy of the latest checkpoint on the valid and test splits (every
fixed window, unless --max_batches; eval.json says which windows under "covers"), beside a unigram baseline
(token frequencies of the training split, add-one smoothed) on the same tokens: the number a trained LM must
clearly beat. The in-training "valid" numbers cover only train.eval_batches batches of windows spread over
the split, so they differ from these by sampling noise.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import flags

from m4mjax import steps as steps_lib
from m4mjax.run import checkpoint, cli, io, mesh as mesh_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing this module is side-effect free)."""
    flags.DEFINE_string("workdir", None, "Run directory written by m4mjax.train.", required=True)
    flags.DEFINE_integer("max_batches", 0, "Batches per split, windows spread over it (0 = the whole split).")
    flags.DEFINE_string("splits", "valid,test", "Comma-separated held-out splits.")
    cli.check_nonempty_flag("workdir")
    cli.check_flag("max_batches", lambda n: n >= 0, "must be >= 0")
    cli.check_flag("splits", lambda s: all(x in ("train", "valid", "test") for x in s.split(",")),
                   "comma-separated names from train, valid, test")


def unigram_counts(cfg, max_batches: int) -> np.ndarray:
    """Target-token counts over fixed training windows (what the LM's loss counts: non-PAD tokens)."""
    counts = np.ones(cfg.model.vocab_size, np.float64)  # add-one smoothing
    for batch in steps_lib.eval_batches(cfg, "train", max_batches, "unigram counts (train): batches", train=False)[0]:
        t = np.asarray(batch["tokens"]).reshape(-1)
        counts += np.bincount(t[t != cfg.model.pad_id], minlength=cfg.model.vocab_size)
    return counts


def unigram_loss(cfg, counts: np.ndarray, split: str, max_batches: int) -> float:
    """Mean unigram cross-entropy (nats) of ``split``'s non-PAD tokens under ``counts``."""
    logp = np.log(counts / counts.sum())
    tot, n = 0.0, 0
    for batch in steps_lib.eval_batches(cfg, split, max_batches, f"{split}: unigram baseline, batches")[0]:
        t = np.asarray(batch["tokens"]).reshape(-1)
        t = t[t != cfg.model.pad_id]
        tot -= logp[t].sum()
        n += t.size
    return tot / max(n, 1)


def evaluate(workdir: str, splits=("valid", "test"), max_batches: int = 0) -> dict:
    """Score the latest checkpoint of ``workdir`` on ``splits``; writes and returns W/eval.json's content."""
    cfg = cli.load_config(workdir)
    from m4mjax import tasks as tasks_lib

    task_eval = tasks_lib.get_task(cfg.get("task", "lm")).evaluator()
    if task_eval is not None:  # a task with its own measure (analysis: mir_eval chords + downbeat F)
        return task_eval(workdir, cfg, max_batches)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    out = {"workdir": os.path.abspath(workdir), "step": checkpoint.latest_step(workdir)}
    with mesh_lib.use_mesh(mesh):
        s = steps_lib.Setup(cfg, mesh, with_optimizer=False)
        _, _, rest = s.init_model()
        trainable, frozen = s.split_pure(checkpoint.restore_params(workdir, s.pure_abstract(), step=out["step"]))
        eval_fn = s.eval_step_fn()
        counts = unigram_counts(cfg, max_batches)
        for split in splits:
            r = steps_lib.evaluate_loss(s, eval_fn, trainable, frozen, rest, max_batches, split, show_progress=True)
            u = unigram_loss(cfg, counts, split, max_batches)
            r.update(unigram_loss=u, unigram_perplexity=math.exp(u))
            out[split] = r
            print(f"{split}: loss {r['loss']:.4f}  ppl {r['perplexity']:.2f}  acc {r['accuracy']:.3f}  "
                  f"| unigram ppl {r['unigram_perplexity']:.2f}  ({int(r['tokens'])} tokens, {r['covers']})")
    io.atomic_write(os.path.join(workdir, "eval.json"), json.dumps(out, indent=2))
    print(f"wrote {os.path.join(workdir, 'eval.json')}")
    return out


def main(argv):
    del argv
    evaluate(FLAGS.workdir, tuple(FLAGS.splits.split(",")), FLAGS.max_batches)


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, "m4mjax.evaluate")
