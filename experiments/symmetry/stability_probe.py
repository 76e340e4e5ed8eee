"""Is a linear latent a stable point of the SPS objective? Anchor the encoder to the true ball position, then let go.

  python -m experiments.symmetry.stability_probe [--anchor-steps=450] [--free-steps=900] [--every=150]
      [--iteration=40000] [--seeds=2] [--set key=value ...]

Phase A: fresh models (sps_video.py:cpu_recipe with the --set overrides, K = 4) trained on the SPS loss plus
  --anchor x sum ||mu - position||^2 (the true centre in world units: x, height, depth; the groups' own units) for
  --anchor-steps, at the teacher forcing of --iteration (default 40,000: free-running, where the paper's runs spend
  most of their steps; z ramp at 1).
Phase B: from phase A's weights (Adam state fresh), the SPS loss alone, once with K = 4 and once with K = 0, for
  --free-steps. Held-out linear-projection and 10-NN MSE (symmetry.metrics, 128 trajectories) every --every steps.
Reading: if K = 4 keeps the linear latent and K = 0 loses it, the objective holds linearity once found and what a
campaign lacks is reaching it; if both lose it alike, the reconstruction pulls the latent to a twisted optimum that the
symmetry terms at these weights do not resist, and more steps of the same objective would not straighten it.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.sweep import load_experiment
from m4mjax.run import cli
from symmetry import config as config_lib, data as data_lib, metrics, step as step_lib
from symmetry.losses import sps_loss
from symmetry.model import SPSConfig

VIDEO = "experiments/symmetry/sps_video.py"


def make_step(mcfg: SPSConfig, graphdef):
    """Jitted step over a seed axis: (params, opt, seed_ids, x uint8 [N, T, ...], pos [N, T, 3], it, key, anchor) ->
    (params, opt, loss [seeds]); the anchor term (weight ``anchor``, 0 = off) pulls the encoder means to pos."""
    tx = step_lib.make_optimizer(mcfg)

    def one(params, opt, seed_id, x_all, pos_all, it, key, anchor):
        kb, kl = jax.random.split(jax.random.fold_in(key, seed_id))
        idx = jax.random.choice(kb, x_all.shape[0], (mcfg.batch_size,), replace=False)
        x, pos = x_all[idx].astype(jnp.float32) / 255.0, pos_all[idx]

        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            total, terms = sps_loss(model, x, it, kl, mcfg)
            total = total + anchor * jnp.sum((model.encode(x)[0][..., :3] - pos) ** 2)
            return total, terms["loss"]

        (_, loss), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None, None, None, None)))


def scores(encode, params, x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Held-out linear-projection and 10-NN MSE per seed (encode: jitted (params, x) -> mu [seeds, N, T, d])."""
    mu = np.asarray(encode(params, jnp.asarray(x)))
    flat = mu.reshape(mu.shape[0], -1, mu.shape[-1])
    return (metrics.linear_projection_mse(flat, pos.reshape(-1, 3))["mean"],
            metrics.knn_mse(flat, pos.reshape(-1, 3), k=10)["mean"])


def run(anchor_steps: int, free_steps: int, every: int, iteration: int, seeds: int, anchor: float,
        overrides: dict) -> list[str]:
    cfg = load_experiment(VIDEO).get_config("cpu_recipe")
    try:
        mcfg = SPSConfig.from_mapping(dict(dataclasses.asdict(config_lib.model_config(cfg)), K=4, **overrides))
    except ValueError as e:
        raise cli.UserError(str(e), "--set") from None
    train = data_lib.build_dataset(cfg.data, "train")
    held = data_lib.build_dataset(cfg.data, cfg.eval.split)
    xh, ph = held["x"][:128], held["position"][:128]
    x_all, pos_all = jnp.asarray(train["x"]), jnp.asarray(train["position"], jnp.float32)
    state = step_lib.init_state(mcfg, seeds, jax.random.key(0), dec_offset=step_lib.mean_frame_logit(train["x"]))
    graphdef, it, key = state.graphdef, jnp.int32(iteration), jax.random.key(1)
    lines = [f"iteration {iteration} (z-ramp and teacher forcing of that step), {seeds} seeds, "
             f"z_norm={mcfg.z_norm} group_scale={mcfg.group_scale}; held-out linear | 10-NN MSE per seed"]

    encode = jax.jit(jax.vmap(lambda p, xb: nnx.merge(graphdef, p).encode(xb.astype(jnp.float32) / 255.0)[0],
                              in_axes=(0, None)))

    def fmt(tag, params):
        lin, nn = scores(encode, params, xh, ph)
        return f"  {tag:16s} " + " / ".join(f"{a:.3f} | {b:.3f}" for a, b in zip(lin, nn)) + f"   mean linear {lin.mean():.3f}"

    step = make_step(mcfg, graphdef)
    params, opt = state.params, state.opt_state
    for i in range(anchor_steps):
        params, opt, _ = step(params, opt, state.seed_ids, x_all, pos_all, it, jax.random.fold_in(key, i),
                              jnp.float32(anchor))
    lines.append(fmt(f"anchored {anchor_steps}", params))
    print(lines[0] + "\n" + lines[-1], flush=True)
    start = params
    for K in (4, 0):
        kcfg = SPSConfig.from_mapping(dict(dataclasses.asdict(mcfg), K=K))
        step = make_step(kcfg, graphdef)
        params, opt = start, jax.vmap(step_lib.make_optimizer(kcfg).init)(start)
        for i in range(1, free_steps + 1):
            params, opt, _ = step(params, opt, state.seed_ids, x_all, pos_all, it, jax.random.fold_in(key, 10**6 + i),
                                  jnp.float32(0.0))
            if i % every == 0:
                lines.append(fmt(f"K={K} free {i}", params))
                print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--anchor-steps", type=int, default=450)
    p.add_argument("--free-steps", type=int, default=900)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--iteration", type=int, default=40_000, help="training iteration whose schedules to use")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--anchor", type=float, default=100.0, help="weight of the anchor term in phase A")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --set z_norm=batch_var")
    with cli.report_errors("experiments.symmetry.stability_probe"):
        a = p.parse_args(argv)
        run(a.anchor_steps, a.free_steps, a.every, a.iteration, a.seeds, a.anchor, config_lib.parse_sets(a.set))


if __name__ == "__main__":
    main()
