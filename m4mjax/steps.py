"""One run's model, shardings and jitted steps (``Setup``), and the held-out loss (``evaluate_loss``):
the pieces m4mjax.train and m4mjax.evaluate share, so neither imports the other."""
from __future__ import annotations

import itertools
import math
from typing import Iterator

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from m4mjax import tasks as tasks_lib
from m4mjax.datasets import pipeline
from m4mjax.run import data as data_lib, mesh as mesh_lib, metrics as metrics_lib


def make_optimizer(oc: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
    """AdamW with a OneCycle schedule (optax's, or torch's exactly with beta1 cycling) or a constant rate,
    optional global-norm clipping."""
    if oc.schedule == "torch_onecycle":
        from m4mjax.run.onecycle import torch_adamw_onecycle

        tx = torch_adamw_onecycle(max(steps, 1), oc.lr, max(oc.warmup_frac, 1e-6), weight_decay=oc.weight_decay,
                                  b2=oc.b2, momentum=tuple(oc.get("momentum_range", (0.85, 0.95))))
    elif oc.schedule in ("onecycle", "constant", "warmup_constant"):
        if oc.schedule == "onecycle":
            lr = optax.cosine_onecycle_schedule(max(steps, 1), oc.lr, pct_start=max(oc.warmup_frac, 1e-6))
        elif oc.schedule == "warmup_constant":  # linear warm-up, then flat: a run can be extended (train.steps
            # raised on resume) and keeps learning, as the official constant-rate fine-tuning
            warm = max(int(round(oc.warmup_frac * steps)), 1)
            decay = min(int(oc.get("decay_steps", 0)), steps - warm)  # the last steps cool down linearly to 0
            parts, bounds = [optax.linear_schedule(oc.lr / warm, oc.lr, warm - 1), optax.constant_schedule(oc.lr)], \
                [warm - 1]
            if decay > 0:  # warmup-stable-decay: lr(t) = lr * (steps - t) / (decay + 1) over the last decay steps
                parts.append(optax.linear_schedule(oc.lr * decay / (decay + 1), 0.0, decay))
                bounds.append(steps - decay)
            lr = optax.join_schedules(parts, bounds)
        else:
            lr = oc.lr
        tx = optax.adamw(lr, b1=oc.b1, b2=oc.b2, weight_decay=oc.weight_decay)
    else:
        raise ValueError(f"config.optim.schedule={oc.schedule!r}: expected 'onecycle', 'torch_onecycle', 'constant' "
                         "or 'warmup_constant'")
    return optax.chain(optax.clip_by_global_norm(oc.grad_clip), tx) if oc.grad_clip > 0 else tx


def accumulate(grad_of, batch: dict, key, k: int):
    """``grad_of(batch, key)`` over ``k`` sequential micro-batches (lax.scan), combined into the full batch's
    token-weighted mean loss, metrics and gradient: 1/k of the activation memory for the same update. Micro-batch
    i takes rows i, i+k, ... so each keeps the batch's spread over the devices."""
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"train.microbatches={k} does not divide the batch of {x.shape[0]}")
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
        return jax.numpy.swapaxes(x, 0, 1)

    micro = jax.tree.map(split, batch)

    def body(carry, inp):
        i, b = inp
        b = jax.tree.map(lambda x: mesh_lib.constrain(x, "batch", *(None,) * (x.ndim - 1)), b)
        (value, aux), g = grad_of(b, jax.random.fold_in(key, i))
        w = aux.get("tokens", jax.numpy.float32(1.0))  # the loss is a token mean: weight by tokens
        acc = jax.tree.map(lambda a, x: a + x * w, carry, (g, value))
        return acc, (aux, w)

    zero = jax.tree.map(jax.numpy.zeros_like, jax.eval_shape(lambda: grad_of(jax.tree.map(lambda x: x[0], micro), key)))
    (g_sum, v_sum), (auxs, ws) = jax.lax.scan(body, (zero[1], zero[0][0]), (jax.numpy.arange(k), micro))
    total = jax.numpy.maximum(ws.sum(), 1e-9)
    aux = {n: (v.sum() if n in ("tokens", "loss_sum") else (v * ws).sum() / total) for n, v in auxs.items()}
    return (v_sum / total, aux), jax.tree.map(lambda g: g / total, g_sum)


class Setup:
    """Model graph, shardings and jitted functions of one run (built once, used by train/evaluate)."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh, with_optimizer: bool = True):
        self.cfg, self.mesh = cfg, mesh
        self.task = tasks_lib.get_task(cfg.task)
        filters = (self.task.trainable(cfg), nnx.Param, ...)  # trainable | frozen params | everything else

        def build():
            return nnx.split(self.task.build(cfg, nnx.Rngs(cfg.seed)), *filters)

        abstract = nnx.eval_shape(lambda: self.task.build(cfg, nnx.Rngs(cfg.seed)))
        self.graphdef, *abs_states = nnx.split(abstract, *filters)
        self.shardings = tuple(mesh_lib.state_shardings(s, mesh) for s in abs_states)
        self.abstract = tuple(_with_shardings(s, sh) for s, sh in zip(abs_states, self.shardings))
        self.init_model = jax.jit(lambda: tuple(build()[1:]), out_shardings=self.shardings)
        self.tx = make_optimizer(cfg.optim, cfg.train.steps) if with_optimizer else None
        if with_optimizer:
            abs_opt = jax.eval_shape(self.tx.init, abs_states[0])
            self.opt_shardings = _opt_shardings(abs_opt, abs_states[0], self.shardings[0], mesh)
            self.abstract_opt = _with_shardings(abs_opt, self.opt_shardings)
            self.init_opt = jax.jit(self.tx.init, out_shardings=self.opt_shardings)
        self.batch_sharding = mesh_lib.named_sharding(mesh, ("batch",))

    def model(self, trainable, frozen, rest) -> nnx.Module:
        return nnx.merge(self.graphdef, trainable, frozen, rest)

    def train_step_fn(self):
        """jit(step)(trainable, opt_state, frozen, rest, batch, step_no) -> (trainable, opt_state, metrics)."""
        graphdef, loss, tx, seed = self.graphdef, self.task.loss, self.tx, self.cfg.seed

        micro = int(self.cfg.train.get("microbatches", 1))

        def step(trainable, opt_state, frozen, rest, batch, step_no):
            key = jax.random.fold_in(jax.random.key(seed + 1), step_no)  # dropout: a function of the step

            def grad_of(b, k):
                def f(t):
                    return loss(nnx.merge(graphdef, t, frozen, rest), b, k)

                return jax.value_and_grad(f, has_aux=True)(trainable)

            if micro > 1:
                (value, aux), grads = accumulate(grad_of, batch, key, micro)
            else:
                (value, aux), grads = grad_of(batch, key)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            return trainable, opt_state, dict(aux, loss=value, grad_norm=optax.global_norm(grads))

        return jax.jit(step, donate_argnums=(0, 1),
                       out_shardings=(self.shardings[0], self.opt_shardings, None))

    def eval_step_fn(self):
        """jit(step)(trainable, frozen, rest, batch) -> metrics (no dropout)."""
        graphdef, loss = self.graphdef, self.task.loss

        def step(trainable, frozen, rest, batch):
            value, aux = loss(nnx.merge(graphdef, trainable, frozen, rest), batch, None)
            return dict(aux, loss=value)

        return jax.jit(step)

    def params_pure(self, trainable, frozen) -> dict:
        """All nnx.Param values (trainable + frozen) as one pure nested dict (checkpoint 'params')."""
        merged = nnx.merge_state(trainable, frozen) if len(jax.tree.leaves(frozen)) else trainable
        return nnx.to_pure_dict(merged)

    def pure_abstract(self) -> dict:
        """params_pure's structure as sharded ShapeDtypeStructs (the restore target of 'params')."""
        t, f = self.abstract[:2]
        return nnx.to_pure_dict(nnx.merge_state(t, f) if len(jax.tree.leaves(f)) else t)

    def split_pure(self, pure: dict):
        """Inverse of params_pure onto the abstract (sharded) states."""
        t, f = (jax.tree.map(lambda x: x, s) for s in self.abstract[:2])
        nnx.replace_by_pure_dict(t, _subset(pure, nnx.to_pure_dict(t)))
        if len(jax.tree.leaves(f)):
            nnx.replace_by_pure_dict(f, _subset(pure, nnx.to_pure_dict(f)))
        return t, f


def merge_pure(base: dict, new: dict) -> dict:
    """``base`` with every leaf that ``new`` also has replaced (init_from: weights only, shapes checked)."""
    out = {}
    new = {str(k): v for k, v in new.items()}
    for k, v in base.items():
        n = new.get(str(k))
        if isinstance(v, dict):
            out[k] = merge_pure(v, n) if isinstance(n, dict) else v
        elif n is not None:
            if tuple(np.shape(n)) != tuple(v.shape):
                raise ValueError(f"init_from: parameter {k!r} has shape {np.shape(n)}, model wants {v.shape}")
            out[k] = n
        else:
            out[k] = v
    return out


def _key(d: dict, k):
    """d[k], accepting the string form of integer keys (how checkpoints store layer indices)."""
    if k in d:
        return d[k]
    if str(k) in d:
        return d[str(k)]
    raise KeyError(f"checkpoint has no parameter {k!r} (has {sorted(map(str, d))[:8]}...)")


def _subset(pure: dict, like: dict) -> dict:
    return {k: _subset(_key(pure, k), v) if isinstance(v, dict) else _key(pure, k) for k, v in like.items()}


def _with_shardings(tree, shardings):
    """Abstract arrays carrying shardings (``shardings`` may be a prefix tree of ``tree``)."""
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), sub),
                        shardings, tree)


def _opt_shardings(abs_opt, abs_params, param_shardings, mesh):
    """Optimizer moments follow their parameter's sharding; scalars are replicated."""
    by_shape = {}
    for p, s in zip(jax.tree.leaves(abs_params), jax.tree.leaves(param_shardings)):
        by_shape.setdefault((p.shape, p.dtype), s)
    repl = mesh_lib.named_sharding(mesh, ())

    def one(x):
        return by_shape.get((x.shape, x.dtype), repl if x.ndim == 0 else mesh_lib.named_sharding(mesh, (None,) * x.ndim))

    return jax.tree.map(one, abs_opt)


# --- held-out loss ---------------------------------------------------------------------------------------
def eval_batches(cfg: ml_collections.ConfigDict, split: str, max_batches: int = 0, desc: str = "",
                 train: bool | None = None) -> tuple[Iterator[dict], int, int]:
    """(batches, windows scored, windows in the split) of ``split``'s fixed windows: every window, or with
    ``max_batches`` > 0 that many batches of windows spread evenly over the whole split (not the first ones:
    a split lists its songs in order, so its first windows are a few songs, not a sample). ``desc``: show a
    progress bar with that label."""
    bs = int(cfg.data.batch_size)
    total = len(pipeline.eval_windows(cfg.data, pipeline.open_split(cfg.data, split)[1]))
    spread = max_batches * bs if max_batches and max_batches * bs < total else 0
    n = math.ceil((spread or total) / bs)
    it = itertools.islice(pipeline.make_dataset(cfg.data, split, seed=0, train=train, spread=spread), n)
    return (metrics_lib.progress_bar(it, n, desc) if desc else it), spread or total, total


def evaluate_loss(s: Setup, eval_fn, trainable, frozen, rest, max_batches: int = 0, split: str = "valid",
                  show_progress: bool = False) -> dict:
    """Token-weighted held-out loss / perplexity / accuracy over ``split``'s fixed windows (all, or
    ``max_batches`` batches spread over the split, see ``eval_batches``); ``covers`` says which."""
    batches, windows, total = eval_batches(s.cfg, split, max_batches, f"{split}: batches" if show_progress else "")
    tot, n, correct = 0.0, 0.0, 0.0
    for local in batches:
        m = jax.device_get(eval_fn(trainable, frozen, rest, data_lib.global_batch(s.mesh, local)))
        tot += float(m["loss_sum"])
        n += float(m["tokens"])
        correct += float(m["accuracy"]) * float(m["tokens"])
    if n == 0:
        raise ValueError(f"evaluation: split {split!r} of dataset {s.cfg.data.name!r} produced no tokens")
    covers = f"all {total:,} windows" if windows >= total else f"{windows:,} of {total:,} windows spread over the split"
    loss = tot / n
    return {"loss": loss, "perplexity": math.exp(loss), "accuracy": correct / n, "tokens": n,
            "windows": windows, "windows_total": total, "covers": covers}
