"""The only file that touches Orbax.

A checkpoint is a step directory holding named items: pytrees of arrays (e.g. ``params`` as a pure
dict, ``opt`` as optimizer state) saved with StandardSave, plus ``data`` (the input iterator state,
JSON). Restoring with an abstract target whose leaves carry shardings puts the arrays straight onto
the current mesh, whatever mesh wrote them. No pickle anywhere.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

_preempted = threading.Event()


def _on_sigterm(signum, frame):  # noqa: ARG001
    _preempted.set()


class Checkpointer:
    """Periodic + on-preemption saves into ``workdir/checkpoints``; keeps the latest ``keep``."""

    def __init__(self, workdir: str, every: int, keep: int = 3):
        self.every = int(every)
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False))
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _on_sigterm)

    @property
    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    @property
    def preempted(self) -> bool:
        """True once SIGTERM arrived (or, on a multi-host slice, the cluster announced preemption)."""
        if _preempted.is_set():
            return True
        if jax.process_count() > 1 and self.latest_step is not None:
            return bool(self._mngr.reached_preemption(self.latest_step))
        return False

    def restore(self, abstract: dict[str, Any], step: int | None = None) -> tuple[int, dict[str, Any], Any] | None:
        """Restore items named like ``abstract`` (ShapeDtypeStructs with shardings) and the data state.

        Returns (step, items, data_state) or None when there is no checkpoint yet."""
        step = self.latest_step if step is None else step
        if step is None:
            return None
        args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
        if self._has_item(step, "data"):
            args["data"] = ocp.args.JsonRestore()
        out = self._mngr.restore(step, args=ocp.args.Composite(**args))
        return step, {k: out[k] for k in abstract}, out.get("data") if "data" in args else None

    def due(self, step: int, force: bool = False) -> bool:
        """Whether save(step) would write: on the interval, on preemption or when forced, once per step."""
        if not (force or self.preempted or (self.every > 0 and step % self.every == 0)):
            return False
        return self.latest_step != step

    def save(self, step: int, items: dict[str, Any], data_state: Any = None, force: bool = False) -> bool:
        """Save when ``step`` is on the interval, on preemption, or when forced. Returns True if saved."""
        if not self.due(step, force):
            return False
        args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        self._mngr.save(step, args=ocp.args.Composite(**args), force=True)
        self._mngr.wait_until_finished()
        return True

    def _has_item(self, step: int, name: str) -> bool:
        return os.path.isdir(os.path.join(self.directory, str(step), name))

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def load_params(workdir: str, item: str = "params", step: int | None = None) -> dict:
    """Weights only (e.g. for sampling, evaluation or ``init_from``): the pure dict saved as ``item``."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise ValueError(f"{workdir}: no checkpoints/ directory — has this run saved a checkpoint yet?")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                               item_handlers={item: ocp.StandardCheckpointHandler()}) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{workdir}: no checkpoint found in {directory}")
        # Target = saved shapes on this process's first device, so a run saved on a pod opens on a laptop.
        meta = mngr.item_metadata(step)[item]
        meta = getattr(meta, "tree", meta)
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=dev), meta,
                              is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
        out = mngr.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
    return out[item]
