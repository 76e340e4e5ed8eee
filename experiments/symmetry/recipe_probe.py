"""Does a ball run's latent collapse? Per checkpoint: the encoder means' spread and the linear-projection MSE.

  python -m experiments.symmetry.recipe_probe workdirs/sps_video_probe/recipe_s1 [--sequences=128]

For every checkpoint step of the workdir and every seed, encodes the first n held-out trajectories (the run's
eval split) and prints the std of mu over those frames per latent dim (a collapsed latent: ~0.01, issue 22) and the
per-axis linear-projection MSE of symmetry.evaluate (spec §7.2: 1 = no position, 0 = an affine map of it), the
per-axis 10-NN regression MSE (symmetry.metrics.knn_mse: is position in the latent at all, linear or not), the
depth exponent (symmetry.metrics.depth_exponent: 0 for a linear latent, about -2 for one whose scale follows the
ball's image area), plus the last logged z-loss ramp weight and p_tf at that step (metrics.jsonl).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.run import checkpoint, cli
from symmetry import ball, data as data_lib, metrics
from symmetry.runs import load_seeds


def _logged(workdir: str) -> dict[int, dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.isfile(path) else []
    return {int(r["step"]): r for r in rows if "step" in r}


def probe(workdir: str, sequences: int = 128) -> list[dict]:
    cfg, _, graphdef, abstract = load_seeds(workdir)
    ds = data_lib.build_dataset(cfg.data, cfg.eval.split)
    x, pos = ds["x"][:sequences], ds["position"][:sequences]
    encode = jax.jit(lambda p, xb: jax.vmap(
        lambda q: nnx.merge(graphdef, q).encode(xb.astype(jnp.float32) / 255.0)[0])(p))
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    logged, out, depth = _logged(workdir), [], ball.camera_depth(pos)
    for step in steps:
        params = checkpoint.restore_params(workdir, abstract, step=step)
        mu = np.asarray(encode(params, jnp.asarray(x)))                              # [S, N, T, d]
        S, d = mu.shape[0], mu.shape[-1]
        lp = metrics.linear_projection_mse(mu.reshape(S, -1, d), pos.reshape(-1, 3))
        nn = metrics.knn_mse(mu.reshape(S, -1, d), pos.reshape(-1, 3), k=10)
        near = [s for s in logged if s <= step]
        row = logged[max(near)] if near else {}
        first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731  (the same for every seed)
        out.append({"step": step, "mu_std": mu.reshape(S, -1, d).std(1), "per_axis": lp["per_axis"], "mean": lp["mean"],
                    "knn_per_axis": nn["per_axis"], "knn_mean": nn["mean"],
                    "depth_exp": metrics.depth_exponent(mu, pos, depth),
                    "z_ramp": first(row.get("train/z_ramp")), "p_tf": first(row.get("train/p_tf"))})
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main(argv: list[str] | None = None) -> None:
    """CLI: one line per checkpoint step and seed (a bad workdir is one line, exit 2)."""
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir", help="an SPS ball run directory (symmetry.train)")
    p.add_argument("--sequences", type=int, default=128, help="held-out trajectories to encode")
    with cli.report_errors("experiments.symmetry.recipe_probe"):
        a = p.parse_args(argv)
        cli.load_config(a.workdir)  # fail fast: not a run directory
        rows = probe(a.workdir, a.sequences)
    for r in rows:
        for s in range(len(r["mean"])):
            print(f"step {r['step']:5d} seed {s}: mu std {np.array2string(r['mu_std'][s], precision=3)}  "
                  f"linear-projection MSE {r['mean'][s]:.3f} (x/y/z {np.array2string(r['per_axis'][s], precision=3)})  "
                  f"10-NN MSE {r['knn_mean'][s]:.3f} (x/y/z {np.array2string(r['knn_per_axis'][s], precision=3)})"
                  f"  depth exponent {r['depth_exp'][s]:.2f}"
                  f"  z_ramp {_fmt(r['z_ramp'])}  p_tf {_fmt(r['p_tf'])}")


if __name__ == "__main__":
    main()
