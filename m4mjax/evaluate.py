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

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from m4mjax import steps as steps_lib
from m4mjax.run import checkpoint, cli, io, mesh as mesh_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing this module is side-effect free)."""
    flags.DEFINE_string("workdir", None, "Run directory written by m4mjax.train.", required=True)
    flags.DEFINE_integer("max_batches", 0, "Batches per split, windows spread over it (0 = the whole split).")
    flags.DEFINE_string("splits", "valid,test", "Comma-separated held-out splits.")
    flags.DEFINE_string("data_name", "", "Score on another dataset (e.g. m4m_default/full) with the run's own "
                        "windows; writes W/eval_<name>.json instead of W/eval.json.")
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


@nnx.jit
def _global_outputs(model, tokens):
    """The global decoder's outputs [B,F,E] for tokens [B,F,L] (one compiled program, not op-by-op dispatch)."""
    frames, _ = model.local_encode(tokens)
    return model.global_decode(model.global_inputs(frames))[0]


def global_spread(model, tokens) -> float:
    """How much the global decoder's output changes from frame to frame: its std over frames divided by its
    std over features (mean over the batch; the SOS position left out). An untrained model gives ~0.2; near 0
    the global decoder has collapsed to one output for every frame, so nothing of the context (or of a linked
    reference) reaches the local decoder: the frame's first token then has the same distribution everywhere."""
    g = np.asarray(_global_outputs(model, jnp.asarray(tokens)), np.float64)[:, 1:]
    return float(g.std(axis=1).mean() / max(g.std(axis=-1).mean(), 1e-12))


SPREAD_WARNING = 0.01  # below this, evaluate warns that the global decoder has collapsed


def evaluate(workdir: str, splits=("valid", "test"), max_batches: int = 0, data_name: str = "") -> dict:
    """Score the latest checkpoint of ``workdir`` on ``splits``; writes and returns W/eval.json's content
    (``data_name``: another dataset's splits, written to W/eval_<name>.json)."""
    cfg = cli.load_config(workdir)
    out_name = "eval.json"
    if data_name:
        cfg.data.name = data_name
        out_name = "eval_" + "".join(c if c.isalnum() or c in "-." else "_" for c in data_name) + ".json"
    from m4mjax import task_evals, tasks as tasks_lib

    task_eval = task_evals.evaluator(tasks_lib.get_task(cfg.get("task", "lm")).name)
    if task_eval is not None:  # a task with its own measure (analysis: mir_eval chords + downbeat F)
        return task_eval(workdir, cfg, max_batches)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    out = {"workdir": os.path.abspath(workdir), "step": checkpoint.latest_step(workdir), "data": cfg.data.name}
    with mesh_lib.use_mesh(mesh):
        s = steps_lib.Setup(cfg, mesh, with_optimizer=False)
        # the checkpoint first (an unreadable one fails here); the model's init (compiled, then run: every weight
        # drawn) only when the model has state besides its parameters (the LM has none)
        trainable, frozen = s.split_pure(checkpoint.restore_params(workdir, s.pure_abstract(), step=out["step"]))
        rest = s.init_model()[2] if jax.tree_util.tree_leaves(s.abstract[2]) else s.abstract[2]
        eval_fn = s.eval_step_fn()
        counts = unigram_counts(cfg, max_batches)
        for split in splits:
            r = steps_lib.evaluate_loss(s, eval_fn, trainable, frozen, rest, max_batches, split, show_progress=True)
            u = unigram_loss(cfg, counts, split, max_batches)
            r.update(unigram_loss=u, unigram_perplexity=math.exp(u))
            out[split] = r
            print(f"{split}: loss {r['loss']:.4f}  ppl {r['perplexity']:.2f}  acc {r['accuracy']:.3f}  "
                  f"| unigram ppl {r['unigram_perplexity']:.2f}  ({int(r['tokens'])} tokens, {r['covers']})")
        batch = next(iter(steps_lib.eval_batches(cfg, splits[-1], 1)[0]))
        out["global_spread"] = global_spread(s.model(trainable, frozen, rest), batch["tokens"])
    print(f"global spread {out['global_spread']:.2g}" + (
        f"  WARNING: below {SPREAD_WARNING}: the global decoder gives (almost) the same output for every frame"
        if out["global_spread"] < SPREAD_WARNING else ""))
    io.atomic_write(os.path.join(workdir, out_name), json.dumps(out, indent=2))
    print(f"wrote {os.path.join(workdir, out_name)}")
    return out


def main(argv):
    del argv
    evaluate(FLAGS.workdir, tuple(FLAGS.splits.split(",")), FLAGS.max_batches, FLAGS.data_name)


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, "m4mjax.evaluate")
