"""python -m symmetry.train --config=experiments/symmetry/sps_{audio,video}.py:cpu --workdir=W [--config.num_seeds=10]

N independently initialised SPS models train in one jitted step (a vmapped, device-sharded seed axis);
each seed's metrics are separate columns of metrics.jsonl. Re-running resumes; SIGTERM saves and exits.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from m4mjax.run import checkpoint, cli, loop, mesh as mesh_lib, metrics as metrics_lib
from symmetry import config as config_lib, data as data_lib, runs, step as step_lib


def load_train_data(cfg: ml_collections.ConfigDict, mcfg) -> np.ndarray:
    """The training set as one array [N, T, *frame] (ball: uint8 frames); rendered + cached on first use."""
    kind = check_kind(cfg, mcfg)
    x = data_lib.build_dataset(cfg.data, "train")["x"]
    if kind == "ball":
        if x.shape[2:] != (mcfg.image_size, mcfg.image_size, mcfg.image_channels):
            raise ValueError(f"data gives frames of {x.shape[2:]} but model.image_size/image_channels = "
                             f"({mcfg.image_size}, {mcfg.image_channels}); set --config.model.image_size to match "
                             "data.image_size")
        return x
    if x.shape[2] != mcfg.freq_bins or x.shape[3] != mcfg.frames:
        raise ValueError(f"data gives notes of {x.shape[2:]} but model.freq_bins/frames = "
                         f"({mcfg.freq_bins}, {mcfg.frames}); set --config.model.freq_bins to match data.n_bins")
    return x


def check_kind(cfg: ml_collections.ConfigDict, mcfg) -> str:
    """data.kind, checked against model.task (the nets must match the data)."""
    kind = data_lib.kind_of(cfg.data)
    if kind != mcfg.task:
        raise ValueError(f"data.kind={kind!r} but model.task={mcfg.task!r}: they must name the same task")
    return kind


def dry_run_data(cfg: ml_collections.ConfigDict, mcfg) -> jax.ShapeDtypeStruct:
    """The training array's shape and dtype, without rendering it."""
    if check_kind(cfg, mcfg) == "ball":
        size = (mcfg.image_size, mcfg.image_size, mcfg.image_channels)
        return jax.ShapeDtypeStruct((max(mcfg.batch_size, cfg.data.train_size), cfg.data.frames) + size, jnp.uint8)
    return jax.ShapeDtypeStruct((max(mcfg.batch_size, 26), 15, mcfg.freq_bins, mcfg.frames), jnp.float32)


def train(cfg: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
    try:  # a bad setting (unknown group, data/model mismatch) is the user's: one line, exit 2
        mcfg = config_lib.model_config(cfg)
        check_kind(cfg, mcfg)
    except ValueError as e:
        raise cli.UserError(str(e), "--config") from e
    init_step = runs.source_step(cfg.init_from) if cfg.get("init_from") else None  # a bad folder fails before the workdir
    cli.setup_workdir(workdir, cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    key = jax.random.key(0)  # one base key: seed id s owns fold_in(key, s), however the seeds are split into runs
    with mesh_lib.use_mesh(mesh):
        train_x, offset = None, None
        if not dry_run:
            try:
                train_x = load_train_data(cfg, mcfg)
            except ValueError as e:
                raise cli.UserError(str(e), "--config.data") from e
            if mcfg.dec_offset != "none":  # the decoder's output offset starts at logit(mean training frame)
                offset = step_lib.mean_frame_logit(train_x)
        state = step_lib.init_state(mcfg, cfg.num_seeds, key, mesh, first_seed=cfg.seed, dec_offset=offset)
        step_fn = step_lib.make_train_step(mcfg, state)
        if dry_run:
            data = dry_run_data(cfg, mcfg)
            compiled = step_fn.lower(state, data, jnp.int32(0), key).compile()
            info = {"seeds": cfg.num_seeds, "mesh": dict(mesh.shape),
                    "param_bytes_per_device": mesh_lib.per_device_bytes(state.params),
                    "optimizer_bytes_per_device": mesh_lib.per_device_bytes(state.opt_state),
                    "compiled": compiled is not None}
            print(json.dumps(info, indent=2))
            return info
        data = jax.device_put(train_x, step_lib.replicated(mesh))
        ckpt = checkpoint.Checkpointer(workdir, cfg.train.ckpt_every, cfg.train.ckpt_keep,
                                       cfg.train.get("ckpt_keep_every", 0))
        start = 0
        restored = ckpt.restore({"params": state.params, "opt": state.opt_state})  # onto their shardings
        if restored is not None:
            start, items, _ = restored
            state = state.replace(params=items["params"], opt_state=items["opt"])
            print(f"resumed from step {start}", file=sys.stderr)
        elif init_step is not None:
            start = init_step
            state = state.replace(params=checkpoint.restore_params(cfg.init_from, state.params))
            print(f"started from {cfg.init_from}'s weights at its step {start} (optimizer state fresh)", file=sys.stderr)
        progress = metrics_lib.Progress(cfg.train.steps, start, cfg.num_seeds, "seed-steps")
        tail = loop.StepTail(workdir, cfg.train.steps, start, cfg.train.log_every, ckpt, progress)
        for it in range(start, cfg.train.steps):
            state, m = step_fn(state, data, jnp.int32(it), jax.random.fold_in(key, it))
            if tail(it + 1, m, lambda: _loss_summary(m),
                    lambda: {"params": nnx.to_pure_dict(state.params), "opt": state.opt_state}):
                break
        tail.close()
        return tail.last


def _loss_summary(m: dict) -> str:
    loss = np.asarray(m["loss"])
    return f"loss {loss.mean():.1f} (seeds {loss.min():.1f}..{loss.max():.1f})"


if __name__ == "__main__":
    cli.run_trainer(train)
