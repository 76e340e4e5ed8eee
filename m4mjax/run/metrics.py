"""Run metrics: workdir/metrics.jsonl (the notebooks' source) + TensorBoard, and a progress line.

Process 0 writes. Scalars only; a NaN/inf loss stops the run at once with the step and the key.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from typing import Iterable, Iterator, Mapping, TypeVar

import jax
import numpy as np

from m4mjax.run import io

T = TypeVar("T")


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


def _rows(path: str) -> list[dict]:
    """Parsed lines of a metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_metrics(workdir: str) -> list[dict]:
    """All rows of workdir/metrics.jsonl (for notebooks and summaries)."""
    return _rows(os.path.join(workdir, "metrics.jsonl"))


def truncate_metrics(workdir: str, step: int) -> int:
    """Drop the rows after ``step`` (written after the checkpoint a run resumes from), atomically, so a
    resumed run logs every step once. Process 0 only; returns the number of rows dropped."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    keep = [ln.rstrip("\n") + "\n" for ln in lines if 0 < (_step_of(ln) or 0) <= step]
    if len(keep) != len(lines):
        io.atomic_write(path, "".join(keep))
    return len(lines) - len(keep)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class Progress:
    """The train progress line: step, steps/s, units/s (e.g. frames/s), MFU, ETA.

    The first update (step 1, or the first step after a resume) prints the step and the time it took,
    compile included; rates are measured from there on, so compile time never counts in them. MFU needs
    both the model FLOPs per step and the per-device peak (``device_peak_flops``); otherwise "MFU n/a"."""

    def __init__(self, total_steps: int, start_step: int = 0, units_per_step: float = 0.0, unit: str = "frames",
                 flops_per_step: float = 0.0, peak_flops: float = 0.0, stream=None):
        self.total, self.units, self.unit = total_steps, units_per_step, unit
        self.flops, self.peak = flops_per_step, peak_flops
        self.stream = stream  # None: sys.stderr at the time of printing
        self._created = time.perf_counter()
        self._t0: float | None = None
        self._s0 = start_step
        self.rates: dict[str, float] = {}

    def update(self, step: int, extra: str = "") -> dict[str, float]:
        """Print the line for ``step`` (process 0) and return its rates (empty on the first update)."""
        now = time.perf_counter()
        line = f"step {step}/{self.total}"
        r: dict[str, float] = {}
        if self._t0 is None:
            line += f"  first step {now - self._created:.1f}s (compile included)"
            self._t0, self._s0 = now, step
        else:
            sps = (step - self._s0) / max(now - self._t0, 1e-9)
            r["steps_per_s"] = sps
            line += f"  {sps:.2f} steps/s"
            if self.units:
                r[f"{self.unit}_per_s"] = sps * self.units
                r[f"{self.unit}_per_s_per_device"] = sps * self.units / jax.device_count()
                u = sps * self.units
                line += f"  {u:,.0f} {self.unit}/s" if u >= 10 else f"  {u:.2g} {self.unit}/s"
            mfu = sps * self.flops / (self.peak * jax.device_count()) if self.flops and self.peak > 0 else 0.0
            if 0 < mfu <= 1:
                r["mfu"] = mfu
                line += f"  MFU {100 * mfu:.1f}%"
            elif mfu > 1:  # the cached peak was measured on a busy machine: never print an MFU over 100%
                line += "  MFU n/a (peak below this rate: set train.peak_flops or delete ~/.cache/m4mjax)"
            else:
                line += "  MFU n/a"
            line += f"  ETA {_fmt_time((self.total - step) / sps if sps > 0 else float('inf'))}"
        if extra:
            line += "  " + extra
        if jax.process_index() == 0:
            print(line, file=self.stream or sys.stderr, flush=True)
        self.rates = r
        return r


def progress_bar(iterable: Iterable[T], total: int | None, desc: str, stream=None, every_s: float = 30.0
                 ) -> Iterator[T]:
    """Yield the items of ``iterable`` while showing ``desc  n/total  rate  ETA`` on stderr (process 0):
    rewritten in place on a terminal; elsewhere (a log file) one line every ``every_s`` seconds. A final
    line says how many items took how long."""
    stream = stream or sys.stderr
    show = jax.process_index() == 0
    tty = show and hasattr(stream, "isatty") and stream.isatty()
    t0 = last = time.perf_counter()
    n = 0

    def status(now: float) -> str:
        rate = n / max(now - t0, 1e-9)
        of = f"/{total}" if total else ""
        eta = f"  ETA {_fmt_time((total - n) / rate)}" if total and rate > 0 else ""
        return f"{desc}  {n}{of}  {rate:.2f}/s{eta}"

    for item in iterable:
        yield item
        n += 1
        now = time.perf_counter()
        if show and now - last >= (0.2 if tty else every_s):
            last = now
            print(("\r\033[K" if tty else "") + status(now), end="" if tty else "\n", file=stream, flush=True)
    if show:
        done = f"{desc}  {n}{f'/{total}' if total else ''} in {_fmt_time(time.perf_counter() - t0)}"
        print(("\r\033[K" if tty else "") + done, file=stream, flush=True)


class Stages:
    """Progress of a job made of a few long vectorised stages (no per-item loop to count): ``stages.start(name)``
    prints ``desc [i/n] name  (elapsed, previous stage took ...)`` on stderr (process 0)."""

    def __init__(self, desc: str, n: int, stream=None):
        self.desc, self.n, self.i, self.stream = desc, n, 0, stream or sys.stderr
        self.t0 = self.last = time.perf_counter()

    def start(self, name: str) -> None:
        now = time.perf_counter()
        self.i += 1
        prev = f", previous stage {_fmt_time(now - self.last)}" if self.i > 1 else ""
        self.last = now
        if jax.process_index() == 0:
            print(f"{self.desc} [{self.i}/{self.n}] {name}  (elapsed {_fmt_time(now - self.t0)}{prev})",
                  file=self.stream, flush=True)


# --- the MFU denominator: a per-device peak measured once per machine ---------------------------------------
def _cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "m4mjax", "peak_flops.json")


def _machine_key() -> str:
    """Device kind x count (+ the host name on CPU, whose peak varies from machine to machine)."""
    d = jax.local_devices()[0]
    key = f"{d.device_kind} x{jax.local_device_count()}"
    return f"{key} @{platform.node()}" if d.platform == "cpu" else key


def measure_peak_flops(n: int = 0, repeats: int = 5) -> float:
    """Per-device matmul FLOP/s: one n x n @ n x n matmul on every local device at once (so devices that
    share hardware, e.g. fake CPU devices, share it here too), best of ``repeats`` after a warm-up."""
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devs = jax.local_devices()
    cpu = devs[0].platform == "cpu"
    n = n or (512 if cpu else 8192)
    mesh = Mesh(np.array(devs), ("d",))
    sh = NamedSharding(mesh, PartitionSpec("d"))
    best = float("inf")
    with jax.set_mesh(mesh):  # every device, whatever mesh the caller's run holds (a run may use fewer)
        a = jax.device_put(jnp.ones((len(devs), n, n), jnp.float32 if cpu else jnp.bfloat16) / n, sh)
        f = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x), out_shardings=sh)
        f(a).block_until_ready()
        for _ in range(repeats):
            t = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def device_peak_flops(configured: float = 0.0) -> float:
    """The per-device peak FLOP/s for MFU: ``configured`` when > 0; when 0, measured once per machine
    (``measure_peak_flops``) and cached in ~/.cache/m4mjax/peak_flops.json by device kind and count;
    0.0 (MFU n/a) when ``configured`` < 0."""
    if configured:
        return max(float(configured), 0.0)
    path, key = _cache_path(), _machine_key()
    cache = {}
    try:
        with open(path) as f:
            cache = json.load(f)
        if float(cache[key]["flops_per_device"]) > 0:
            return float(cache[key]["flops_per_device"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    peak = measure_peak_flops()
    cache = cache if isinstance(cache, dict) else {}
    cache[key] = {"flops_per_device": peak, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        io.atomic_write(path, json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass  # read-only home: measure again next time
    return peak


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
