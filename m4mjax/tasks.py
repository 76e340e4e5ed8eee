"""Tasks: what a run trains. Each task names its model builder, its loss, and which variables the
optimizer updates (everything else is frozen and carries no optimizer state).

The function-alignment tasks (chord<->melody, drums<->others, analysis; spec §4-§5) plug in here as
further entries with a linked model and trainable = adapters (+ LoRA).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
from flax import nnx

from m4mjax import model as lm

Loss = Callable[[nnx.Module, dict, jax.Array | None], tuple[jax.Array, dict]]


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    build: Callable[[ml_collections.ConfigDict, nnx.Rngs], nnx.Module]  # (full config, rngs) -> model
    loss: Loss                       # (model, batch, dropout key or None) -> (mean loss, metrics)
    trainable: Any = nnx.Param       # nnx filter: variables the optimizer updates
    streams: tuple[str, ...] = ("tokens",)  # batch keys the task reads


def _lm_build(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return lm.M4MTransformer(cfg.model, rngs=rngs)


def _lm_loss(model: nnx.Module, batch: dict, key: jax.Array | None) -> tuple[jax.Array, dict]:
    return lm.loss_fn(model, batch["tokens"], key)


TASKS: dict[str, Task] = {
    "lm": Task("lm", _lm_build, _lm_loss),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is not a task; known: {sorted(TASKS)}")
    return TASKS[name]
