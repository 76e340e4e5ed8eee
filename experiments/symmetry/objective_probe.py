"""Does the SPS objective prefer a linear latent? The prior alone, trained on FIXED latents of the ball data.

  python -m experiments.symmetry.objective_probe pretrained/sps_ball_k4 [--steps=1500] [--iteration=1500] [--seed=0]
      [--set group_scale=batch_std ...]

Latents (every one scaled by one number so the translate dims' mean std is --scale, the campaign's latent size):
  linear   the true ball centre (x, height, depth): what SPS is meant to find
  screen   (row, column, 1 / depth) of the centre on the image: a perspective latent, affine-ish (linear MSE ~0.13)
  learned  the given run's encoder means (seed --seed): the campaign's twisted latent (linear MSE ~0.64)
For each, a fresh prior (the run's SPSConfig: groups, K, weights, z_norm, group_scale) is trained with Adam on the
z-space losses only (symmetry.losses.prior_paths: prior_z, sym_z, srs) at the teacher forcing of --iteration, then
scored on the held-out trajectories. If the linear latent's symmetry terms (sym_z - its prior_z share, srs) are not
clearly below the others', the objective gives the encoder no reason to straighten its latent at these settings.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from m4mjax.run import cli
from symmetry import ball, config as config_lib, data as data_lib
from symmetry.losses import prior_paths
from symmetry.model import Prior, SPSConfig
from symmetry.runs import load_seeds


def latents(workdir: str, seed: int, scale: float, overrides: dict | None = None) -> tuple[dict, dict, object]:
    """{name: train latent [N, T, 3]}, {name: eval latent}, SPSConfig of the run (with model overrides)."""
    cfg, mcfg, graphdef, params = load_seeds(workdir)
    try:
        mcfg = SPSConfig.from_mapping(dataclasses.asdict(mcfg), **(overrides or {}))
    except ValueError as e:
        raise cli.UserError(str(e), "--set") from None
    one = jax.tree.map(lambda a: a[seed], params)
    encode = jax.jit(lambda xb: nnx.merge(graphdef, one).encode(xb.astype(jnp.float32) / 255.0)[0])
    out = []
    for split in ("train", cfg.eval.split):
        ds = data_lib.build_dataset(cfg.data, split)
        pos = ds["position"].astype(np.float64)
        gl = ball.to_gl(pos) - ball.EYE
        depth = gl @ ball.camera_basis()[2]
        mu = np.concatenate([np.asarray(encode(jnp.asarray(ds["x"][i: i + 64]))) for i in range(0, len(pos), 64)])
        out.append({"linear": pos, "screen": np.concatenate([ball.project(ball.to_gl(pos)), 1 / depth[..., None]], -1),
                    "learned": mu.astype(np.float64)})
    dims = list(mcfg.translate_dims)
    train, held = out
    for k in train:  # one scale per latent, from its training set, applied to both splits
        m = train[k].reshape(-1, 3).mean(0)
        c = scale / np.sqrt(np.mean(train[k].reshape(-1, 3).var(0)[dims]))
        train[k], held[k] = (train[k] - m) * c, (held[k] - m) * c
    return train, held, mcfg


def train_prior(mcfg, z_train: np.ndarray, z_eval: np.ndarray, steps: int, iteration: int, key: jax.Array) -> dict:
    """Train a fresh prior on one fixed latent; mean held-out z-space terms (per sequence) at the end."""
    prior = Prior(mcfg, rngs=nnx.Rngs(params=key))
    graphdef, params = nnx.split(prior, nnx.Param)
    tx = optax.adam(mcfg.learning_rate)
    zt, ze = jnp.asarray(z_train, jnp.float32), jnp.asarray(z_eval, jnp.float32)
    it = jnp.int32(iteration)

    def loss(p, z, k):
        k1, k2 = jax.random.split(k)
        _, _, terms = prior_paths(nnx.merge(graphdef, p), z, it, k1, k2, mcfg)
        return sum(terms.values()), terms

    @jax.jit
    def step(p, o, k):
        kb, kl = jax.random.split(k)
        z = zt[jax.random.choice(kb, zt.shape[0], (mcfg.batch_size,), replace=False)]
        (_, terms), g = jax.value_and_grad(loss, has_aux=True)(p, z, kl)
        u, o = tx.update(g, o)
        return optax.apply_updates(p, u), o, terms

    opt = tx.init(params)
    for i in range(steps):
        params, opt, _ = step(params, opt, jax.random.fold_in(key, i))
    evaluate = jax.jit(lambda p, z, k: loss(p, z, k)[1])
    b = mcfg.batch_size
    rows = [evaluate(params, ze[i: i + b], jax.random.fold_in(key, 10**6 + i)) for i in range(0, len(ze) - b + 1, b)]
    return {k: float(np.mean([r[k] for r in rows])) / b for k in rows[0]}


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir", help="an SPS ball run directory or exported folder (its config and encoder)")
    p.add_argument("--steps", type=int, default=1500, help="prior training steps per latent")
    p.add_argument("--iteration", type=int, default=1500, help="training iteration whose teacher forcing to use")
    p.add_argument("--seed", type=int, default=0, help="which seed's encoder gives the 'learned' latent")
    p.add_argument("--scale", type=float, default=3.5, help="mean std of the translate dims of every latent")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field for the priors, e.g. --set group_scale=batch_std")
    with cli.report_errors("experiments.symmetry.objective_probe"):
        a = p.parse_args(argv)
        train, held, mcfg = latents(a.workdir, a.seed, a.scale, config_lib.parse_sets(a.set))
        print(f"K={mcfg.K} groups={mcfg.groups} z_norm={mcfg.z_norm} group_scale={mcfg.group_scale} "
              f"iteration {a.iteration} steps {a.steps}; held-out z-space terms per sequence:")
        for name in train:
            t = train_prior(mcfg, train[name], held[name], a.steps, a.iteration, jax.random.key(0))
            print(f"  {name:8s} " + "  ".join(f"{k} {v:8.3f}" for k, v in t.items()), flush=True)


if __name__ == "__main__":
    main()
