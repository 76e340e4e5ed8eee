"""Steps/s of the SPS `:paper` ball train step (batch 32, K=4 on the translation and rotation paths, 32x32x3,
T=20, d=3, prediction-to-prediction term on), 1 seed and N vmapped seeds.

    .venv/bin/python benchmarks/bench_sps_video_step.py --seeds 1,10 --steps 5
    .venv/bin/python benchmarks/bench_sps_video_step.py --tiny            # smoke size (tests / a busy machine)

Prints one JSON line per seed count: wall and process-CPU seconds per step, seeds-steps/s, compile time. Random
uint8 frames of the paper's training-set size (512 trajectories). Compare with benchmarks/sps_video_torch_ref.py
(an independent PyTorch step written for this benchmark) on the same machine (check `uptime`).
"""
from __future__ import annotations

import argparse
import json
from steptimer import time_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,10", help="comma-separated seed counts")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per seed count (after 1 warm-up step)")
    ap.add_argument("--dataset", type=int, default=512, help="trajectories in the in-memory dataset")
    ap.add_argument("--tiny", action="store_true", help="batch 4, K 1, conv widths (8,16,16), RNN 16, 8 frames")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from symmetry.model import ball_config
    from symmetry.step import init_state, make_train_step

    over = dict(batch_size=4, K=1, ball_channels=(8, 16, 16), rnn_hidden=16) if args.tiny else {}
    cfg = ball_config(**over)
    frames = 8 if args.tiny else 20
    n = max(args.dataset if not args.tiny else 16, cfg.batch_size)
    data = jax.random.randint(jax.random.key(1), (n, frames, 32, 32, 3), 0, 256, jnp.int32).astype(jnp.uint8)
    for seeds in [int(s) for s in args.seeds.split(",")]:
        state = init_state(cfg, seeds, jax.random.key(0))
        step = make_train_step(cfg)

        def one(i, carry):
            return step(carry[0], data, i, jax.random.key(i))

        t, (state, m) = time_steps(one, args.steps, (state, None), jax.block_until_ready)
        print(json.dumps(dict(impl="jax", tiny=args.tiny, seeds=seeds, seed_steps_per_s=round(seeds / t["s_per_step"], 3),
                              loss0=float(m["loss"][0]), backend=jax.default_backend(), **t)), flush=True)

if __name__ == "__main__":
    main()
