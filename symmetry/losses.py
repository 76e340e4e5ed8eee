"""SPS training loss (spec §5): every term with summed reductions, 1/K, and the variant switches.

One call = one training step's forward pass for one model: encode, self-reconstruct, roll the prior
on the identity path and on K transformed copies per group path (all paths in ONE scan), decode every
needed latent in ONE batched decoder call, and return (total, {term: value}).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from symmetry.groups import Group, make_group
from symmetry.model import SPSConfig, SPSModel


def teacher_forcing_prob(iteration: jax.Array, alpha: float, beta: float, iter_scale: float = 1.0,
                         delay: int = 0) -> jax.Array:
    """p_tf(iter) = alpha / (alpha + exp((i + beta) / alpha)) (spec §4.4) at schedule iteration i = iter * iter_scale
    (iter_scale > 1 lets a shorter run follow the paper's curve over its whole length); with a delay, i = iter up to
    it and delay + (iter - delay) * iter_scale after (the curve is continuous at the delay)."""
    it = jnp.asarray(iteration, jnp.float32)
    it = jnp.minimum(it, delay) + jnp.maximum(it - delay, 0.0) * iter_scale
    return alpha / (alpha + jnp.exp((it + beta) / alpha))


def cfg_teacher_forcing_prob(iteration: jax.Array, cfg: SPSConfig) -> jax.Array:
    """p_tf of a config at an iteration."""
    return teacher_forcing_prob(iteration, cfg.ss_alpha, cfg.ss_beta, cfg.ss_iter_scale, cfg.ss_delay)


def teacher_forcing_mask(key: jax.Array, iteration: jax.Array, length: int, cfg: SPSConfig) -> jax.Array:
    """bool [T]: True = feed the (transformed) encoder latent. Steps < base_len always True; later steps
    one Bernoulli(p_tf) each, to be shared across the batch of one loss path."""
    t = jnp.arange(length)
    if not cfg.scheduled_sampling:
        return jnp.ones((length,), bool)
    p = cfg_teacher_forcing_prob(iteration, cfg)
    return (t < cfg.base_len) | (jax.random.uniform(key, (length,)) <= p)


def z_ramp_weight(iteration: jax.Array, start: int, end: int) -> jax.Array:
    """Weight of the z-space losses: 0 before ``start``, linear to 1 at ``end``, 1 after (start = end: a step)."""
    it = jnp.asarray(iteration, jnp.float32)
    if end == start:
        return (it >= start).astype(jnp.float32)
    return jnp.clip((it - start) / (end - start), 0.0, 1.0)


Z_TERMS = ("prior_z", "sym_z/", "srs/")  # the z-space losses (names or name prefixes) that z_ramp scales


def reparameterize(key: jax.Array, mu: jax.Array, logvar: jax.Array, mode: str) -> jax.Array:
    """'official': mu + eps * 0.5 * exp(logvar) (the authors' code); 'standard': mu + eps * exp(logvar / 2)."""
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    scale = 0.5 * jnp.exp(logvar) if mode == "official" else jnp.exp(0.5 * logvar)
    return mu + eps * scale


def kl_sum(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Summed standard-Gaussian KL: -1/2 sum(1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar))


def bce_sum(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Summed BCE of sigmoid(logits) against targets in [0, 1] (torch BCELoss(reduction='sum'))."""
    return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(targets, logits.shape)))


def sq_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    """Summed squared error (torch MSELoss(reduction='sum'))."""
    return jnp.sum((a - b) ** 2)


Z_NORM_EPS = 1e-6  # added to the latent's batch variance (z_norm='batch_var') so a collapsed latent stays finite


def z_sq_sum(a: jax.Array, b: jax.Array, z: jax.Array, mode: str) -> jax.Array:
    """A z-space loss: summed squared error of ``a`` against ``b`` ([..., p]); with mode 'batch_var' each of the
    p dims divided by the variance of the latent ``z`` [B, T, p] over batch and time (+ Z_NORM_EPS), so scaling
    the latent and its predictions together leaves it unchanged."""
    if mode == "none":
        return sq_sum(a, b)
    var = jnp.var(z.reshape(-1, z.shape[-1]), axis=0) + Z_NORM_EPS
    return jnp.sum((a - b) ** 2 / var)


def group_unit(zp: jax.Array, cfg: SPSConfig) -> jax.Array:
    """The unit the groups act in (cfg.group_scale): 1 (paper), or with 'batch_std' the root of the mean variance
    of the translate dims of the prior latent zp [B, T, p] over batch and time, without gradient."""
    if cfg.group_scale == "none":
        return jnp.ones((), zp.dtype)
    var = jnp.var(zp.reshape(-1, zp.shape[-1]), axis=0)[jnp.asarray(cfg.translate_dims)]
    return jax.lax.stop_gradient(jnp.sqrt(jnp.mean(var) + Z_NORM_EPS))


def make_groups(cfg: SPSConfig) -> list[tuple[str, Group]]:
    """The augmentation paths of cfg: [] for K=0 or the beta-VAE baseline."""
    if cfg.K == 0 or not cfg.prior:
        return []
    return [(n, make_group(n, cfg.prior_dims, cfg.translate_dims, cfg.t_range)) for n in cfg.groups]


def prior_paths(prior, zp: jax.Array, iteration: jax.Array, k_mask: jax.Array, k_grp: jax.Array,
                cfg: SPSConfig) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """The prior's rollouts on the identity path and K transformed copies per group path (ONE scan), and the
    z-space terms. zp [B, T, p] -> (zhat [B, T-f0, p] the identity path's predictions of frames f0..T-1,
    {group: its K copies' predictions mapped back, [K, B, T-f0, p]}, {prior_z, sym_z/<g>, srs/<g>: weighted, with 1/K,
    before the z ramp}), f0 = cfg.pred_loss_from."""
    B, T, p = zp.shape
    K, paths = cfg.K, make_groups(cfg)
    mask_keys = jax.random.split(k_mask, 1 + len(paths))
    grp_keys = jax.random.split(k_grp, max(1, len(paths)))
    # all rollouts in one scan: rows [identity B | path 1: K*B | path 2: K*B ...]
    inputs = [zp]
    masks = [jnp.broadcast_to(teacher_forcing_mask(mask_keys[0], iteration, T, cfg)[:, None], (T, B))]
    params = []
    zz = jnp.tile(zp, (K, 1, 1))                                        # copy k of sequence b at row k*B + b
    unit = group_unit(zp, cfg) if paths else None                      # groups act on z / unit
    for i, (_, g) in enumerate(paths):
        gp = g.sample(grp_keys[i], K * B)
        params.append(gp)
        inputs.append(g.apply(gp, zz / unit) * unit)
        m = teacher_forcing_mask(mask_keys[1 + i], iteration, T, cfg)
        masks.append(jnp.broadcast_to(m[:, None], (T, K * B)))
    f0 = cfg.pred_loss_from  # predictions of frames f0..T-1 are scored (1: all of them)
    if not 1 <= f0 < T:
        raise ValueError(f"symmetry config: pred_loss_from={f0} must be in [1, {T}) for {T}-frame sequences")
    pred = prior.rollout(jnp.concatenate(inputs), jnp.concatenate(masks, axis=1))[:, f0 - 1:]  # [rows, T-f0, p]
    zhat = pred[:B]
    terms = {"prior_z": cfg.w_prior_z * z_sq_sum(zhat, zp[:, f0:], zp, cfg.z_norm)}
    zts = {}
    for i, (name, g) in enumerate(paths):
        zt = (g.inverse(params[i], pred[B + i * K * B: B + (i + 1) * K * B] / unit) * unit).reshape(K, B, T - f0, p)
        terms[f"sym_z/{name}"] = cfg.w_sym_z / K * z_sq_sum(zt, zp[None, :, f0:], zp, cfg.z_norm)
        if cfg.w_srs:
            terms[f"srs/{name}"] = cfg.w_srs / K * z_sq_sum(zt, zhat[None], zp, cfg.z_norm)
        zts[name] = zt
    return zhat, zts, terms


def sps_loss(model: SPSModel, x: jax.Array, iteration: jax.Array, key: jax.Array,
             cfg: SPSConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x [B, T, *frame] in [0,1] -> (total loss, dict of weighted terms + 'loss' + 'p_tf').

    Terms: self_x, kl, [prior_x, prior_z, sym_z/<g>, sym_x/<g>, srs/<g>]; each sym term already carries
    its weight and 1/K, and the z-space terms (Z_TERMS) the z_ramp weight (then also logged as 'z_ramp').
    Decoding of predictions uses the prior dims from the prior and, when d > prior_dims, the remaining dims
    from the encoder at the target step."""
    B, T = x.shape[:2]
    k_eps, k_mask, k_grp = jax.random.split(key, 3)
    mu, logvar = model.encode(x)
    if cfg.variant == "ae":
        z, kl = mu, jnp.zeros((), mu.dtype)
    else:
        z, kl = reparameterize(k_eps, mu, logvar, cfg.reparam), cfg.w_kl * kl_sum(mu, logvar)
    terms: dict[str, jax.Array] = {"kl": kl}

    if not cfg.prior:  # "beta-VAE" baseline: self-reconstruction + KL only
        terms["self_x"] = bce_sum(model.decode(z), x)
        return _total(terms, cfg, iteration)

    p, K = cfg.prior_dims, cfg.K
    zp = z[..., :p]
    zhat, zts, z_terms = prior_paths(model.prior, zp, iteration, k_mask, k_grp, cfg)
    terms.update(z_terms)
    f0 = cfg.pred_loss_from
    rest = z[:, f0:, p:]
    dec_in = [z, jnp.concatenate([zhat, rest], -1)]
    dec_in += [jnp.concatenate([zt, jnp.broadcast_to(rest, (K,) + rest.shape)], -1) for zt in zts.values()]

    # one decoder call for self-recon, prior-recon and every symmetry path
    flat = jnp.concatenate([d.reshape(-1, z.shape[-1]) for d in dec_in])
    logits = model.decode(flat)
    n_self, n_prior = B * T, B * (T - f0)
    terms["self_x"] = bce_sum(logits[:n_self].reshape(x.shape), x)
    x_next = x[:, f0:]
    terms["prior_x"] = cfg.w_prior_x * bce_sum(logits[n_self:n_self + n_prior].reshape(x_next.shape), x_next)
    off = n_self + n_prior
    for name in zts:
        lg = logits[off: off + K * n_prior].reshape((K,) + x_next.shape)
        terms[f"sym_x/{name}"] = cfg.w_sym_x / K * bce_sum(lg, x_next[None])
        off += K * n_prior
    return _total(terms, cfg, iteration)


def _total(terms: dict[str, jax.Array], cfg: SPSConfig, iteration: jax.Array) -> tuple[jax.Array, dict]:
    extra = {}
    if cfg.z_ramp_end:  # (0, 0) = off: the paper's graph, untouched
        w = extra["z_ramp"] = z_ramp_weight(iteration, cfg.z_ramp_start, cfg.z_ramp_end)
        terms = {k: v * w if k.startswith(Z_TERMS) else v for k, v in terms.items()}
    total = sum(terms.values())
    out = dict(terms, loss=total, p_tf=cfg_teacher_forcing_prob(iteration, cfg),
               **extra)
    return total, out
