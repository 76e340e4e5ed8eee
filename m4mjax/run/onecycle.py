"""PyTorch's ``OneCycleLR`` exactly, as the official pretraining ran it: learning rate AND Adam's beta1.

torch defaults (``anneal_strategy='cos'``, ``div_factor=25``, ``final_div_factor=1e4``, ``cycle_momentum=True``,
``base_momentum=0.85``, ``max_momentum=0.95``, two phases): the learning rate rises from ``max_lr / 25`` to
``max_lr`` by step ``pct_start * total - 1`` and falls to ``max_lr / 25 / 1e4`` at step ``total - 1``, cosine
both ways; beta1 moves the opposite way (0.95 -> 0.85 -> 0.95). The official ``training_step`` calls
``scheduler.step()`` before Lightning's optimizer step, so update ``t`` (0-based) uses the schedule at ``t + 1``
(``offset``). optax's ``cosine_onecycle_schedule`` differs: its phase ends are not torch's and beta1 stays put.
"""
from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import optax


def _cos(start, end, pct):
    return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1.0)


def torch_onecycle(total_steps: int, max_lr: float, pct_start: float = 0.3, *, div_factor: float = 25.0,
                   final_div_factor: float = 1e4, momentum: tuple[float, float] = (0.85, 0.95), offset: int = 1
                   ) -> tuple[Callable, Callable]:
    """(lr(count), beta1(count)): torch OneCycleLR's values at scheduler step ``count + offset``."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    end1 = float(pct_start * total_steps) - 1.0  # torch: phase 1 ends at this (float) step
    end2 = float(total_steps - 1)
    lo, hi = momentum

    def at(count, first, second):
        step = jnp.asarray(count, jnp.float32) + offset
        pct1 = step / max(end1, 1e-12)
        pct2 = (step - end1) / max(end2 - end1, 1e-12)
        return jnp.where(step <= end1, _cos(*first, pct1), _cos(*second, pct2))

    def lr(count):
        return at(count, (initial, max_lr), (max_lr, final))

    def beta1(count):
        return at(count, (hi, lo), (lo, hi))

    return lr, beta1


def torch_adamw_onecycle(total_steps: int, max_lr: float, pct_start: float, *, weight_decay: float = 0.01,
                         b2: float = 0.999, eps: float = 1e-8, momentum: tuple[float, float] = (0.85, 0.95)
                         ) -> optax.GradientTransformation:
    """AdamW (torch's defaults) driven by ``torch_onecycle``: learning rate and beta1 per update."""
    lr, beta1 = torch_onecycle(total_steps, max_lr, pct_start, momentum=momentum)
    return optax.inject_hyperparams(optax.adamw)(learning_rate=lr, b1=beta1, b2=b2, eps=eps,
                                                 weight_decay=weight_decay)
