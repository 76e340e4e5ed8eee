"""Is a linear latent a stable point of the SPS objective? Fix the latent to the true ball position, then let go.

  python -m experiments.symmetry.stability_probe [--workdir=DIR] [--supervised-steps=0] [--supervised-k=0]
      [--anchor-steps=450] [--free-steps=900] [--every=150] [--arms=k4,k0] [--adam=fresh] [--iteration=40000]
      [--seeds=2] [--anchor=100] [--forces=0] [--reinit=NETS] [--set key=value ...]

Fresh models (sps_video.py:cpu_recipe with the --set overrides), all phases at the teacher forcing and z ramp of
--iteration (default 40,000: free-running, where the paper's runs spend most of their steps; z ramp at 1):
S  (--supervised-steps): the decoder and prior learn the SPS loss on the TRUE latent (the encoder's means replaced by
   the ball's centre, its log-variances kept; K = --supervised-k, default 0: a fifth of K = 4's decodes), while the
   encoder's means learn the centre by --anchor x squared error. Stands in for the decoder and prior a long campaign
   would have trained, at a fraction of its cost.
A  (--anchor-steps): the SPS loss (K = 4) on the encoder's own latent plus the anchor term.
B  from A's weights, the SPS loss alone, one run per arm: k4 (K = 4), k0 (K = 0), vae (prior off: self-reconstruction
   + KL only: what reconstruction alone does to the latent); --adam=carry continues A's Adam moments, fresh starts
   new ones (session 20's runs). --reinit=encoder,decoder starts those nets of every arm afresh (with --adam=fresh):
   a route probe, whether the arm's objective finds the latent the kept nets were trained on.
Scores every --every steps, per seed on 128 held-out trajectories: linear-projection | 10-NN MSE of the encoder means
against the centre (world units: x, height, depth; the groups' own), and the self-reconstruction's ball nats (BCE
above the frames' own entropy, per frame: how well the decoder draws the ball). With --workdir, S + A run as one
checkpointed counter in DIR/base and each arm in DIR/<arm> (saved every --every steps and on SIGTERM: the same
command resumes), and the scores are appended to DIR/ledger.txt. --forces=N: at each arm's start and end, every
term's gradient on the encoder means over N held-out trajectories (seed 0), and the part of it that is not affine in
the position, i.e. the term's push to bend the latent (twist_forces).
Reading: if k4 keeps the linear latent and k0 loses it, the objective holds linearity once found and a campaign
lacks only reaching it; if both lose it alike, the symmetry terms do not resist what pulls the latent away (vae says
whether reconstruction alone does); if both keep it (session 21, after 6,000 supervised steps), holding does not
separate them and the question is the route (--reinit).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.symmetry.audit import frame_bce, frame_entropy
from experiments.sweep import load_experiment
from m4mjax.run import checkpoint, cli
from symmetry import config as config_lib, data as data_lib, metrics, step as step_lib
from symmetry.losses import sps_loss
from symmetry.model import SPSConfig

VIDEO = "experiments/symmetry/sps_video.py"
ARMS = {"k4": {"K": 4}, "k0": {"K": 0}, "vae": {"prior": False}}   # phase B's objectives (overrides of the config)


class _TrueLatent:
    """The model with the encoder's means replaced by ``mu`` (its log-variances kept), as the SPS loss sees it."""

    def __init__(self, model, mu):
        self.model, self.mu, self.prior = model, mu, model.prior

    def encode(self, x):
        return self.mu, self.model.encode(x)[1]

    def decode(self, z):
        return self.model.decode(z)


def make_step(mcfg: SPSConfig, graphdef, true_latent: bool = False):
    """Jitted step over a seed axis: (params, opt, seed_ids, x uint8 [N, T, ...], pos [N, T, 3], it, key, anchor) ->
    (params, opt, loss [seeds]); the anchor term (weight ``anchor``, 0 = off) pulls the encoder means to pos; with
    ``true_latent`` the SPS loss is taken on pos instead of the encoder's means."""
    tx = step_lib.make_optimizer(mcfg)

    def one(params, opt, seed_id, x_all, pos_all, it, key, anchor):
        kb, kl = jax.random.split(jax.random.fold_in(key, seed_id))
        idx = jax.random.choice(kb, x_all.shape[0], (mcfg.batch_size,), replace=False)
        x, pos = x_all[idx].astype(jnp.float32) / 255.0, pos_all[idx]

        def loss_fn(p):
            model = nnx.merge(graphdef, p)
            total, terms = sps_loss(_TrueLatent(model, pos) if true_latent else model, x, it, kl, mcfg)
            total = total + anchor * jnp.sum((model.encode(x)[0][..., :3] - pos) ** 2)
            return total, terms["loss"]

        (_, loss), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None, None, None, None)))


def twist_forces(model, mcfg: SPSConfig, x: jax.Array, pos: np.ndarray, iteration: int, key: jax.Array) -> dict:
    """{term: (RMS per frame of its gradient w.r.t. the encoder means, RMS of the part of that gradient that is not
    an affine function of the position)} on x [N, T, ...] in [0, 1] with positions pos [N, T, 3], plus 'total'. A
    gradient affine in the position moves an affine latent to another affine latent; the rest is the term's push
    to bend it (least-squares fit over the N x T frames)."""
    mu = model.encode(x)[0]
    it = jnp.int32(iteration)
    names = [k for k in sps_loss(model, x, it, key, mcfg)[1] if k not in ("loss", "p_tf", "z_ramp")]
    terms = lambda m: jnp.stack([sps_loss(_TrueLatent(model, m), x, it, key, mcfg)[1][n] for n in names])  # noqa: E731
    grads = lambda m: jax.lax.map(lambda w: jax.grad(lambda z: terms(z) @ w)(m), jnp.eye(len(names)))  # noqa: E731
    jac = np.asarray(jax.jit(grads)(mu), np.float64)                                 # [terms, N, T, d], one at a time
    return {name: rms_and_non_affine(g, pos) for name, g in zip(names + ["total"], list(jac) + [jac.sum(0)])}


def rms_and_non_affine(g: np.ndarray, pos: np.ndarray) -> tuple[float, float]:
    """(RMS over frames of the vectors g [..., d], RMS of their residual after the least-squares affine fit on the
    positions pos [..., 3] of the same frames)."""
    pos = np.asarray(pos, np.float64).reshape(-1, pos.shape[-1])
    g = np.asarray(g, np.float64).reshape(pos.shape[0], -1)
    design = np.concatenate([pos, np.ones((pos.shape[0], 1))], 1)
    resid = g - design @ np.linalg.lstsq(design, g, rcond=None)[0]
    return float(np.sqrt(np.mean(np.sum(g ** 2, -1)))), float(np.sqrt(np.mean(np.sum(resid ** 2, -1))))


def make_scorer(graphdef, x: np.ndarray, pos: np.ndarray):
    """params [seeds, ...] -> (linear [seeds], 10-NN [seeds], ball nats [seeds]) on trajectories x [N, T, ...] uint8."""
    xf = x.astype(np.float32) / 255.0
    ent = frame_entropy(xf)

    @jax.jit
    @jax.vmap
    def encode_decode(p):
        model = nnx.merge(graphdef, p)
        mu = model.encode(jnp.asarray(xf))[0]
        return mu, model.decode(mu)

    def score(params):
        mu, logits = (np.asarray(a) for a in encode_decode(params))
        flat = mu.reshape(mu.shape[0], -1, mu.shape[-1])
        nats = np.array([np.mean(frame_bce(lg, xf) - ent) for lg in logits])
        return (metrics.linear_projection_mse(flat, pos.reshape(-1, 3))["mean"],
                metrics.knn_mse(flat, pos.reshape(-1, 3), k=10)["mean"], nats)

    return score


def _train(ckdir: str | None, phases: list, params, opt, every: int, report) -> tuple | None:
    """Run phases [(name, steps, step(params, opt, i) -> (params, opt))] under one step counter, calling report(name
    and step within it, params) every ``every`` steps and at each phase's end; with ckdir, saved there on that
    interval and on SIGTERM, resumed from its latest save. Returns (params, opt), or None when stopped by SIGTERM."""
    ck = checkpoint.Checkpointer(ckdir, every=every, keep=2) if ckdir else None
    start = 0
    if ck is not None:
        got = ck.restore({"params": params, "opt": opt})
        if got is not None:
            start, items, _ = got
            params, opt = items["params"], items["opt"]
    end = 0
    try:
        for name, steps, step in phases:
            lo, end = end, end + steps
            for s in range(max(start, lo), end):
                params, opt = step(params, opt, s)
                done = s + 1
                if (done - lo) % every == 0 or done == end:
                    report(f"{name} {done - lo}", params)
                if ck is not None:
                    ck.save(done, {"params": nnx.to_pure_dict(params), "opt": opt}, force=done == end)
                    if ck.preempted:
                        return None
    finally:
        if ck is not None:
            ck.close()
    return params, opt


NETS = ("encoder", "decoder", "prior")


def reinit_parts(params, init, parts: tuple[str, ...]):
    """params with the named nets (of NETS) set back to their values in ``init`` (the fresh models)."""
    if not parts:
        return params
    d, fresh = nnx.to_pure_dict(params), nnx.to_pure_dict(init)
    for part in parts:
        d[part] = fresh[part]
    out = jax.tree.map(lambda a: a, params)
    nnx.replace_by_pure_dict(out, d)
    return out


def _read_lines(path: str | None) -> list[str]:
    if not path or not os.path.isfile(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def run(anchor_steps: int, free_steps: int, every: int, iteration: int, seeds: int, anchor: float,
        overrides: dict, workdir: str | None = None, supervised_steps: int = 0, supervised_k: int = 0,
        arms: tuple[str, ...] = ("k4", "k0"), adam: str = "fresh", n_forces: int = 0,
        reinit: tuple[str, ...] = ()) -> list[str]:
    cfg = load_experiment(VIDEO).get_config("cpu_recipe")
    try:
        mcfg = SPSConfig.from_mapping(dict(dataclasses.asdict(config_lib.model_config(cfg)), K=4, **overrides))
        arm_cfgs = {a: SPSConfig.from_mapping(dict(dataclasses.asdict(mcfg), **ARMS[a])) for a in arms}
        s_cfg = SPSConfig.from_mapping(dict(dataclasses.asdict(mcfg), K=supervised_k))
    except (KeyError, ValueError) as e:
        raise cli.UserError(f"{e} (arms: {', '.join(ARMS)})", "--set / --arms") from None
    if set(reinit) - set(NETS) or (reinit and adam == "carry"):
        raise cli.UserError(f"--reinit takes nets of {', '.join(NETS)}, with --adam=fresh (the moments of a fresh net "
                            f"are not carried), got {','.join(reinit)} with --adam={adam}", "--reinit")
    train = data_lib.build_dataset(cfg.data, "train")
    held = data_lib.build_dataset(cfg.data, cfg.eval.split)
    x_all, pos_all = jnp.asarray(train["x"]), jnp.asarray(train["position"], jnp.float32)
    state = step_lib.init_state(mcfg, seeds, jax.random.key(0), dec_offset=step_lib.mean_frame_logit(train["x"]))
    graphdef, it, key = state.graphdef, jnp.int32(iteration), jax.random.key(1)
    score = make_scorer(graphdef, held["x"][:128], held["position"][:128])
    header = (f"iteration {iteration} (z-ramp and teacher forcing of that step), {seeds} seeds, z_norm={mcfg.z_norm} "
              f"group_scale={mcfg.group_scale}, supervised K={supervised_k}, adam {adam}; held-out linear | 10-NN MSE "
              f"| ball nats per seed")
    lines: list[str] = []
    ledger = os.path.join(workdir, "ledger.txt") if workdir else None

    def emit(line):
        lines.append(line)
        print(line, flush=True)
        if ledger:
            with open(ledger, "a") as f:
                f.write(line + "\n")

    def report(tag, params):
        lin, nn, nats = score(params)
        emit(f"  {tag:16s} " + " / ".join(f"{a:.3f} | {b:.3f} | {c:.2f}" for a, b, c in zip(lin, nn, nats))
             + f"   mean linear {lin.mean():.3f}")

    if workdir:
        os.makedirs(workdir, exist_ok=True)
    emit(header)

    def stepper(c, true_latent, w, offset=0):
        fn = make_step(c, graphdef, true_latent)
        return lambda p, o, s: fn(p, o, state.seed_ids, x_all, pos_all, it,
                                  jax.random.fold_in(key, offset + s), jnp.float32(w))[:2]

    def forces(tag, params, arm):
        line = f"  forces under {arm} at {tag}"
        if n_forces and not any(ln.startswith(line) for ln in _read_lines(ledger)):
            model = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], params))
            f = twist_forces(model, arm_cfgs[arm], jnp.asarray(held["x"][:n_forces], jnp.float32) / 255.0,
                             held["position"][:n_forces], iteration, jax.random.key(2))
            emit(f"{line} (seed 0; per frame |gradient on the means| / its non-affine part): "
                 + ", ".join(f"{k} {a:.2f}/{b:.2f}" for k, (a, b) in f.items()))

    base = _train(workdir and os.path.join(workdir, "base"),
                  [("supervised", supervised_steps, stepper(s_cfg, True, anchor)),
                   ("anchored", anchor_steps, stepper(mcfg, False, anchor))],
                  state.params, state.opt_state, every, report)
    if base is None:
        return lines
    start = reinit_parts(base[0], state.params, reinit)
    for a in arms:
        forces("the start", start, a)
    for a in arms:
        opt = base[1] if adam == "carry" else jax.vmap(step_lib.make_optimizer(arm_cfgs[a]).init)(start)
        out = _train(workdir and os.path.join(workdir, a), [(a, free_steps, stepper(arm_cfgs[a], False, 0.0, 10**6))],
                     start, opt, every, report)
        if out is None:
            break
        forces(f"its end ({free_steps} steps)", out[0], a)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=None, help="checkpoint and ledger folder (resumable); none: in memory")
    p.add_argument("--supervised-steps", type=int, default=0)
    p.add_argument("--supervised-k", type=int, default=0)
    p.add_argument("--anchor-steps", type=int, default=450)
    p.add_argument("--free-steps", type=int, default=900)
    p.add_argument("--every", type=int, default=150)
    p.add_argument("--arms", default="k4,k0", help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--adam", choices=("fresh", "carry"), default="fresh")
    p.add_argument("--reinit", default="", help=f"comma-separated nets of {', '.join(NETS)} that each arm starts "
                   "afresh (a route probe: can the arm's objective find the latent the other nets were trained on?)")
    p.add_argument("--forces", type=int, default=0, metavar="N",
                   help="on N held-out trajectories, each term's push on the latent at each arm's start and end")
    p.add_argument("--iteration", type=int, default=40_000, help="training iteration whose schedules to use")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--anchor", type=float, default=100.0, help="weight of the anchor term in phases S and A")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --set z_norm=batch_var")
    with cli.report_errors("experiments.symmetry.stability_probe"):
        a = p.parse_args(argv)
        run(a.anchor_steps, a.free_steps, a.every, a.iteration, a.seeds, a.anchor, config_lib.parse_sets(a.set),
            a.workdir, a.supervised_steps, a.supervised_k, tuple(x for x in a.arms.split(",") if x), a.adam,
            a.forces, tuple(x for x in a.reinit.split(",") if x))


if __name__ == "__main__":
    main()
