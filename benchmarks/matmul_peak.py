"""Measured matmul peak (GFLOP/s) of this machine under JAX: the denominator for MFU figures.

    python benchmarks/matmul_peak.py [--n=2048] [--repeats=10] [--dtypes=float32,bfloat16]

Large square matmuls (2*n^3 FLOPs each), jitted, timed after one warm-up call; the best of
``repeats`` runs is reported (best, not mean: other processes on a shared machine only slow it down).
Prints one JSON line per dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp


def measure(n: int, dtype: str, repeats: int) -> dict:
    """Best-of-``repeats`` GFLOP/s for an n x n @ n x n matmul in ``dtype``."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    return dict(dtype=dtype, n=n, best_s=min(times), gflops=flops / min(times) / 1e9,
                median_gflops=flops / sorted(times)[len(times) // 2] / 1e9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args()
    for dt in args.dtypes.split(","):
        r = measure(args.n, dt, args.repeats)
        r.update(backend=jax.default_backend(), devices=jax.device_count(), cpus=os.cpu_count(),
                 load=os.getloadavg()[0])
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
