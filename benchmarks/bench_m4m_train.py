"""Training-step throughput and MFU of the foundation LM (fwd + bwd + AdamW, jitted, donated).

    python benchmarks/bench_m4m_train.py --size=1 --batch=1 --frames=384 [--dtype=float32 --remat=0
        --notes_per_frame=4 --max_frame_tokens=33 --steps=3 --peak_gflops=0]

Synthetic tokens with a realistic fill: each frame holds Poisson(notes_per_frame) notes (2 tokens each,
capped at (L-1)/2), then EOS, then PAD. The model is dense over all L slots of a frame (PAD keys are not
masked in the official local encoder), so the fill changes the loss's token count, not the FLOPs.

Model FLOPs per step = 3 x forward matmul FLOPs (backward = 2 x forward), where forward =
  2 * [ B*F*(L+1) * P_local  +  B*F * P_global  +  B*F*L * (P_local + E*V) ]          (dense layers)
  + 4 * [ B*F*(L+1)^2 * E * n_local  +  B*F^2 * E * n_global  +  B*F*L^2 * E * n_local ] (QK^T and PV)
with P_local / P_global the matmul weights of one stack (4 E^2 + 2 E*ffn per layer). MFU = achieved model
FLOP/s / measured matmul peak (benchmarks/matmul_peak.py, measured here first unless --peak_gflops).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m4mjax.model import M4MTransformer, loss_fn, model_config, train_step_flops as step_flops


def synthetic_tokens(cfg, batch: int, frames: int, notes_per_frame: float, seed: int = 0) -> np.ndarray:
    """Frame rows with Poisson(notes_per_frame) notes: instrument, pitch-duration pairs, EOS, PAD."""
    rng = np.random.default_rng(seed)
    L = cfg.max_frame_tokens
    out = np.full((batch, frames, L), cfg.pad_id, np.int32)
    k = np.minimum(rng.poisson(notes_per_frame, (batch, frames)), (L - 1) // 2)
    for b in range(batch):
        for f in range(frames):
            n = k[b, f]
            out[b, f, 0:2 * n:2] = rng.integers(0, 128, n)
            out[b, f, 1:2 * n:2] = rng.integers(128, 3328, n)
            out[b, f, 2 * n] = cfg.eos_id
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=384)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--remat", type=int, default=0)
    p.add_argument("--notes_per_frame", type=float, default=4.0)
    p.add_argument("--max_frame_tokens", type=int, default=33)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--peak_gflops", type=float, default=0.0, help="f32 matmul peak; 0 = measure now")
    args = p.parse_args()

    cfg = model_config(args.size)
    cfg.update(dtype=args.dtype, remat=bool(args.remat), max_frame_tokens=args.max_frame_tokens,
               dropout=args.dropout)
    model = M4MTransformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt_state = tx.init(params)

    def train_step(params, opt_state, tokens, key):
        def loss(params):
            return loss_fn(nnx.merge(graphdef, params), tokens, key)

        (l, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, l, aux["tokens"]

    train_step = jax.jit(train_step, donate_argnums=(0, 1))  # params and optimizer state updated in place
    tokens = jnp.asarray(synthetic_tokens(cfg, args.batch, args.frames, args.notes_per_frame))
    t0 = time.perf_counter()
    compiled = train_step.lower(params, opt_state, tokens, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - t0
    params, opt_state, l, ntok = compiled(params, opt_state, tokens, jax.random.key(0))  # warm-up
    float(l)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        params, opt_state, l, ntok = compiled(params, opt_state, tokens, jax.random.key(i + 1))
        float(l)
        times.append(time.perf_counter() - t0)
    peak = args.peak_gflops
    if peak <= 0:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from matmul_peak import measure

        peak = measure(2048, "float32", 5)["gflops"]
    dt = float(np.median(times))
    flops = step_flops(cfg, args.batch, args.frames)
    print(json.dumps(dict(
        size=args.size, batch=args.batch, frames=args.frames, L=cfg.max_frame_tokens, dtype=args.dtype,
        remat=bool(args.remat), dropout=args.dropout, notes_per_frame=args.notes_per_frame,
        real_tokens_per_frame=float(ntok) / (args.batch * args.frames), loss=float(l),
        compile_s=round(compile_s, 1), step_s=round(dt, 3), step_s_all=[round(t, 3) for t in times],
        frames_per_s=round(args.batch * args.frames / dt, 1),
        frames_per_s_best=round(args.batch * args.frames / min(times), 1),
        model_tflop_per_step=round(flops / 1e12, 3),
        achieved_gflops=round(flops / dt / 1e9, 1), peak_gflops=round(peak, 1),
        mfu=round(flops / dt / 1e9 / peak, 3), load=os.getloadavg(), xla_flags=os.environ.get("XLA_FLAGS", ""))))


if __name__ == "__main__":
    main()
