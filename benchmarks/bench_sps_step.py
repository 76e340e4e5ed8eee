"""Steps/s of the SPS `:paper` audio train step (batch 20, K=4, F=513x5, T=15, d=1), 1 seed and N vmapped seeds.

    .venv/bin/python benchmarks/bench_sps_step.py --seeds 1,10 --steps 5 [--conv_impl lax] [--freq_bins 513]

Prints one JSON line per seed count: wall and process-CPU seconds per step, seconds per seed-step, compile time. Random data of the
real dataset's size (26 sequences). Compare with benchmarks/sps_torch_ref.py on the same machine (check `uptime`).
"""
from __future__ import annotations

import argparse
import json
from steptimer import time_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,10", help="comma-separated seed counts")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per seed count (after 1 warm-up step)")
    ap.add_argument("--conv_impl", default="matmul", choices=["matmul", "lax"])
    ap.add_argument("--freq_bins", type=int, default=513)
    ap.add_argument("--dataset", type=int, default=26, help="sequences in the in-memory dataset")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from symmetry.model import audio_config
    from symmetry.step import init_state, make_train_step

    cfg = audio_config(conv_impl=args.conv_impl, freq_bins=args.freq_bins)
    data = jax.random.uniform(jax.random.key(1), (args.dataset, 15, cfg.freq_bins, cfg.frames), jnp.float32)
    for n in [int(s) for s in args.seeds.split(",")]:
        state = init_state(cfg, n, jax.random.key(0))
        step = make_train_step(cfg)

        def one(i, carry):
            return step(carry[0], data, i, jax.random.key(i))

        t, (state, m) = time_steps(one, args.steps, (state, None), jax.block_until_ready)
        print(json.dumps(dict(impl="jax", conv_impl=args.conv_impl, seeds=n, s_per_seed_step=round(t["s_per_step"] / n, 4),
                              seed_steps_per_s=round(n / t["s_per_step"], 3), loss0=float(m["loss"][0]),
                              backend=jax.default_backend(), **t)), flush=True)

if __name__ == "__main__":
    main()
