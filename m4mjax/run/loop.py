"""What every trainer does after a step: a progress/metrics line on a cadence, a checkpoint on a cadence,
at the end or on SIGTERM. Shared by m4mjax.train and symmetry.train."""
from __future__ import annotations

import sys
from typing import Any, Callable

from m4mjax.run.checkpoint import Checkpointer
from m4mjax.run.metrics import MetricWriter, Progress, truncate_metrics


class StepTail:
    """``stop = tail(done, metrics, summary, items)`` after each step; ``tail.last`` = the last logged row.

    Created at the step the run (re)starts from: rows a killed run logged after its last checkpoint are
    dropped from metrics.jsonl first, so every step appears there once."""

    def __init__(self, workdir: str, steps: int, start: int, log_every: int, ckpt: Checkpointer, progress: Progress):
        self.steps, self.start, self.log_every = steps, start, log_every
        self.ckpt, self.progress = ckpt, progress
        truncate_metrics(workdir, start)
        self.writer = MetricWriter(workdir)
        self.last: dict[str, Any] = {}

    def __call__(self, done: int, metrics: dict, summary: Callable[[], str], items: Callable[[], dict],
                 data_state: Callable[[], Any] | None = None) -> bool:
        """Log ``metrics`` (with the progress line ``summary()``) on the cadence, the first and last step;
        save ``items()`` (+ ``data_state()``) when due. Returns True when preempted: the caller stops."""
        if done % self.log_every == 0 or done == self.steps or done == self.start + 1:
            rates = self.progress.update(done, summary())
            self.last = self.writer.write(done, {**metrics, **rates}, prefix="train/")
        force = done == self.steps
        if not self.ckpt.due(done, force):
            return False
        self.ckpt.save(done, items(), data_state() if data_state else None, force=force)
        if self.ckpt.preempted:
            print(f"preempted: saved step {done}, exiting", file=sys.stderr)
            return True
        return False

    def close(self) -> None:
        self.ckpt.close()
        self.writer.close()
