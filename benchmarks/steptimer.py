"""One timing loop for the step benchmarks (ours and the PyTorch references): a first, untimed step (compile /
warm-up), then ``steps`` timed steps; wall and process-CPU seconds per step, and the machine's load."""
from __future__ import annotations

import os
import time
from typing import Any, Callable


def time_steps(step: Callable[[int, Any], Any], steps: int, carry: Any = None,
               sync: Callable[[Any], Any] = lambda x: x) -> tuple[dict, Any]:
    """``carry = step(i, carry)`` for i = 0 .. steps; ``sync(carry)`` waits for asynchronous work (e.g.
    jax.block_until_ready). Returns (timings, last carry): first_step_s, s_per_step, steps_per_s,
    cpu_s_per_step, loadavg."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = time.perf_counter()
    carry = sync(step(0, carry))
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(1, steps + 1):
        carry = step(i, carry)
    carry = sync(carry)
    dt, cpu = (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps
    return dict(first_step_s=round(first, 2), s_per_step=round(dt, 4), steps_per_s=round(1 / dt, 3),
                cpu_s_per_step=round(cpu, 4), loadavg=os.getloadavg()[0]), carry
