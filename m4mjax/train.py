"""python -m m4mjax.train --config=experiments/m4m/lm_pretrain.py:small --workdir=W

One run = (config, workdir). Re-running the same command resumes from the latest checkpoint with
the data iterator where it stopped; SIGTERM saves and exits. --dry_run compiles the step for the
configured mesh and prints per-device bytes.
"""
from __future__ import annotations

import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from m4mjax import tasks as tasks_lib
from m4mjax.datasets import pipeline
from m4mjax.run import checkpoint, cli, data as data_lib, loop, mesh as mesh_lib, metrics as metrics_lib


# --- optimizer -----------------------------------------------------------------------------------
def make_optimizer(oc: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
    """AdamW with the official OneCycle schedule (or constant), optional global-norm clipping."""
    if oc.schedule == "onecycle":
        lr = optax.cosine_onecycle_schedule(max(steps, 1), oc.lr, pct_start=max(oc.warmup_frac, 1e-6))
    elif oc.schedule == "constant":
        lr = oc.lr
    else:
        raise ValueError(f"config.optim.schedule={oc.schedule!r}: expected 'onecycle' or 'constant'")
    tx = optax.adamw(lr, b1=oc.b1, b2=oc.b2, weight_decay=oc.weight_decay)
    return optax.chain(optax.clip_by_global_norm(oc.grad_clip), tx) if oc.grad_clip > 0 else tx


# --- state ---------------------------------------------------------------------------------------
class Setup:
    """Model graph, shardings and jitted functions of one run (built once, used by train/evaluate)."""

    def __init__(self, cfg: ml_collections.ConfigDict, mesh, with_optimizer: bool = True):
        self.cfg, self.mesh = cfg, mesh
        self.task = tasks_lib.get_task(cfg.task)
        filters = (self.task.trainable, nnx.Param, ...)  # trainable | frozen params | everything else

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
        graphdef, loss, tx, seed = self.graphdef, self.task.loss, self.tx, self.cfg.seed

        def step(trainable, opt_state, frozen, rest, batch, step_no):
            key = jax.random.fold_in(jax.random.key(seed + 1), step_no)  # dropout: a function of the step

            def f(t):
                return loss(nnx.merge(graphdef, t, frozen, rest), batch, key)

            (value, aux), grads = jax.value_and_grad(f, has_aux=True)(trainable)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            return trainable, opt_state, dict(aux, loss=value, grad_norm=optax.global_norm(grads))

        return jax.jit(step, donate_argnums=(0, 1),
                       out_shardings=(self.shardings[0], self.opt_shardings, None))

    def eval_step_fn(self):
        graphdef, loss = self.graphdef, self.task.loss

        def step(trainable, frozen, rest, batch):
            value, aux = loss(nnx.merge(graphdef, trainable, frozen, rest), batch, None)
            return dict(aux, loss=value)

        return jax.jit(step)

    def params_pure(self, trainable, frozen) -> dict:
        """All nnx.Param values (trainable + frozen) as one pure nested dict (checkpoint 'params')."""
        merged = nnx.merge_state(trainable, frozen) if len(jax.tree.leaves(frozen)) else trainable
        return merged.to_pure_dict()

    def split_pure(self, pure: dict):
        """Inverse of params_pure onto the abstract (sharded) states."""
        t, f = (jax.tree.map(lambda x: x, s) for s in self.abstract[:2])
        nnx.replace_by_pure_dict(t, _subset(pure, t.to_pure_dict()))
        if len(jax.tree.leaves(f)):
            nnx.replace_by_pure_dict(f, _subset(pure, f.to_pure_dict()))
        return t, f


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


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded (abstract) arrays."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
    return total


def flops_per_frame(cfg: ml_collections.ConfigDict) -> float:
    """Training FLOPs per frame (model.train_step_flops of a one-sequence step, divided by its frames)."""
    from m4mjax import model as lm
    return lm.train_step_flops(cfg.model, 1, cfg.data.frames) / cfg.data.frames


# --- the run -------------------------------------------------------------------------------------
def train(cfg: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
    cli.setup_workdir(workdir, cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    with mesh_lib.use_mesh(mesh):
        s = Setup(cfg, mesh)
        step_fn = s.train_step_fn()
        if dry_run:
            return _dry_run(s, step_fn)

        ckpt = checkpoint.Checkpointer(workdir, cfg.train.ckpt_every, cfg.train.ckpt_keep)
        trainable, frozen, rest = s.init_model()
        if cfg.init_from:
            trainable, frozen = s.split_pure(_merge_pure(s.params_pure(trainable, frozen),
                                                         checkpoint.load_params(cfg.init_from)))
        opt_state = s.init_opt(trainable)
        train_data = pipeline.make_dataset(cfg.data, "train", seed=cfg.seed)
        start = 0
        restored = ckpt.restore({"params": _pure_abstract(s), "opt": s.abstract_opt})
        if restored is not None:
            start, items, data_state = restored
            trainable, frozen = s.split_pure(items["params"])
            opt_state = items["opt"]
            if data_state is not None:
                data_lib.set_state(train_data, data_state)
            logging.info("resumed from step %d", start)
            print(f"resumed from step {start}", file=sys.stderr)

        frames = cfg.data.batch_size * cfg.data.frames
        progress = metrics_lib.Progress(cfg.train.steps, start, frames, "frames", frames * flops_per_frame(cfg),
                                        cfg.train.peak_flops)
        tail = loop.StepTail(workdir, cfg.train.steps, start, cfg.train.log_every, ckpt, progress)
        eval_fn = s.eval_step_fn() if cfg.train.eval_every else None
        for step in range(start, cfg.train.steps):
            batch = data_lib.global_batch(mesh, next(train_data))
            trainable, opt_state, m = step_fn(trainable, opt_state, frozen, rest, batch, jnp.int32(step))
            done = step + 1
            stop = tail(done, m, lambda: f"loss {float(m['loss']):.4f}",
                        lambda: {"params": s.params_pure(trainable, frozen), "opt": opt_state},
                        lambda: json.loads(data_lib.get_state(train_data)))
            if eval_fn is not None and (done % cfg.train.eval_every == 0 or done == cfg.train.steps):
                ev = evaluate_loss(s, eval_fn, trainable, frozen, rest, cfg.train.eval_batches)
                tail.writer.write(done, ev, prefix="valid/")
            if stop:
                break
        tail.close()
        return tail.last


def evaluate_loss(s: Setup, eval_fn, trainable, frozen, rest, max_batches: int | None, split: str = "valid") -> dict:
    """Token-weighted held-out loss / perplexity / accuracy over fixed windows of ``split``."""
    it = pipeline.make_dataset(s.cfg.data, split, seed=0)
    tot, n, correct = 0.0, 0.0, 0.0
    for i, local in enumerate(it):
        if max_batches and i >= max_batches:
            break
        m = jax.device_get(eval_fn(trainable, frozen, rest, data_lib.global_batch(s.mesh, local)))
        tot += float(m["loss_sum"])
        n += float(m["tokens"])
        correct += float(m["accuracy"]) * float(m["tokens"])
    if n == 0:
        raise ValueError(f"evaluation: split {split!r} of dataset {s.cfg.data.name!r} produced no tokens")
    loss = tot / n
    return {"loss": loss, "perplexity": math.exp(loss), "accuracy": correct / n, "tokens": n}


def _pure_abstract(s: Setup) -> dict:
    t, f = s.abstract[:2]
    out = t.to_pure_dict()
    if len(jax.tree.leaves(f)):
        out = _merge_pure(f.to_pure_dict(), out)
    return out


def _merge_pure(base: dict, new: dict) -> dict:
    """``base`` with every leaf that ``new`` also has replaced (init_from: weights only, shapes checked)."""
    out = {}
    new = {str(k): v for k, v in new.items()}
    for k, v in base.items():
        n = new.get(str(k))
        if isinstance(v, dict):
            out[k] = _merge_pure(v, n) if isinstance(n, dict) else v
        elif n is not None:
            if tuple(np.shape(n)) != tuple(v.shape):
                raise ValueError(f"init_from: parameter {k!r} has shape {np.shape(n)}, model wants {v.shape}")
            out[k] = n
        else:
            out[k] = v
    return out


def _dry_run(s: Setup, step_fn) -> dict:
    cfg = s.cfg
    L = cfg.model.max_frame_tokens
    batch = {"tokens": jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.frames, L), jnp.int32,
                                            sharding=mesh_lib.named_sharding(s.mesh, ("batch", None, None)))}
    rest = s.abstract[2]
    t0 = time.perf_counter()
    compiled = step_fn.lower(s.abstract[0], s.abstract_opt, s.abstract[1], rest, batch,
                             jax.ShapeDtypeStruct((), jnp.int32)).compile()
    info = {
        "mesh": dict(s.mesh.shape),
        "params": int(sum(x.size for x in jax.tree.leaves(s.abstract[:2]))),
        "trainable_params": int(sum(x.size for x in jax.tree.leaves(s.abstract[0]))),
        "param_bytes_per_device": per_device_bytes(s.abstract[:2]),
        "optimizer_bytes_per_device": per_device_bytes(s.abstract_opt),
        "compile_s": round(time.perf_counter() - t0, 2),
    }
    mem = compiled.memory_analysis()
    if mem is not None:
        info["temp_bytes_per_device"] = int(getattr(mem, "temp_size_in_bytes", 0))
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    cli.run_trainer(train)
