"""python -m m4mjax.evaluate --workdir=W  ->  W/eval.json

Held-out token loss / perplexity / accuracy of the latest checkpoint on the valid and test splits,
beside a unigram baseline (token frequencies of the training split, add-one smoothed) on the same
tokens: the number a trained LM must clearly beat.
"""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from absl import app, flags

from m4mjax import train as train_lib
from m4mjax.datasets import pipeline
from m4mjax.run import checkpoint, cli, mesh as mesh_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing this module is side-effect free)."""
    flags.DEFINE_string("workdir", None, "Run directory written by m4mjax.train.", required=True)
    flags.DEFINE_integer("max_batches", 0, "Cap on batches per split (0 = the whole split).")
    flags.DEFINE_string("splits", "valid,test", "Comma-separated held-out splits.")


def unigram_counts(cfg, max_batches: int) -> np.ndarray:
    """Target-token counts over fixed training windows (what the LM's loss counts: non-PAD tokens)."""
    counts = np.ones(cfg.model.vocab_size, np.float64)  # add-one smoothing
    for i, batch in enumerate(pipeline.make_dataset(cfg.data, "train", seed=0, train=False)):
        if max_batches and i >= max_batches:
            break
        t = np.asarray(batch["tokens"]).reshape(-1)
        counts += np.bincount(t[t != cfg.model.pad_id], minlength=cfg.model.vocab_size)
    return counts


def unigram_loss(cfg, counts: np.ndarray, split: str, max_batches: int) -> float:
    logp = np.log(counts / counts.sum())
    tot, n = 0.0, 0
    for i, batch in enumerate(pipeline.make_dataset(cfg.data, split, seed=0)):
        if max_batches and i >= max_batches:
            break
        t = np.asarray(batch["tokens"]).reshape(-1)
        t = t[t != cfg.model.pad_id]
        tot -= logp[t].sum()
        n += t.size
    return tot / max(n, 1)


def evaluate(workdir: str, splits=("valid", "test"), max_batches: int = 0) -> dict:
    cfg = cli.load_config(workdir)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    out = {"workdir": os.path.abspath(workdir), "step": checkpoint.Checkpointer(workdir, 0).latest_step}
    with mesh_lib.use_mesh(mesh):
        s = train_lib.Setup(cfg, mesh, with_optimizer=False)
        _, _, rest = s.init_model()
        trainable, frozen = s.split_pure(checkpoint.load_params(workdir))
        trainable, frozen = jax.device_put((trainable, frozen), s.shardings[:2])
        eval_fn = s.eval_step_fn()
        counts = unigram_counts(cfg, max_batches)
        for split in splits:
            r = train_lib.evaluate_loss(s, eval_fn, trainable, frozen, rest, max_batches, split)
            u = unigram_loss(cfg, counts, split, max_batches)
            r.update(unigram_loss=u, unigram_perplexity=math.exp(u))
            out[split] = r
            print(f"{split}: loss {r['loss']:.4f}  ppl {r['perplexity']:.2f}  acc {r['accuracy']:.3f}  "
                  f"| unigram ppl {r['unigram_perplexity']:.2f}  ({int(r['tokens'])} tokens)")
    cli.atomic_write_text(os.path.join(workdir, "eval.json"), json.dumps(out, indent=2))
    print(f"wrote {os.path.join(workdir, 'eval.json')}")
    return out


def main(argv):
    del argv
    evaluate(FLAGS.workdir, tuple(FLAGS.splits.split(",")), FLAGS.max_batches)


if __name__ == "__main__":
    define_flags()
    app.run(main)
