"""Audit: can an analysis run's model read the reference at all? One training batch, EVERY target frame masked
(link.mask_prob=1, mask_length=frames: the label past is hidden, so only the music tells the 8 windows apart),
fresh weights, N steps; then the teacher-forced loss on that batch (masking on, as trained) with each window's own
music and with another window's (the batch rolled by one). A working reference path gives own << other.

    python scripts/overfit_reference.py --workdir=workdirs/analysis_scratch_w3 --steps=60
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax import steps as steps_lib
from m4mjax.datasets import pipeline
from m4mjax.run import cli, data as data_lib, mesh as mesh_lib


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    cfg = cli.load_config(args.workdir)
    cfg.link.mask_prob, cfg.link.mask_length, cfg.link.mask_stream = 1.0, int(cfg.data.frames), "target"
    cfg.optim.schedule, cfg.optim.lr = "constant", 1e-3
    mesh = mesh_lib.make_mesh(cfg.mesh)
    with mesh_lib.use_mesh(mesh):
        s = steps_lib.Setup(cfg, mesh)
        step_fn = s.train_step_fn()
        batch = data_lib.global_batch(mesh, next(pipeline.make_dataset(cfg.data, "train", seed=1)))
        t, f, r = s.init_model()
        opt = s.init_opt(t)
        curve = []
        for i in range(args.steps):
            t, opt, m = step_fn(t, opt, f, r, batch, jnp.int32(i))
            if i % 10 == 0 or i == args.steps - 1:
                curve.append((i + 1, round(float(m["loss"]), 4)))
                print(curve[-1], flush=True)
        graphdef = s.graphdef
        key = jax.random.key(123)  # masking on (as trained), dropout too: the same for both readings

        @jax.jit
        def loss(t, ref):
            from m4mjax import linked
            model = nnx.merge(graphdef, t, f, r)
            return linked.loss_fn(model, {"reference": ref, "target": batch["target"]}, key)[0]

        own = float(loss(t, batch["reference"]))
        other = float(loss(t, jnp.roll(batch["reference"], 1, axis=0)))
    print(json.dumps(dict(workdir=args.workdir, steps=args.steps, curve=curve, loss_own_music=round(own, 4),
                          loss_other_music=round(other, 4))))


if __name__ == "__main__":
    main()
