"""python -m symmetry.train --config=experiments/symmetry/sps_audio.py:cpu --workdir=W [--config.num_seeds=10]

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
from symmetry import config as config_lib, data as data_lib, step as step_lib


def load_train_data(cfg: ml_collections.ConfigDict, mcfg) -> np.ndarray:
    """The (tiny) training set as one array [N, T, *frame]; rendered + cached on first use."""
    if mcfg.task != "audio":
        raise ValueError(f"symmetry.train: data for model.task={mcfg.task!r} is not available yet")
    x = data_lib.build_audio_dataset(cfg.data, "train")["x"]
    if x.shape[2] != mcfg.freq_bins or x.shape[3] != mcfg.frames:
        raise ValueError(f"data gives notes of {x.shape[2:]} but model.freq_bins/frames = "
                         f"({mcfg.freq_bins}, {mcfg.frames}); set --config.model.freq_bins to match data.n_bins")
    return x


def train(cfg: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
    cli.setup_workdir(workdir, cfg)
    mcfg = config_lib.model_config(cfg)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    key = jax.random.key(0)  # one base key: seed id s owns fold_in(key, s), however the seeds are split into runs
    with mesh_lib.use_mesh(mesh):
        state = step_lib.init_state(mcfg, cfg.num_seeds, key, mesh, first_seed=cfg.seed)
        step_fn = step_lib.make_train_step(mcfg, state)
        if dry_run:
            data = jax.ShapeDtypeStruct((max(mcfg.batch_size, 26), 15, mcfg.freq_bins, mcfg.frames), jnp.float32)
            compiled = step_fn.lower(state, data, jnp.int32(0), key).compile()
            info = {"seeds": cfg.num_seeds, "mesh": dict(mesh.shape),
                    "param_bytes_per_device": mesh_lib.per_device_bytes(state.params),
                    "optimizer_bytes_per_device": mesh_lib.per_device_bytes(state.opt_state),
                    "compiled": compiled is not None}
            print(json.dumps(info, indent=2))
            return info
        data = jax.device_put(load_train_data(cfg, mcfg), step_lib.replicated(mesh))
        ckpt = checkpoint.Checkpointer(workdir, cfg.train.ckpt_every, cfg.train.ckpt_keep)
        start = 0
        restored = ckpt.restore({"params": state.params, "opt": state.opt_state})  # onto their shardings
        if restored is not None:
            start, items, _ = restored
            state = state.replace(params=items["params"], opt_state=items["opt"])
            print(f"resumed from step {start}", file=sys.stderr)
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
