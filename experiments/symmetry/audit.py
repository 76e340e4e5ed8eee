"""Is anything but compute between an SPS ball run and a linear latent? The checks a compute claim needs.

  python -m experiments.symmetry.audit WORKDIR [--sequences=64] [--seed=0] [--iteration=N]

1. data round trip: the batches the train step draws (symmetry.step.sample_batch, uint8 -> [0, 1]) are whole
   training trajectories with their frames in order, and every frame shows the ball where its stored position
   projects (the green pixels' centroid vs symmetry.ball.project; a one-frame shift must be far worse); the
   augmentation (each group path, in the run's group unit) maps the run's latents back exactly.
2. loss positions: which frames each loss term scores as targets (its gradient w.r.t. the target frames, with the
   encoder's input held fixed), against the spec's ranges; and which encoder latents each prior prediction reads,
   teacher-forced and free-running (the rollout's Jacobian).
3. teacher-forced vs free-running: the prior's latent error per predicted frame (in units of the latent's std),
   against copy-last and constant-velocity baselines, and the decoded predictions' BCE above the frames' own
   entropy ("ball nats"), next to the mean frame (no position) and the self-reconstruction.
4. fit: the same numbers on the run's training trajectories; for a run trained on one batch
   (--config.data.train_size=8) this is the one-batch overfit: the nats left and the latent's linearity there.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.run import cli
from symmetry import ball, data as data_lib, metrics, step as step_lib
from symmetry.losses import cfg_teacher_forcing_prob, group_unit, make_groups, sps_loss
from symmetry.runs import load_seeds, source_step


def green_centroid(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 frames [..., H, W, 3] -> ((row, col) centroid of the ball's pixels in pixel units [..., 2], weight [...]).
    Ball pixels are told by green over the other channels (the scene is grey and black)."""
    f = frames.astype(np.float64)
    w = np.clip(f[..., 1] - 0.5 * (f[..., 0] + f[..., 2]) - 8.0, 0.0, None)          # [..., H, W]
    h, wd = w.shape[-2:]
    total = w.sum((-2, -1))
    rows = (w * (np.arange(h)[:, None] + 0.5)).sum((-2, -1)) / np.maximum(total, 1e-9)
    cols = (w * (np.arange(wd)[None, :] + 0.5)).sum((-2, -1)) / np.maximum(total, 1e-9)
    return np.stack([rows, cols], -1), total


def data_round_trip(x: np.ndarray, pos: np.ndarray, batch_size: int, draws: int = 16) -> dict:
    """Check 1 on the training arrays x [N, T, H, W, 3] uint8 and positions [N, T, 3]."""
    data = jnp.asarray(x)
    index = {row.tobytes(): i for i, row in enumerate(x)}                 # a whole trajectory, frames in order
    matched = distinct = 0
    for i in range(draws):
        b = np.asarray(step_lib.sample_batch(data, jax.random.key(i), batch_size))
        rows = [index.get(r.tobytes()) for r in b]
        matched += sum(r is not None for r in rows)
        distinct += len({r for r in rows if r is not None}) == batch_size
    cen, weight = green_centroid(x)
    size = x.shape[2]
    proj = ball.project(ball.to_gl(pos), size)
    ok = (weight > 0.25 * np.median(weight)) & (proj.min(-1) > 2) & (proj.max(-1) < size - 2)   # whole, in frame
    err = lambda a, b, m: float(np.median(np.linalg.norm(a - b, axis=-1)[m]))  # noqa: E731
    return {"batch_rows_that_are_whole_trajectories": f"{matched}/{draws * batch_size}", "batches_of_distinct_rows": f"{distinct}/{draws}",
            "pixel_range": (float(x.min()), float(x.max())), "frames_scored": int(ok.sum()),
            "centroid_px_err": err(cen, proj, ok),
            "centroid_px_err_shift_+1": err(cen[:, 1:], proj[:, :-1], ok[:, 1:] & ok[:, :-1]),
            "centroid_px_err_shift_-1": err(cen[:, :-1], proj[:, 1:], ok[:, 1:] & ok[:, :-1])}


def augmentation_round_trip(zp: jax.Array, mcfg) -> dict:
    """Each group path: g^-1(g(z / u)) * u == z on the run's latents (u: the run's group unit)."""
    unit = group_unit(zp, mcfg)
    out = {}
    for i, (name, g) in enumerate(make_groups(mcfg)):
        gp = g.sample(jax.random.key(100 + i), zp.shape[0])
        moved = g.apply(gp, zp / unit) * unit
        back = g.inverse(gp, moved / unit) * unit
        out[name] = {"max_err": float(jnp.abs(back - zp).max()), "moved": float(jnp.abs(moved - zp).mean())}
    return out


class _FixedInput:
    """The model with the encoder's input held fixed: gradients w.r.t. x then reach only the decoder targets."""

    def __init__(self, model, x_enc):
        self.model, self.x_enc, self.prior = model, x_enc, model.prior

    def encode(self, _):
        return self.model.encode(self.x_enc)

    def decode(self, z):
        return self.model.decode(z)


def expected_target_frames(name: str, mcfg, T: int) -> list[int]:
    """Spec §5: L_self scores frames 1..T, L_prior,x and L_sym,x frames 2..T (f0 + 1..T with pred_loss_from = f0),
    the KL and the z-space terms no frame (1-based)."""
    if name == "self_x":
        return list(range(1, T + 1))
    if name == "prior_x" or name.startswith("sym_x/"):
        return list(range(mcfg.pred_loss_from + 1, T + 1))
    return []


def loss_positions(model, x: jax.Array, iteration: int, mcfg) -> dict:
    """Check 2: {term: (frames it scores as targets, expected)}, and the rollout's input dependence."""
    T = x.shape[1]
    proxy = _FixedInput(model, x)
    key = jax.random.key(0)
    it = jnp.int32(iteration)
    names = [k for k in sps_loss(proxy, x, it, key, mcfg)[1] if k not in ("loss", "p_tf", "z_ramp")]
    terms = lambda xt: jnp.stack([sps_loss(proxy, xt, it, key, mcfg)[1][n] for n in names])  # noqa: E731
    jac = np.asarray(jax.jit(jax.jacrev(terms))(x)).reshape(len(names), x.shape[0], T, -1)   # one VJP per term
    out = {}
    for name, g in zip(names, jac):
        hit = np.flatnonzero(np.abs(g).sum((0, 2)) > 0) + 1
        out[name] = (hit.tolist(), expected_target_frames(name, mcfg, T))
    return out


def rollout_reads(prior, zp: jax.Array, base_len: int) -> dict:
    """{mode: (bool [T-1, T]: prediction of frame t+1 reads input frame s, expected)} for teacher forcing (every
    input given) and free running (only the first base_len given)."""
    T = zp.shape[1]
    t = np.arange(T)
    out = {}
    for mode, given in (("teacher-forced", np.ones(T, bool)), ("free-running", t < base_len)):
        mask = jnp.asarray(given)[:, None]
        jac = jax.jacfwd(lambda z: prior.rollout(z, mask))(zp[:1])                   # [1, T-1, p, 1, T, p]
        reads = np.abs(np.asarray(jac)).sum((0, 2, 3, 5)) > 0                         # [T-1, T]
        want = np.zeros((T - 1, T), bool)
        for i in range(T - 1):                                                        # step i predicts frame i+1
            last = i if given[: i + 1].all() else base_len - 1
            want[i, : last + 1] = True
        out[mode] = (reads, want)
    return out


def frame_entropy(x: np.ndarray) -> np.ndarray:
    """Summed binary entropy of each frame's pixels [N, T] (the floor of the BCE against those targets)."""
    p = np.clip(x.astype(np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p)).reshape(x.shape[:2] + (-1,)).sum(-1)


def frame_bce(logits: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Summed BCE of sigmoid(logits) against x per frame [N, T] (float64)."""
    lg, y = logits.astype(np.float64), x.astype(np.float64)
    v = np.maximum(lg, 0) - lg * y + np.log1p(np.exp(-np.abs(lg)))
    return v.reshape(v.shape[:2] + (-1,)).sum(-1)


def prediction_report(model, mcfg, x: np.ndarray, pos: np.ndarray, mean_frame: np.ndarray) -> dict:
    """Checks 3 / 4 on trajectories x [N, T, H, W, 3] in [0, 1]: latent errors per predicted frame teacher-forced /
    free-running / baselines, ball nats (BCE above entropy per frame) of each decoding, linear and 10-NN MSE and the
    depth exponent."""
    N, T = x.shape[:2]
    b = mcfg.base_len
    mu = np.asarray(jax.jit(lambda xb: model.encode(xb)[0])(jnp.asarray(x, jnp.float32)))
    p = mcfg.prior_dims
    zp = mu[..., :p]
    var = zp.reshape(-1, p).var(0)
    given = {"teacher-forced": np.ones(T, bool), "free-running": np.arange(T) < b}
    roll = jax.jit(lambda z, m: model.prior.rollout(z, m))
    preds = {k: np.asarray(roll(jnp.asarray(zp), jnp.broadcast_to(jnp.asarray(m)[:, None], (T, N)))) for k, m in given.items()}
    # baselines for frames 1..T-1 (0-based), from the encoder's latents
    copy_tf = zp[:, :-1]
    vel_tf = np.concatenate([zp[:, :1], 2 * zp[:, 1:-1] - zp[:, :-2]], 1)
    steps = np.arange(1, T)[None, :, None] - (b - 1)
    copy_fr = np.where(steps > 0, zp[:, b - 1: b], copy_tf)
    vel_fr = np.where(steps > 0, zp[:, b - 1: b] + steps * (zp[:, b - 1: b] - zp[:, b - 2: b - 1]), vel_tf)
    later = slice(b - 1, None)                                                       # predictions of frames b..T-1
    err = lambda z: float(np.mean(np.sum((z[:, later] - zp[:, b:]) ** 2 / var, -1)))  # noqa: E731
    lat = {"prior teacher-forced": err(preds["teacher-forced"]), "prior free-running": err(preds["free-running"]),
           "copy last (tf)": err(copy_tf), "constant velocity (tf)": err(vel_tf),
           "copy last (free)": err(copy_fr), "constant velocity (free)": err(vel_fr)}
    ent = frame_entropy(x)
    rest = mu[:, 1:, p:]
    dec = jax.jit(lambda z: model.decode(z))
    nats = {"mean frame (no position)": float(np.mean(frame_bce(np.broadcast_to(mean_frame, x.shape), x) - ent)),
            "self-reconstruction": float(np.mean(frame_bce(np.asarray(dec(jnp.asarray(mu))), x) - ent))}
    for k, z in preds.items():
        lg = np.asarray(dec(jnp.asarray(np.concatenate([z, rest], -1))))
        nats[f"prediction {k}"] = float(np.mean((frame_bce(lg, x[:, 1:]) - ent[:, 1:])[:, later]))
    lp = metrics.linear_projection_mse(mu.reshape(-1, mu.shape[-1]), pos.reshape(-1, 3))
    nn = metrics.knn_mse(mu.reshape(-1, mu.shape[-1]), pos.reshape(-1, 3), k=10)
    return {"latent_err": lat, "ball_nats": nats, "linear": float(lp["mean"]), "linear_per_axis": lp["per_axis"],
            "knn": float(nn["mean"]), "depth_exp": float(metrics.depth_exponent(mu, pos, ball.camera_depth(pos))),
            "zp": zp}


def audit(workdir: str, sequences: int = 64, seed: int = 0, iteration: int | None = None) -> list[str]:
    cfg, mcfg, graphdef, params = load_seeds(workdir)
    model = nnx.merge(graphdef, jax.tree.map(lambda a: a[seed], params))
    train = data_lib.build_dataset(cfg.data, "train")
    held = data_lib.build_dataset(cfg.data, cfg.eval.split)
    if iteration is None:
        iteration = source_step(workdir)
    lines = [f"{workdir} seed {seed}: K={mcfg.K} groups={mcfg.groups} base_len={mcfg.base_len} "
             f"pred_loss_from={mcfg.pred_loss_from} z_norm={mcfg.z_norm} group_scale={mcfg.group_scale}; "
             f"p_tf at iteration {iteration}: {float(cfg_teacher_forcing_prob(iteration, mcfg)):.3f}"]
    r = data_round_trip(train["x"], train["position"], mcfg.batch_size)
    lines.append("1. data: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    xt = train["x"][:sequences].astype(np.float32) / 255.0
    mean_frame = np.asarray(step_lib.mean_frame_logit(train["x"]))
    fit = prediction_report(model, mcfg, xt, train["position"][:sequences], mean_frame)
    for name, v in augmentation_round_trip(jnp.asarray(fit["zp"]), mcfg).items():
        lines.append(f"   augmentation {name}: round-trip max error {v['max_err']:.2e} (mean move {v['moved']:.3f})")
    pos_lines = loss_positions(model, jnp.asarray(xt[: mcfg.batch_size]), iteration, mcfg)
    for name, (hit, want) in pos_lines.items():
        tag = "ok" if hit == want else f"MISMATCH (spec: {_span(want)})"
        lines.append(f"2. {name:18s} scores target frames {_span(hit)}  {tag}")
    for mode, (reads, want) in rollout_reads(model.prior, jnp.asarray(fit["zp"]), mcfg.base_len).items():
        last = " ".join(str(int(np.flatnonzero(row).max()) + 1) if row.any() else "-" for row in reads)
        tag = "ok" if (reads == want).all() else "MISMATCH"
        lines.append(f"   rollout {mode}: the last encoder frame each prediction (frames 2..) reads: {last}  {tag}")
    xe = held["x"][:sequences].astype(np.float32) / 255.0
    for label, rep in (("3. held-out", prediction_report(model, mcfg, xe, held["position"][:sequences], mean_frame)),
                       ("4. training", fit)):
        lines.append(f"{label}: latent error per predicted frame >= {mcfg.base_len + 1} (latent-std units): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in rep["latent_err"].items()))
        lines.append(f"   ball nats per frame (BCE above the frames' entropy): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in rep["ball_nats"].items()))
        lines.append(f"   linear-projection MSE {rep['linear']:.3f} "
                     f"(x/y/z {np.array2string(rep['linear_per_axis'], precision=3)}), 10-NN MSE {rep['knn']:.3f}, "
                     f"depth exponent {rep['depth_exp']:.2f} (0 = linear)")
    return lines


def _span(frames: list[int]) -> str:
    if not frames:
        return "none"
    if frames == list(range(frames[0], frames[-1] + 1)):
        return f"{frames[0]}..{frames[-1]}"
    return ",".join(map(str, frames))


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir", help="an SPS ball run directory or exported folder")
    p.add_argument("--sequences", type=int, default=64, help="trajectories per split for checks 3 and 4")
    p.add_argument("--seed", type=int, default=0, help="which seed's model")
    p.add_argument("--iteration", type=int, default=None,
                   help="training iteration for the loss-position check (default: the run's last step)")
    with cli.report_errors("experiments.symmetry.audit"):
        a = p.parse_args(argv)
        for line in audit(a.workdir, a.sequences, a.seed, a.iteration):
            print(line, flush=True)


if __name__ == "__main__":
    main()
