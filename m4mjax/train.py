"""python -m m4mjax.train --config=experiments/m4m/lm_pretrain.py:small --workdir=W

One run = (config, workdir). Re-running the same command resumes from the latest readable checkpoint with
the data iterator where it stopped (metrics.jsonl is cut back to that step); SIGTERM saves and exits.
--dry_run compiles the step for the configured mesh and prints per-device bytes. The model, its shardings
and the jitted steps live in m4mjax.steps (shared with m4mjax.evaluate).
"""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from m4mjax import steps as steps_lib, tasks as tasks_lib
from m4mjax.datasets import pipeline
from m4mjax.run import checkpoint, cli, data as data_lib, loop, mesh as mesh_lib, metrics as metrics_lib


def flops_per_frame(cfg: ml_collections.ConfigDict) -> float:
    """Training FLOPs per frame (model.train_step_flops of a one-sequence step, divided by its frames)."""
    from m4mjax import model as lm
    return lm.train_step_flops(cfg.model, 1, cfg.data.frames) / cfg.data.frames


# --- the run -------------------------------------------------------------------------------------
def train(cfg: ml_collections.ConfigDict, workdir: str, dry_run: bool = False) -> dict:
    """Train (or resume) the run (cfg, workdir); returns the last logged metrics row."""
    cfg = tasks_lib.resolved(cfg)  # config.json records derived values (a link's LoRA rank) as trained
    mesh = mesh_lib.make_mesh(cfg.mesh)
    with mesh_lib.use_mesh(mesh):
        s = steps_lib.Setup(cfg, mesh)
        step_fn = s.train_step_fn()
        if dry_run:
            return _dry_run(s, step_fn)

        # Inputs first: a bad dataset or init_from fails here, before the workdir is created.
        train_data = pipeline.make_dataset(cfg.data, "train", seed=cfg.seed)
        init = checkpoint.restore_params(cfg.init_from) if cfg.init_from else None
        cli.setup_workdir(workdir, cfg)
        ckpt = checkpoint.Checkpointer(workdir, cfg.train.ckpt_every, cfg.train.ckpt_keep,
                                       cfg.train.get("ckpt_keep_every", 0))
        trainable, frozen, rest = s.init_model()
        if init is not None:
            trainable, frozen = s.split_pure(steps_lib.merge_pure(s.params_pure(trainable, frozen), init))
            trainable, frozen = jax.device_put((trainable, frozen), s.shardings[:2])  # onto the mesh
        opt_state = s.init_opt(trainable)
        start = 0
        restored = ckpt.restore({"params": s.pure_abstract(), "opt": s.abstract_opt})
        if restored is not None:
            start, items, data_state = restored
            trainable, frozen = s.split_pure(items["params"])
            opt_state = items["opt"]
            if data_state is not None:
                data_lib.set_state(train_data, data_state)
            print(f"resumed from step {start}", file=sys.stderr)

        frames = cfg.data.batch_size * cfg.data.frames
        progress = metrics_lib.Progress(cfg.train.steps, start, frames, "frames", frames * flops_per_frame(cfg),
                                        metrics_lib.device_peak_flops(cfg.train.peak_flops))
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
                ev = steps_lib.evaluate_loss(s, eval_fn, trainable, frozen, rest, cfg.train.eval_batches)
                tail.writer.write(done, {k: v for k, v in ev.items() if k != "covers"}, prefix="valid/")
                if jax.process_index() == 0:
                    print(f"step {done}/{cfg.train.steps}  valid loss {ev['loss']:.4f}  ppl {ev['perplexity']:.2f}  "
                          f"acc {ev['accuracy']:.3f}  ({ev['covers']})", file=sys.stderr, flush=True)
            if stop:
                break
        tail.close()
        return tail.last


GIB = 1024 ** 3
if "device_memory" not in flags.FLAGS:
    flags.DEFINE_float("device_memory", 16.0, "--dry_run: per-device memory budget in GiB (16 = a TPU v5e chip, "
                       "80 = an H100/A100-80G, 95 = a TPU v5p chip).")


def _budget_gib() -> float:
    f = flags.FLAGS
    return float(f.device_memory) if f.is_parsed() else float(f["device_memory"].default)


def _dry_run(s: steps_lib.Setup, step_fn) -> dict:
    """Compile the train step for the configured mesh (no data, no workdir, nothing written) and print the
    per-device bytes: parameters + optimizer state + the step's temporaries (+ the batch), against
    ``--device_memory``."""
    cfg = s.cfg
    L = cfg.model.max_frame_tokens
    rows = {"target": int(cfg.data.get("target_frame_tokens", 0)) or L}
    batch = {k: jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.frames, rows.get(k, L)), jnp.int32,
                                     sharding=mesh_lib.named_sharding(s.mesh, ("batch", None, None)))
             for k in s.task.streams}  # 'tokens', or 'reference' + 'target' for the linked tasks
    rest = s.abstract[2]
    t0 = time.perf_counter()
    compiled = step_fn.lower(s.abstract[0], s.abstract_opt, s.abstract[1], rest, batch,
                             jax.ShapeDtypeStruct((), jnp.int32)).compile()
    info = {
        "mesh": dict(s.mesh.shape),
        "params": int(sum(x.size for x in jax.tree.leaves(s.abstract[:2]))),
        "trainable_params": int(sum(x.size for x in jax.tree.leaves(s.abstract[0]))),
        "param_bytes_per_device": mesh_lib.per_device_bytes(s.abstract[:2]),
        "optimizer_bytes_per_device": mesh_lib.per_device_bytes(s.abstract_opt),
        "compile_s": round(time.perf_counter() - t0, 2),
    }
    info["batch_bytes_per_device"] = mesh_lib.per_device_bytes(batch)
    mem = compiled.memory_analysis()
    if mem is not None:
        info["temp_bytes_per_device"] = int(getattr(mem, "temp_size_in_bytes", 0))
    total = sum(info.get(k, 0) for k in ("param_bytes_per_device", "optimizer_bytes_per_device",
                                         "temp_bytes_per_device", "batch_bytes_per_device"))
    budget = _budget_gib()
    info.update(total_bytes_per_device=total, device_memory_gib=budget, fits=total <= budget * GIB,
                remat=bool(cfg.model.remat), microbatches=int(cfg.train.get("microbatches", 1)))
    print(json.dumps(info, indent=2))
    verdict = "fits" if info["fits"] else "does NOT fit"
    print(f"per device: {total / GIB:.2f} GiB = params {info['param_bytes_per_device'] / GIB:.2f} + optimizer "
          f"{info['optimizer_bytes_per_device'] / GIB:.2f} + temporaries {info.get('temp_bytes_per_device', 0) / GIB:.2f}"
          f" + batch {info['batch_bytes_per_device'] / GIB:.3f} GiB: {verdict} in --device_memory={budget:g} GiB "
          f"(remat={info['remat']}, microbatches={info['microbatches']}, mesh {info['mesh']})")
    return info


if __name__ == "__main__":
    cli.run_trainer(train, workdir_required=False)  # --dry_run needs no workdir
