"""Function-alignment adapters (spec §4): FA_cross's gated low-rank cross-attention and span masking.

LoRA lives in ``layers.Block`` (``LoRAParam``); the FA_self segment embedding lives in the model
(``model.segment_embedding``). Everything here is an ``AdapterParam`` so a task's trainable filter picks
it up, and carries logical axis names like the foundation model's parameters.

Official reference (facts, not code): ``modules/yinyang_cross_attn.py`` ``LowRankMultiheadAttention`` —
q/k/v linears width -> inner (bias), one shared ``pos_linear`` (width -> inner, bias) applied to an
interleaved sinusoid (pe[2k] = sin, pe[2k+1] = cos, of the model width) of each stream's ABSOLUTE frame
index and added to q, k and v; no attention mask (the reference is fully visible); dropout on the
attention probabilities; output linear inner -> width (bias) times a scalar gate initialised to 0.
Size 1: 4 x (768*256 + 256) + 256*768 + 768 + 1 = 984,833 parameters per adapter.
Span masking follows ``modules/hubert.py`` ``_compute_mask`` with ``min_masks=2``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.layers import AdapterParam, dropout, param, torch_uniform
from m4mjax.run.errors import UserError

KVPair = tuple[jax.Array, jax.Array]  # adapter keys/values [B, S, H, D] (projected once per reference)


def interleaved_sinusoid(index: jax.Array, dim: int) -> jax.Array:
    """[..., dim] encoding of (possibly traced) integer ``index``: [2k] = sin(i w_k), [2k+1] = cos(i w_k),
    w_k = 10000^(-2k/dim) (the layout of the official adapter's table, so converted weights line up)."""
    w = jnp.asarray(np.exp(np.arange(0, dim, 2) * (-np.log(10000.0) / dim)), jnp.float32)
    ang = index.astype(jnp.float32)[..., None] * w
    return jnp.stack([jnp.sin(ang), jnp.cos(ang)], axis=-1).reshape(*index.shape, dim)


class CrossAdapter(nnx.Module):
    """Gated low-rank multi-head cross-attention: target hidden states attend a reference's hidden states."""

    def __init__(self, width: int, inner: int = 256, heads: int = 4, *, dropout: float = 0.1, gate_init: float = 0.0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if inner % heads:
            raise UserError(f"adapter_width {inner} is not divisible by adapter_heads {heads}", "config.link")
        hd = inner // heads
        self.heads, self.head_dim, self.rate, self.dtype = heads, hd, dropout, dtype
        u = torch_uniform
        p = functools.partial(param, rngs, dtype=param_dtype, kind=AdapterParam)
        proj = ("embed", "heads", "head_dim")
        self.q, self.q_b = p(u(width), (width, heads, hd), proj), p(u(width), (heads, hd), ("heads", "head_dim"))
        self.k, self.k_b = p(u(width), (width, heads, hd), proj), p(u(width), (heads, hd), ("heads", "head_dim"))
        self.v, self.v_b = p(u(width), (width, heads, hd), proj), p(u(width), (heads, hd), ("heads", "head_dim"))
        self.pos, self.pos_b = p(u(width), (width, heads, hd), proj), p(u(width), (heads, hd), ("heads", "head_dim"))
        self.o = p(u(inner), (heads, hd, width), ("heads", "head_dim", "embed"))
        self.o_b = p(u(inner), (width,), ("embed",))
        # 0 at init (FA_cross): training starts from the plain LM; 1 for the from-scratch seq2seq decoder
        self.gate = p(nnx.initializers.constant(gate_init), (1,), (None,))

    def _pos(self, index: jax.Array) -> jax.Array:
        """Learned projection of the absolute-frame sinusoid: index [..., T] -> [..., T, H, D]."""
        dt = self.dtype
        pe = interleaved_sinusoid(index, self.pos.shape[0]).astype(dt)
        return jnp.einsum("...e,ehd->...hd", pe, self.pos[...].astype(dt)) + self.pos_b[...].astype(dt)

    def project_kv(self, ref: jax.Array, ref_index: jax.Array) -> KVPair:
        """Keys and values [B,S,H,D] of reference hidden states ref [B,S,E] at absolute frames ref_index [S]|[B,S]
        (computed once per reference when sampling)."""
        dt = self.dtype
        r = ref.astype(dt)
        pk = self._pos(ref_index)
        pk = pk[None] if pk.ndim == 3 else pk
        k = jnp.einsum("bse,ehd->bshd", r, self.k[...].astype(dt)) + self.k_b[...].astype(dt) + pk
        v = jnp.einsum("bse,ehd->bshd", r, self.v[...].astype(dt)) + self.v_b[...].astype(dt) + pk
        return k, v

    def __call__(self, h: jax.Array, q_index: jax.Array, kv: KVPair, *, scale: jax.Array | float = 1.0,
                 key: jax.Array | None = None) -> jax.Array:
        """Gated delta [B,T,E] for target hidden states h [B,T,E] at absolute frames q_index [T]|[B,T];
        ``scale`` (scalar or [B]) multiplies the output (the official sampler's adapter multiplier)."""
        dt = self.dtype
        pq = self._pos(q_index)
        pq = pq[None] if pq.ndim == 3 else pq
        q = jnp.einsum("bte,ehd->bthd", h.astype(dt), self.q[...].astype(dt)) + self.q_b[...].astype(dt) + pq
        k, v = kv
        s = jnp.einsum("bthd,bshd->bhts", q, k.astype(dt), preferred_element_type=jnp.float32) / np.sqrt(self.head_dim)
        probs = dropout(jax.nn.softmax(s, axis=-1), self.rate, key).astype(dt)
        ctx = jnp.einsum("bhts,bshd->bthd", probs, v.astype(dt))
        out = jnp.einsum("bthd,hde->bte", ctx, self.o[...].astype(dt)) + self.o_b[...].astype(dt)
        scale = jnp.asarray(scale, dt)
        scale = scale.reshape(-1, 1, 1) if scale.ndim == 1 else scale
        return out * self.gate[...].astype(dt) * scale


def span_mask(key: jax.Array, batch: int, length: int, prob: float, span: int, min_spans: int = 2) -> jax.Array:
    """Bool [batch, length]: wav2vec/HuBERT-style span mask. One count for the batch,
    n = floor(prob*length/span + U[0,1)), at least ``min_spans``, at most length // span; per row, n distinct
    start frames drawn uniformly from [0, length - span]; each masks ``span`` frames (spans may overlap)."""
    if span < 1 or span > length:
        raise UserError(f"mask_length {span} must be in [1, {length}] (the masked stream's frames)", "config.link")
    k_count, k_start = jax.random.split(key)
    n = jnp.floor(prob * length / span + jax.random.uniform(k_count)).astype(jnp.int32)
    n = jnp.maximum(n, min_spans)
    n = jnp.where(n * span > length, length // span, n)
    n_starts = length - span + 1
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_start, (batch, n_starts)), axis=-1), axis=-1)
    chosen = rank < n  # n distinct starts per row
    mask = jnp.zeros((batch, length), bool)
    for o in range(span):
        mask = mask.at[:, o:o + n_starts].set(mask[:, o:o + n_starts] | chosen)
    return mask


def apply_mask(frames: jax.Array, mask: jax.Array, embedding: jax.Array) -> jax.Array:
    """Replace frame embeddings frames [B,F,E] where mask [B,F] by the learned mask ``embedding`` [E]."""
    return jnp.where(mask[..., None], embedding.astype(frames.dtype), frames)
