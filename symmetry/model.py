"""SPS networks (NNX, channels-last): per-step conv VAE encoder/decoder and the recurrent prior.

Audio nets follow spec §4.2 (513 freq x 5 frames per note) and ball nets §4.1 (32x32x3). Because the
audio time axis collapses to width 1 after the first encoder layer, every audio conv is a 1-D conv
over frequency (the 5 frames act as channels of the first layer / output channels of the last); the
layers live in symmetry.layers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from m4mjax.run import mesh as mesh_lib
from symmetry.layers import (Conv1D, ConvTranspose1D, Linear, conv2d_k4s2, conv_transpose2d_k4s2, inits, param,
                             uniform_init)


@dataclasses.dataclass(frozen=True)
class SPSConfig:
    """Every model / loss / optimiser knob of SPS (defaults = camera-ready audio, spec §6)."""

    task: str = "audio"                 # 'audio' (513x5 notes) or 'ball' (32x32x3 frames)
    latent_dim: int = 1                 # d; audio camera-ready 1, ball 3
    prior_dims: int = 1                 # leading latent dims fed to the prior and acted on by groups
    freq_bins: int = 513                # audio F (a smaller F is zero-padded to 32*h+1 and cropped back)
    frames: int = 5                     # audio W (STFT frames per note)
    image_size: int = 32                # ball H = W
    image_channels: int = 3             # ball C
    ball_channels: tuple[int, ...] = (64, 128, 256)  # ball conv widths (encoder order; the decoder mirrors them)
    rnn_type: str = "rnn"               # 'rnn' (Elman, paper) or 'gru'
    rnn_hidden: int = 256
    rnn_layers: int = 1
    conv_impl: str = "matmul"           # convs: 'matmul' (patch GEMMs) or 'lax' (XLA conv); same params and numbers
    variant: str = "vae"                # 'vae' (sampled z, KL) or 'ae' (z = mu, KL = 0)
    prior: bool = True                  # False = the "beta-VAE" baseline: self-recon + KL only
    reparam: str = "official"           # 'official': mu + eps*0.5*exp(logvar); 'standard': mu + eps*exp(logvar/2)
    init: str = "flax"                  # 'flax': lecun-normal kernels, zero biases; 'torch': PyTorch's defaults
                                        # (U(+-1/sqrt(fan_in)) kernels and biases, as the official code got them)
    groups: tuple[str, ...] = ("translate",)  # augmentation paths (groups.make_group names)
    K: int = 4                          # group elements per sequence per path; 0 = "w/o symmetry" ablation
    t_range: float = 4.0                # translation U(-t_range, t_range)
    translate_dims: tuple[int, ...] = (0,)
    base_len: int = 3                   # always teacher-forced prefix
    scheduled_sampling: bool = True     # False = always teacher-forced
    ss_alpha: float = 2200.0
    ss_beta: float = 8000.0
    ss_iter_scale: float = 1.0          # iterations x this before the schedule (shortened runs keep the paper's curve)
    ss_delay: int = 0                   # ss_iter_scale applies only after this iteration (schedule iteration = it up
                                        # to it, then ss_delay + (it - ss_delay) x scale): teacher forcing stays on
                                        # while the latent forms, then follows the paper's fall over fewer steps
    w_kl: float = 0.01
    w_prior_x: float = 1.0
    w_prior_z: float = 2.0
    w_sym_z: float = 4.0
    w_sym_x: float = 1.0
    w_srs: float = 0.0                  # ball: 2 (|z~ - z^|^2 against the identity-path prediction)
    dec_offset: str = "none"            # per-pixel logit added to every decoded frame: 'none' (paper) | 'fixed' |
                                        # 'learnable'; set to logit(mean training frame) at init (step.mean_frame_logit)
    z_ramp_start: int = 0               # z-space losses (prior_z, sym_z, srs) x 0 before this iteration, linear to
    z_ramp_end: int = 0                 # x 1 at z_ramp_end (0, 0 = off: the paper's constant weights)
    z_norm: str = "none"                # z-space losses: 'none' (paper: summed squared error) | 'batch_var' (each
                                        # prior dim's error / that dim's variance of the encoder latent over the
                                        # batch and time, gradient through both: shrinking the latent buys nothing)
    pred_loss_from: int = 1             # first predicted frame the prediction losses score (prior_z, prior_x, sym_*,
                                        # srs): 1 = every prediction (paper); the authors' later ball code (3S,
                                        # rnn_min_context) scores only frames >= 5, i.e. predictions with 5 frames of
                                        # context; frames before it are neither scored nor decoded
    group_scale: str = "none"           # units the groups act in: 'none' (paper: latent units, t ~ U(+-t_range)) |
                                        # 'batch_std' (units of the latent's std over batch and time, the root-mean
                                        # variance of the translate dims, no gradient: z' = s g(z / s), so a latent
                                        # that grows or shrinks meets translations of the same relative size)
    batch_size: int = 20
    learning_rate: float = 1e-3

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | None = None, **overrides: Any) -> "SPSConfig":
        """Build from a dict / ConfigDict; unknown keys raise ValueError naming the key."""
        d = dict(m or {}, **overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"symmetry config: unknown key(s) {bad}; known: {sorted(names)}")
        for k in ("groups", "translate_dims", "ball_channels"):
            if k in d:
                d[k] = tuple(d[k])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        checks = [
            (self.task in ("audio", "ball"), f"task must be 'audio' or 'ball', got {self.task!r}"),
            (self.variant in ("vae", "ae"), f"variant must be 'vae' or 'ae', got {self.variant!r}"),
            (self.reparam in ("official", "standard"), f"reparam must be 'official' or 'standard', got {self.reparam!r}"),
            (self.init in ("flax", "torch"), f"init must be 'flax' or 'torch', got {self.init!r}"),
            (self.rnn_type in ("rnn", "gru"), f"rnn_type must be 'rnn' or 'gru', got {self.rnn_type!r}"),
            (self.conv_impl in ("matmul", "lax"), f"conv_impl must be 'matmul' or 'lax', got {self.conv_impl!r}"),
            (1 <= self.prior_dims <= self.latent_dim, f"prior_dims={self.prior_dims} must be in [1, latent_dim={self.latent_dim}]"),
            (self.K >= 0, f"K must be >= 0, got {self.K}"),
            (self.base_len >= 1, f"base_len must be >= 1, got {self.base_len}"),
            (self.ss_delay >= 0, f"ss_delay must be >= 0, got {self.ss_delay}"),
            (self.pred_loss_from >= 1, f"pred_loss_from must be >= 1, got {self.pred_loss_from}"),
            (all(0 <= i < self.prior_dims for i in self.translate_dims), f"translate_dims {self.translate_dims} must index the prior dims (< {self.prior_dims})"),
            (self.freq_bins >= 33 and self.frames >= 1, f"freq_bins must be >= 33 (got {self.freq_bins}), frames >= 1 (got {self.frames})"),
            (len(self.ball_channels) == 3 and min(self.ball_channels) >= 1, f"ball_channels must be 3 widths >= 1, got {self.ball_channels}"),
            (self.image_size % 8 == 0, f"image_size must be a multiple of 8, got {self.image_size}"),
            (self.dec_offset in ("none", "fixed", "learnable"), f"dec_offset must be 'none', 'fixed' or 'learnable', got {self.dec_offset!r}"),
            (self.z_norm in ("none", "batch_var"), f"z_norm must be 'none' or 'batch_var', got {self.z_norm!r}"),
            (self.group_scale in ("none", "batch_std"), f"group_scale must be 'none' or 'batch_std', got {self.group_scale!r}"),
            (0 <= self.z_ramp_start <= self.z_ramp_end, f"need 0 <= z_ramp_start ({self.z_ramp_start}) <= z_ramp_end ({self.z_ramp_end})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"symmetry config: {msg}")


def audio_config(**overrides: Any) -> SPSConfig:
    """Camera-ready audio settings (spec §5.4, §6)."""
    return SPSConfig.from_mapping(overrides)


def ball_config(**overrides: Any) -> SPSConfig:
    """Final ball baselines (spec §5.2/5.3, §6: Dans_exp_singlColor)."""
    base = dict(task="ball", latent_dim=3, prior_dims=3, groups=("translate", "rotate_y"), K=4, t_range=1.0,
                translate_dims=(0, 2), base_len=5, ss_beta=6000.0, w_sym_z=2.0, w_srs=2.0, batch_size=32)
    return SPSConfig.from_mapping(base, **overrides)


# ----------------------------------------------------------------------------------------------
# Encoders / decoders

AUDIO_CHANNELS = (64, 64, 128, 128)


def audio_last_h(freq_bins: int) -> int:
    """Encoder output length h; the nets are exact for F = 32h+1 (513 -> 16), other F are padded to it."""
    return max(1, math.ceil((freq_bins - 1) / 32))


class AudioEncoder(nnx.Module):
    """[N, F, W] spectrogram notes -> (mu, logvar) [N, d] (spec §4.2)."""

    def __init__(self, cfg: SPSConfig, *, rngs: nnx.Rngs):
        c, impl, t = AUDIO_CHANNELS, cfg.conv_impl, cfg.init == "torch"
        self.h = audio_last_h(cfg.freq_bins)
        self.convs = nnx.List([
            Conv1D(cfg.frames, c[0], 5, 2, 1, impl, torch_init=t, rngs=rngs),
            Conv1D(c[0], c[1], 8, 4, 2, impl, torch_init=t, rngs=rngs),
            Conv1D(c[1], c[2], 4, 2, 1, impl, torch_init=t, rngs=rngs),
            Conv1D(c[2], c[3], 4, 2, 1, impl, torch_init=t, rngs=rngs),
        ])
        self.mu = Linear(c[3] * self.h, cfg.latent_dim, ("embed", "latent"), torch_init=t, rngs=rngs)
        self.logvar = Linear(c[3] * self.h, cfg.latent_dim, ("embed", "latent"), torch_init=t, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        fpad = 32 * self.h + 1 - x.shape[1]
        h = jnp.pad(x, ((0, 0), (0, fpad), (0, 0))) if fpad else x
        for conv in self.convs:
            h = jax.nn.relu(conv(h))
        h = h.reshape(h.shape[0], -1)
        return self.mu(h), self.logvar(h)


class AudioDecoder(nnx.Module):
    """z [N, d] -> logits [N, F, W] (sigmoid of the logits is the paper's decoder output)."""

    def __init__(self, cfg: SPSConfig, *, rngs: nnx.Rngs):
        c, impl, t = AUDIO_CHANNELS, cfg.conv_impl, cfg.init == "torch"
        self.h, self.freq_bins, self.frames = audio_last_h(cfg.freq_bins), cfg.freq_bins, cfg.frames
        dims = (cfg.latent_dim, 16, 64, 256, 1024, c[3] * self.h)
        self.mlp = nnx.List([Linear(a, b, ("latent" if i == 0 else "embed", "mlp"), torch_init=t, rngs=rngs)
                             for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        self.convs = nnx.List([
            ConvTranspose1D(c[3], c[2], 4, 2, 1, impl, torch_init=t, rngs=rngs),
            ConvTranspose1D(c[2], c[1], 4, 2, 1, impl, torch_init=t, rngs=rngs),
            ConvTranspose1D(c[1], c[0], 8, 4, 2, impl, torch_init=t, rngs=rngs),
            ConvTranspose1D(c[0], 1, 5, 2, 1, impl, width=cfg.frames, torch_init=t, rngs=rngs),
        ])

    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for i, layer in enumerate(self.mlp):
            h = layer(h) if i == len(self.mlp) - 1 else jax.nn.relu(layer(h))
        h = h.reshape(h.shape[0], self.h, AUDIO_CHANNELS[3])
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = jax.nn.relu(h)
        return h[:, : self.freq_bins]


def _nnx_inits(torch_init: bool, fan_in: int, channel_axis: int) -> dict:
    """kernel_init / bias_init for nnx.Conv(Transpose) with the 'channels' logical axis on ``channel_axis``."""
    kinit, binit = inits(torch_init, fan_in)
    names = tuple("channels" if i == channel_axis else None for i in range(4))
    mesh_lib.configure_flax()
    return dict(kernel_init=nnx.with_partitioning(kinit, names), bias_init=binit)


class BallEncoder(nnx.Module):
    """[N, 32, 32, 3] frames -> (mu, logvar) [N, d] (spec §4.1)."""

    def __init__(self, cfg: SPSConfig, *, rngs: nnx.Rngs):
        chans = (cfg.image_channels,) + tuple(cfg.ball_channels)
        t = cfg.init == "torch"
        self.convs = nnx.List([nnx.Conv(a, b, (4, 4), strides=2, padding=((1, 1), (1, 1)), **_nnx_inits(t, 16 * a, 3),
                                        rngs=rngs)
                               for a, b in zip(chans[:-1], chans[1:])])
        flat = chans[-1] * (cfg.image_size // 8) ** 2
        self.mu = Linear(flat, cfg.latent_dim, ("embed", "latent"), torch_init=t, rngs=rngs)
        self.logvar = Linear(flat, cfg.latent_dim, ("embed", "latent"), torch_init=t, rngs=rngs)
        self.impl = cfg.conv_impl

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for conv in self.convs:
            h = jax.nn.relu(conv(h) if self.impl == "lax" else conv2d_k4s2(h, conv.kernel[...]) + conv.bias[...])
        h = h.reshape(h.shape[0], -1)
        return self.mu(h), self.logvar(h)


class BallDecoder(nnx.Module):
    """z [N, d] -> logits [N, 32, 32, 3]."""

    def __init__(self, cfg: SPSConfig, *, rngs: nnx.Rngs):
        self.s, self.c = cfg.image_size // 8, cfg.ball_channels[-1]
        dims = (cfg.latent_dim, 16, 32, 64, self.c * self.s * self.s)
        t = cfg.init == "torch"
        self.mlp = nnx.List([Linear(a, b, ("latent" if i == 0 else "embed", "mlp"), torch_init=t, rngs=rngs)
                             for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))])
        chans = tuple(cfg.ball_channels[::-1]) + (cfg.image_channels,)
        # torch ConvTranspose2d(4, s=2, p=1) == padding k-1-p = 2 on the dilated input (spec §10)
        self.convs = nnx.List([nnx.ConvTranspose(a, b, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                                 **_nnx_inits(t, 16 * b, 2), rngs=rngs)
                               for a, b in zip(chans[:-1], chans[1:])])
        self.impl = cfg.conv_impl

    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for i, layer in enumerate(self.mlp):
            h = layer(h) if i == len(self.mlp) - 1 else jax.nn.relu(layer(h))
        h = h.reshape(h.shape[0], self.s, self.s, self.c)
        for i, conv in enumerate(self.convs):
            h = conv(h) if self.impl == "lax" else conv_transpose2d_k4s2(h, conv.kernel[...]) + conv.bias[...]
            if i < len(self.convs) - 1:
                h = jax.nn.relu(h)
        return h


# ----------------------------------------------------------------------------------------------
# Prior

class RNNLayer(nnx.Module):
    """One Elman (h' = tanh(W_x x + W_h h + b)) or GRU (torch gate convention) layer; torch U(-1/sqrt(H), 1/sqrt(H)) init."""

    def __init__(self, din: int, hidden: int, kind: str, *, rngs: nnx.Rngs):
        g = 3 if kind == "gru" else 1
        init = uniform_init(1.0 / math.sqrt(hidden))
        self.kind, self.hidden = kind, hidden
        self.w_x = param(rngs, init, (din, g * hidden), ("latent", "mlp"))
        self.w_h = param(rngs, init, (hidden, g * hidden), ("embed", "mlp"))
        self.b_x = param(rngs, init, (g * hidden,), ("mlp",))
        self.b_h = param(rngs, init, (g * hidden,), ("mlp",))

    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        gx = x @ self.w_x[...] + self.b_x[...]
        gh = h @ self.w_h[...] + self.b_h[...]
        if self.kind == "rnn":
            return jnp.tanh(gx + gh)
        H = self.hidden
        r = jax.nn.sigmoid(gx[..., :H] + gh[..., :H])
        u = jax.nn.sigmoid(gx[..., H:2 * H] + gh[..., H:2 * H])
        n = jnp.tanh(gx[..., 2 * H:] + r * gh[..., 2 * H:])
        return (1.0 - u) * n + u * h


class Prior(nnx.Module):
    """Recurrent prior R: reads the prior dims of z_1..z_t, predicts z_{t+1} (linear read-out, h0 = 0)."""

    def __init__(self, cfg: SPSConfig, *, rngs: nnx.Rngs):
        p, H = cfg.prior_dims, cfg.rnn_hidden
        self.layers = nnx.List([RNNLayer(p if i == 0 else H, H, cfg.rnn_type, rngs=rngs) for i in range(cfg.rnn_layers)])
        self.readout = Linear(H, p, ("embed", "latent"), torch_init=cfg.init == "torch", rngs=rngs)

    def rollout(self, z: jax.Array, mask: jax.Array) -> jax.Array:
        """z [N, T, p], mask bool [T, N] (True = feed z_t, else the previous prediction) -> [N, T-1, p].

        Step i's output predicts frame i+1; the last step's output is dropped (spec §4.4)."""
        n = z.shape[0]
        h0 = jnp.zeros((len(self.layers), n, self.layers[0].hidden), z.dtype)

        def step(carry, inp):
            h, prev = carry
            z_t, m_t = inp
            x = jnp.where(m_t[:, None], z_t, prev)
            hs = []
            for layer, h_l in zip(self.layers, h):
                x = layer(h_l, x)
                hs.append(x)
            out = self.readout(x)
            return (jnp.stack(hs), out), out

        _, outs = jax.lax.scan(step, (h0, jnp.zeros_like(z[:, 0])), (jnp.swapaxes(z, 0, 1), mask))
        return jnp.swapaxes(outs, 0, 1)[:, :-1]


class SPSModel(nnx.Module):
    """Encoder E, decoder D and prior R of SPS."""

    def __init__(self, cfg: SPSConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        enc, dec = (AudioEncoder, AudioDecoder) if cfg.task == "audio" else (BallEncoder, BallDecoder)
        self.encoder = enc(cfg, rngs=rngs)
        self.decoder = dec(cfg, rngs=rngs)
        self.prior = Prior(cfg, rngs=rngs)
        self.offset_mode = cfg.dec_offset
        if cfg.dec_offset != "none":  # a Param (checkpointed, evaluated) in both modes; 'fixed' gets no gradient
            shape = frame_shape(cfg)
            self.dec_offset = param(rngs, nnx.initializers.zeros_init(), shape, (None,) * len(shape))

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., *frame] -> mu, logvar [..., d] (frame = (F, W) audio, (H, W, C) ball)."""
        nf = 2 if isinstance(self.encoder, AudioEncoder) else 3
        lead = x.shape[:-nf]
        mu, logvar = self.encoder(x.reshape((-1,) + x.shape[-nf:]))
        return mu.reshape(lead + mu.shape[-1:]), logvar.reshape(lead + logvar.shape[-1:])

    def decode(self, z: jax.Array) -> jax.Array:
        """z [..., d] -> logits [..., *frame]."""
        y = self.decoder(z.reshape(-1, z.shape[-1]))
        if self.offset_mode != "none":
            b = self.dec_offset[...]
            y = y + (jax.lax.stop_gradient(b) if self.offset_mode == "fixed" else b)
        return y.reshape(z.shape[:-1] + y.shape[1:])


def frame_shape(cfg: SPSConfig) -> tuple[int, ...]:
    """One decoded frame: (F, W) audio, (H, W, C) ball."""
    return (cfg.freq_bins, cfg.frames) if cfg.task == "audio" else (cfg.image_size,) * 2 + (cfg.image_channels,)


def count_params(model: nnx.Module) -> int:
    """Number of parameters (scalars) in a module."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
