"""python -m symmetry.evaluate --workdir=W [--soundfont=PATH]  ->  W/eval.json (+ W/eval_latents.npz)

The metric follows the run's data kind. Audio, per seed and mean ± std over seeds (spec §7.1): embedding R²
(true start pitch vs the first note's mu), synthesis R² (z sweep -> decoder -> Griffin-Lim -> YIN -> R²), and
reconstruction / prediction losses; --soundfont evaluates on timbres from any General MIDI soundfont the model
never saw. Ball (spec §7.2): per-axis linear-projection MSE (affine fit of mu to unit-variance true positions,
every frame of the held-out trajectories) for x, y (height), z and their mean, plus the same losses.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from m4mjax.run import cli, io, metrics as metrics_lib
from symmetry import audio, ball, data as data_lib, metrics
from symmetry.runs import load_seeds

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so importing this module is side-effect free)."""
    flags.DEFINE_string("workdir", None, "Run directory written by symmetry.train.", required=True)
    flags.DEFINE_string("soundfont", "", "Evaluate on this (unseen) soundfont instead of the run's test split.")
    flags.DEFINE_string("out", "", "Output JSON (default W/eval.json, or W/eval_<soundfont>.json).")
    cli.check_nonempty_flag("workdir")
    cli.check_file_flag("soundfont")
    cli.check_flag("soundfont", lambda p: not p or not os.path.isfile(p) or _is_soundfont(p),
                   "not a SoundFont file (no RIFF sfbk header)")


def _is_soundfont(path: str) -> bool:
    """SoundFont 2/3 files start with RIFF <size> sfbk (checked before FluidSynth prints its own errors)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"sfbk"


def _mean_std(v) -> dict:
    v = np.asarray(v, np.float64)
    return {"per_seed": v.tolist(), "mean": float(np.nanmean(v)), "std": float(np.nanstd(v))}


def recon_losses_fn(graphdef, mcfg):
    """jitted (params [S, ...], x [B, T, *frame] in [0,1]) -> (self BCE, teacher-forced prior BCE, z-scored
    prior-z MSE) [S] each: mean-reduced, as the official --eval_recons reports them (spec §7.1.5)."""

    @jax.jit
    def losses_all(p, x):
        def one(q):
            m = nnx.merge(graphdef, q)
            mu, _ = m.encode(x)
            self_bce = optax.sigmoid_binary_cross_entropy(m.decode(mu), x).mean()
            zp = mu[..., :mcfg.prior_dims]
            pred = m.prior.rollout(zp, jnp.ones(zp.shape[1::-1], bool))          # one-step, teacher-forced
            d = mu.shape[-1]
            zin = jnp.concatenate([pred, mu[:, 1:, mcfg.prior_dims:]], -1).reshape(-1, d)
            prior_bce = optax.sigmoid_binary_cross_entropy(m.decode(zin).reshape(x[:, 1:].shape), x[:, 1:]).mean()
            zs = lambda a: (a - a.mean()) / (a.std() + 1e-8)  # noqa: E731  batch z-scoring (spec §7.1.5)
            return self_bce, prior_bce, jnp.mean((zs(pred) - zs(zp[:, 1:])) ** 2)
        return jax.vmap(one)(p)

    return losses_all


def evaluate(workdir: str, soundfont: str = "", out: str = "") -> dict:
    cfg, mcfg, graphdef, params = load_seeds(workdir)
    if data_lib.kind_of(cfg.data) == "ball":
        if soundfont:
            raise cli.UserError("--soundfont applies to audio runs only", f"{workdir} is a ball run")
        return evaluate_ball(workdir, cfg, mcfg, graphdef, params, out)
    split = cfg.eval.split
    if soundfont:
        if not os.path.exists(soundfont):
            raise cli.UserError("no such file", f"--soundfont={soundfont}")
        cfg.data.unseen_soundfont = os.path.abspath(soundfont)
        split = "unseen"
    stages = metrics_lib.Stages("symmetry.evaluate", 4)
    stages.start(f"data ({split} split)")
    ds = data_lib.build_audio_dataset(cfg.data, split)
    x, scored = ds["x"], ds["scored"]
    if not scored.any():
        raise cli.UserError(f"no sequence has a start pitch in {data_lib.SCORED_RANGE}", f"split {split!r}")

    @jax.jit
    def encode_all(p, x):
        return jax.vmap(lambda q: nnx.merge(graphdef, q).encode(x)[0])(p)          # [S, N, T, d]

    @jax.jit
    def decode_all(p, z):
        return jax.vmap(lambda q, zz: jax.nn.sigmoid(nnx.merge(graphdef, q).decode(zz)))(p, z)

    losses_all = recon_losses_fn(graphdef, mcfg)

    stages.start("encode")
    mu = np.asarray(encode_all(params, jnp.asarray(x)))                             # [S, N, T, d]
    z_first = mu[:, scored, 0, 0]
    emb = metrics.embedding_r2(ds["start_pitch"][scored], z_first)

    z_first_all = mu[:, :, 0, 0]            # sweep range: first notes of every test sequence, ddof=1 (§7.1.2)
    d = mu.shape[-1]

    def decode_fn(z):                                                               # z [S, n] -> [S, n, F, W]
        zz = np.zeros(z.shape + (d,), np.float32)
        zz[..., 0] = z
        zz[..., 1:] = mu[:, scored, :, 1:].reshape(mu.shape[0], -1, d - 1).mean(1)[:, None] if d > 1 else 0
        y = np.asarray(decode_all(params, jnp.asarray(zz)))
        if cfg.data.feature == "stft" and y.shape[-2] < audio.WIN // 2 + 1:        # reduced bins: pad silence
            y = np.pad(y, [(0, 0)] * (y.ndim - 2) + [(0, audio.WIN // 2 + 1 - y.shape[-2]), (0, 0)])
        return y

    stages.start(f"synthesis R² (decode, Griffin-Lim, f0 of {cfg.eval.synth_points} points per seed)")
    syn = metrics.synthesis_r2(decode_fn, z_first_all.mean(1), z_first_all.std(1, ddof=1), n=cfg.eval.synth_points,
                               power_input=cfg.eval.griffin_lim_power)
    stages.start("reconstruction and prior losses")
    self_bce, prior_bce, z_mse = (np.asarray(a) for a in losses_all(params, jnp.asarray(x)))
    result = {
        "workdir": os.path.abspath(workdir), "split": split, "soundfont": cfg.data.unseen_soundfont if soundfont
        else cfg.data.soundfont, "sequences_scored": int(scored.sum()), "num_seeds": int(mu.shape[0]),
        "embedding_r2": _mean_std(emb), "synthesis_r2": _mean_std(syn["r2"]),
        "synthesis_unvoiced": np.asarray(syn["n_unvoiced"]).tolist(),
        "self_recon_bce": _mean_std(self_bce), "prior_recon_bce": _mean_std(prior_bce),
        "prior_z_mse": _mean_std(z_mse),
    }
    tag = "" if not soundfont else "_" + os.path.splitext(os.path.basename(soundfont))[0]
    out = out or os.path.join(workdir, f"eval{tag}.json")
    io.atomic_write(out, json.dumps(result, indent=2))
    with io.atomic_path(os.path.join(workdir, f"eval_latents{tag}.npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, start_pitch=ds["start_pitch"][scored], z_first=z_first, sweep_z=syn["z"], sweep_pitch=syn["pitch"])
    print(f"{split}: embedding R² {result['embedding_r2']['mean']:.3f} ± {result['embedding_r2']['std']:.3f}  "
          f"synthesis R² {result['synthesis_r2']['mean']:.3f} ± {result['synthesis_r2']['std']:.3f}  -> {out}")
    return result


AXES = ("x", "y", "z")  # ball position columns: x, y = height, z = depth


def evaluate_ball(workdir: str, cfg, mcfg, graphdef, params, out: str = "", chunk: int = 32) -> dict:
    """Spec §7.2 on the held-out trajectories: eval.json (per-axis MSE per seed, mean ± std) + eval_latents.npz."""
    split = cfg.eval.split
    stages = metrics_lib.Stages("symmetry.evaluate", 3)
    stages.start(f"data ({split} split)")
    try:
        ds = data_lib.build_dataset(cfg.data, split)
    except ValueError as e:
        raise cli.UserError(str(e), f"{workdir}/config.json data") from e
    x, pos = ds["x"], ds["position"]

    @jax.jit
    def encode_all(p, xb):
        xb = xb.astype(jnp.float32) / 255.0
        return jax.vmap(lambda q: nnx.merge(graphdef, q).encode(xb)[0])(p)        # [S, B, T, d]

    stages.start(f"encode {len(x)} trajectories x {x.shape[1]} frames")
    mu = np.concatenate([np.asarray(encode_all(params, jnp.asarray(x[i: i + chunk])))
                         for i in range(0, len(x), chunk)], axis=1)                   # [S, N, T, d]
    S, d = mu.shape[0], mu.shape[-1]
    lp = metrics.linear_projection_mse(mu.reshape(S, -1, d), pos.reshape(-1, 3))
    stages.start("reconstruction and prior losses")
    losses_all = recon_losses_fn(graphdef, mcfg)
    n_loss = min(int(cfg.eval.loss_sequences), len(x))
    parts = [np.stack([np.asarray(a) for a in losses_all(params, jnp.asarray(x[i: min(i + chunk, n_loss)],
                                                                             jnp.float32) / 255.0)])
             for i in range(0, n_loss, chunk)]
    weights = np.array([min(chunk, n_loss - i) for i in range(0, n_loss, chunk)], np.float64)
    self_bce, prior_bce, z_mse = np.einsum("c,cks->ks", weights / weights.sum(), np.stack(parts))
    result = {
        "workdir": os.path.abspath(workdir), "kind": "ball", "split": split, "sequences": int(len(x)),
        "frames": int(x.shape[1]), "num_seeds": int(S),
        "linear_proj_mse": {**{a: _mean_std(lp["per_axis"][:, i]) for i, a in enumerate(AXES)},
                            "mean": _mean_std(lp["mean"])},
        "self_recon_bce": _mean_std(self_bce), "prior_recon_bce": _mean_std(prior_bce),
        "prior_z_mse": _mean_std(z_mse), "loss_sequences": n_loss,
        # not in the paper: 0 for a linear latent, about -2 for one whose scale follows the ball's image area
        "depth_exponent": _mean_std(metrics.depth_exponent(mu, pos, ball.camera_depth(pos))),
    }
    out = out or os.path.join(workdir, "eval.json")
    io.atomic_write(out, json.dumps(result, indent=2))
    n_lat = min(int(cfg.eval.latent_sequences), len(x))
    with io.atomic_path(os.path.join(workdir, "eval_latents.npz")) as tmp, open(tmp, "wb") as f:
        np.savez(f, position=pos[:n_lat], mu=mu[:, :n_lat], per_axis=lp["per_axis"])
    m = result["linear_proj_mse"]
    print(f"{split}: linear-projection MSE {m['mean']['mean']:.4f} ± {m['mean']['std']:.4f} "
          f"(x {m['x']['mean']:.4f}, y {m['y']['mean']:.4f}, z {m['z']['mean']:.4f}) over {S} seeds -> {out}")
    return result


def main(argv):
    del argv
    evaluate(FLAGS.workdir, FLAGS.soundfont, FLAGS.out)


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, "symmetry.evaluate")
