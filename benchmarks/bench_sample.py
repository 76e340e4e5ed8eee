"""Sampling throughput (frames/s) of the KV-cache sampler for 1 prompt vs a batch of prompts.

    python benchmarks/bench_sample.py [--shape=small|paper --batches=1,16 --prompt_frames=64 --n_frames=64 --eos_bias=4.0]

Model (fresh weights): ``--shape=small`` the `:small` experiment shape (width 256, 4 global layers, 2 local
layers), ``--shape=paper`` the released foundation model's (spec size 1: width 768, 12 global layers, 3 local).
An untrained model almost never emits EOS, so every frame would run to L tokens; ``--eos_bias`` adds
to the EOS logit's bias to give a realistic frame length (the mean tokens per frame is reported).
Time excludes compilation (one warm-up call per batch size); best of ``--repeats``.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.model import M4MTransformer, model_config
from m4mjax.sampling import generate


def small_config():
    """The `:small` experiment's model shape (experiments/m4m/lm_pretrain.py)."""
    cfg = model_config(0)
    cfg.update(width=256, layers=4, heads=4, ffn=1024, local_layers=2, local_heads=4, local_ffn=512, max_frames=512)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="small", choices=("small", "paper"))
    p.add_argument("--batches", default="1,16")
    p.add_argument("--prompt_frames", type=int, default=64)
    p.add_argument("--n_frames", type=int, default=64)
    p.add_argument("--eos_bias", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    cfg = small_config() if args.shape == "small" else model_config(1)
    cfg.dtype = args.dtype
    model = M4MTransformer(cfg, rngs=nnx.Rngs(0))
    model.head_b[...] = model.head_b[...].at[cfg.eos_id].add(args.eos_bias)
    rng = np.random.default_rng(0)
    results = []
    for B in [int(b) for b in args.batches.split(",")]:
        prompt = np.full((B, args.prompt_frames, cfg.max_frame_tokens), cfg.pad_id, np.int32)
        for b in range(B):
            for f in range(args.prompt_frames):
                k = rng.integers(0, 6)
                prompt[b, f, :2 * k] = rng.integers(0, 3328, 2 * k)
                prompt[b, f, 2 * k] = cfg.eos_id
        prompt = jnp.asarray(prompt)
        t0 = time.perf_counter()
        out = generate(model, prompt, args.n_frames, jax.random.key(0)).block_until_ready()
        first = time.perf_counter() - t0
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            out = generate(model, prompt, args.n_frames, jax.random.key(r + 1)).block_until_ready()
            times.append(time.perf_counter() - t0)
        new = np.asarray(out[:, args.prompt_frames:])
        tokens_per_frame = float(((new != cfg.pad_id) & (new != cfg.eos_id)).sum() / new[..., 0].size)
        best = min(times)
        results.append(dict(shape=args.shape, batch=B, prompt_frames=args.prompt_frames, n_frames=args.n_frames,
                            dtype=args.dtype,
                            compile_plus_first_s=round(first, 2), best_s=round(best, 3),
                            frames_per_s=round(B * args.n_frames / best, 1),
                            mean_tokens_per_frame=round(tokens_per_frame, 2), load=os.getloadavg()[0]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        print(json.dumps(dict(batch_speedup=round(results[-1]["frames_per_s"] / results[0]["frames_per_s"], 2))))


if __name__ == "__main__":
    main()
