"""Training-step time of a real run's config on its real data (any task: the foundation LM or a linked task).

    python benchmarks/bench_run_step.py --workdir=workdirs/analysis_scratch_w3 [--set model.head_capacity=0.5
        --set data.target_frame_tokens=17 ...] [--steps=5]

The config is the run's ``config.json`` with ``--set key=value`` overrides (value parsed as JSON, else a
string); the model is freshly initialised (timing only). Batches come from the run's training data, drawn before
timing; each timed step takes the next one, so fill-dependent paths (the sparse head) see real batches. Prints
one JSON line: compile seconds, seconds per step (median of --steps), frames/s, the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from m4mjax import steps as steps_lib
from m4mjax.datasets import pipeline
from m4mjax.run import cli, data as data_lib, mesh as mesh_lib


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", action="append", default=[], help="key=value config override (repeatable)")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    cfg = cli.load_config(args.workdir)
    for kv in args.set:
        key, _, val = kv.partition("=")
        node = cfg
        *path, leaf = key.split(".")
        for k in path:
            node = node[k]
        node[leaf] = _value(val)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    with mesh_lib.use_mesh(mesh):
        s = steps_lib.Setup(cfg, mesh)
        step_fn = s.train_step_fn()
        it = pipeline.make_dataset(cfg.data, "train", seed=cfg.seed)
        batches = [data_lib.global_batch(mesh, next(it)) for _ in range(args.steps + 1)]
        trainable, frozen, rest = s.init_model()
        opt = s.init_opt(trainable)
        t0 = time.perf_counter()
        trainable, opt, m = step_fn(trainable, opt, frozen, rest, batches[0], jnp.int32(0))
        float(m["loss"])
        first = time.perf_counter() - t0
        times = []
        for i in range(1, args.steps + 1):
            t0 = time.perf_counter()
            trainable, opt, m = step_fn(trainable, opt, frozen, rest, batches[i], jnp.int32(i))
            float(m["loss"])
            times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    frames = cfg.data.batch_size * cfg.data.frames
    print(json.dumps(dict(workdir=args.workdir, overrides=args.set, first_step_s=round(first, 1),
                          step_s=round(dt, 3), step_s_all=[round(t, 3) for t in times],
                          frames_per_s=round(frames / dt, 1), loss=float(m["loss"]), load=os.getloadavg())))


if __name__ == "__main__":
    main()
