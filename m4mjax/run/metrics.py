"""Run metrics: workdir/metrics.jsonl (the notebooks' source) + TensorBoard, and a progress line.

Process 0 writes. Scalars only; a NaN/inf loss stops the run at once with the step and the key.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import jax
import numpy as np


def _scalars(metrics: Mapping) -> dict[str, float | list[float]]:
    out = {}
    for k, v in metrics.items():
        a = np.asarray(jax.device_get(v))
        out[k] = float(a) if a.ndim == 0 else [float(x) for x in a.reshape(-1)]
    return out


class MetricWriter:
    """Appends one JSON object per call to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter  # the one metric back end; touched only here
                self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: Mapping, prefix: str = "") -> dict:
        vals = {f"{prefix}{k}": v for k, v in _scalars(metrics).items()}
        for k, v in vals.items():
            bad = [x for x in (v if isinstance(v, list) else [v]) if not math.isfinite(x)]
            if bad and ("loss" in k):
                raise FloatingPointError(f"step {step}: metric {k!r} is not finite ({v}); stopping.")
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": int(step), "time": time.time(), **vals}) + "\n")
            if self._tb is not None:
                for k, v in vals.items():
                    if isinstance(v, list):  # per-seed values: one curve each
                        for i, x in enumerate(v):
                            self._tb.add_scalar(f"{k}/seed{i}", x, step)
                    else:
                        self._tb.add_scalar(k, v, step)
                self._tb.flush()
        return vals

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of workdir/metrics.jsonl (for notebooks and summaries)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A progress line: step, steps/s, units/s (e.g. frames/s), MFU, ETA. Compile time excluded:
    the clock starts at the first ``update`` (after the first step has compiled and run)."""

    def __init__(self, total_steps: int, start_step: int = 0, units_per_step: float = 0.0, unit: str = "frames",
                 flops_per_step: float = 0.0, peak_flops: float = 0.0, stream=sys.stderr):
        self.total, self.units, self.unit = total_steps, units_per_step, unit
        self.flops, self.peak = flops_per_step, peak_flops
        self.stream = stream
        self._t0: float | None = None
        self._s0 = start_step
        self.rates: dict[str, float] = {}

    def update(self, step: int, extra: str = "") -> dict[str, float]:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._s0 = now, step
            return {}
        done = step - self._s0
        dt = max(now - self._t0, 1e-9)
        sps = done / dt
        r = {"steps_per_s": sps}
        line = f"step {step}/{self.total}  {sps:.2f} steps/s"
        if self.units:
            r[f"{self.unit}_per_s"] = sps * self.units
            r[f"{self.unit}_per_s_per_device"] = sps * self.units / jax.device_count()
            line += f"  {sps * self.units:,.0f} {self.unit}/s"
        if self.flops and self.peak:
            r["mfu"] = sps * self.flops / (self.peak * jax.device_count())
            line += f"  MFU {100 * r['mfu']:.1f}%"
        eta = (self.total - step) / sps if sps > 0 else float("inf")
        line += f"  ETA {_fmt_time(eta)}"
        if extra:
            line += "  " + extra
        if jax.process_index() == 0:
            print(line, file=self.stream, flush=True)
        self.rates = r
        return r


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
