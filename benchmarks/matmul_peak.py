"""Measured matmul peak (GFLOP/s) of this machine under JAX: the denominator for MFU figures.

    python benchmarks/matmul_peak.py [--n=2048] [--repeats=10] [--dtypes=float32,bfloat16]
    python benchmarks/matmul_peak.py --rows=1,16,64 --k=256 --n=768 --dtypes=float32

Large square matmuls (2*n^3 FLOPs each), jitted, timed after one warm-up call; the best of
``repeats`` runs is reported (best, not mean: other processes on a shared machine only slow it down).
``--rows``: instead, M x k @ k x n matmuls at each M (a sampler's token step multiplies M = batch rows by
each weight), 300 chained inside one jitted loop so dispatch is not timed; shows how the rate grows with M.
Prints one JSON line per dtype (and M).
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


def measure_rows(m: int, k: int, n: int, dtype: str, repeats: int, chain: int = 300) -> dict:
    """Best-of-``repeats`` GFLOP/s of ``chain`` dependent m x k @ k x n matmuls (n >= k) in one jitted loop."""
    if n < k:
        raise SystemExit("matmul_peak: --rows needs n >= k (each product feeds the next)")
    w = (jax.random.normal(jax.random.key(1), (k, n), jnp.float32) / k**0.5).astype(dtype)
    x0 = jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: jax.lax.fori_loop(0, chain, lambda i, x: jnp.tanh(x @ w)[:, :k], x))
    f(x0).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(x0).block_until_ready()
        times.append(time.perf_counter() - t0)
    flops = 2.0 * m * k * n * chain
    return dict(dtype=dtype, m=m, k=k, n=n, us_per_matmul=round(min(times) / chain * 1e6, 1),
                gflops=flops / min(times) / 1e9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rows", default="", help="comma-separated M: time M x k @ k x n instead of n x n squares")
    p.add_argument("--k", type=int, default=256)
    args = p.parse_args()
    runs = [(dt, None) for dt in args.dtypes.split(",")] if not args.rows else \
        [(dt, int(m)) for dt in args.dtypes.split(",") for m in args.rows.split(",")]
    for dt, m in runs:
        r = measure(args.n, dt, args.repeats) if m is None else measure_rows(m, args.k, args.n, dt, args.repeats)
        r.update(backend=jax.default_backend(), devices=jax.device_count(), cpus=os.cpu_count(),
                 load=os.getloadavg()[0])
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
