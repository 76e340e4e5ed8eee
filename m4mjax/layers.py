"""RoFormer building blocks in Flax NNX: rotary tables, a post-LN block with LoRA and KV cache, a stack.

Faithful to HF ``RoFormerEncoder`` as used by the official m4m code: interleaved-pair rotary embeddings
on q and k (sin table in the first half, cos in the second, base 10000), post-LN BERT blocks, exact GELU,
LayerNorm eps 1e-12, dropout on attention probabilities and on both sub-layer outputs. Parameters start
like PyTorch defaults (uniform +-1/sqrt(fan_in)) because the official modules never ran HF's init.

Parameter layout (for the HF converter): ``qkv[e, j, h, d]`` = ``{query,key,value}[j].weight[h*D+d, e]``,
``o[h, d, e]`` = ``output.dense.weight[e, h*D+d]``, ``ff1``/``ff2`` = ``intermediate``/``output`` dense
weights transposed, ``ln1``/``ln2`` = ``attention.output.LayerNorm`` / ``output.LayerNorm``; a learned
``Stack.pos_table`` = the encoder's ``embed_positions.weight``.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.run import mesh as mesh_lib

NEG_INF = -1e30
Cross = Callable[[int, jax.Array], jax.Array]  # (layer_index, layer input [N,T,E]) -> delta [N,T,E]
KV = tuple[jax.Array, jax.Array]  # per-layer cache: k, v each [N, S, H, D]


class LoRAParam(nnx.Param):
    """Low-rank adapter weights (select with ``nnx.filterlib``/``nnx.state(model, LoRAParam)``)."""


class AdapterParam(nnx.Param):
    """Function-alignment adapter weights (cross-attention adapters, gates, segment/mask embeddings)."""


def torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def param(rngs: nnx.Rngs, init: Callable, shape: Sequence[int], names: Sequence[str | None],
          dtype=jnp.float32, kind: type[nnx.Param] = nnx.Param) -> nnx.Param:
    """A variable of type ``kind`` carrying logical axis names (one per dim) for the mesh rules."""
    if len(names) != len(shape):
        raise ValueError(f"param: names {names} do not match shape {shape}")
    mesh_lib.configure_flax()  # we place variables ourselves: no eager sharding by Flax
    return kind(nnx.with_partitioning(init, tuple(names))(rngs.params(), tuple(shape), dtype))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None (evaluation) or ``rate`` is 0."""
    if key is None or rate == 0.0:
        return x
    # Bits from XLA's RngBitGenerator (seeded from ``key``): ~2x cheaper on CPU than threefry bernoulli.
    data = jax.random.key_data(key).reshape(-1)[:2].astype(jnp.uint32)
    rbg = jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)]), impl="unsafe_rbg")
    keep = jax.random.bits(rbg, x.shape, jnp.uint32) >= jnp.uint32(round(rate * 2**32))
    return jnp.where(keep, x * (1.0 / (1.0 - rate)), jnp.zeros_like(x)).astype(x.dtype)


def fold(key: jax.Array | None, i: int) -> jax.Array | None:
    """Derive a sub-key (or None)."""
    return None if key is None else jax.random.fold_in(key, i)


NORMS = ("post", "pre")  # where each block's LayerNorms sit (model.norm)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, statistics in float32."""
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype)


@functools.lru_cache(maxsize=16)
def sinusoid_table(n: int, dim: int) -> np.ndarray:
    """HF RoFormer position table [n, dim]: sin(pos*w_k) in [:dim/2], cos(pos*w_k) in [dim/2:], w_k=1e4^(-2k/dim)."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    w = np.power(10000.0, -2.0 * np.arange(dim // 2, dtype=np.float64) / dim)[None, :]
    return np.concatenate([np.sin(pos * w), np.cos(pos * w)], axis=1).astype(np.float32)


def rope(positions: jax.Array, table: jax.Array, extra: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(sin, cos) [N, T, 1, dim/2] for integer ``positions`` [N, T] from a position ``table`` [n, dim] (sin
    half, cos half, as HF RoFormer; fixed sinusoids or learned); ``extra`` [N, T, dim] is added to the looked-up
    rows first (FA_self's learned segment embedding). A position past the table gives NaN, never a clipped
    row (``Stack`` raises first wherever the positions are known at trace time)."""
    table = jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)
    if extra is not None:
        table = table + extra.astype(table.dtype)
    sin, cos = jnp.split(table[:, :, None, :], 2, axis=-1)
    return sin, cos


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (x[2k], x[2k+1]) of x [N, T, H, D] by the angles in sin/cos."""
    xp = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    sin, cos = sin.astype(x.dtype), cos.astype(x.dtype)
    return jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1).reshape(x.shape)


def _one_query_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, head_dim: int,
                         dt) -> jax.Array:
    """Attention of one new position (q [N,1,H,D]) over a KV cache (k, v [N,S,H,D]) -> [N,1,H,D], written as
    broadcast multiply + reduce: the same numbers as the batched-dot einsums, which XLA's CPU backend runs
    as N*H tiny GEMMs (4x slower at 16 rows x 129 cached frames). Used by cached sampling steps."""
    s = (q.astype(jnp.float32) * k.astype(jnp.float32)).sum(-1) / np.sqrt(head_dim)  # [N,S,H]
    if mask is not None:  # mask [N|1, 1, S]
        s = jnp.where(mask[:, 0, :, None], s, NEG_INF)
    probs = jax.nn.softmax(s, axis=1).astype(dt)
    return (probs[..., None] * v).sum(1, keepdims=True)


class Block(nnx.Module):
    """One RoFormer layer. Post-LN (official): h = LN1(x + Drop(Attn(x)) [+ cross]); y = LN2(h + Drop(FFN(h))).
    Pre-LN (``norm='pre'``): h = x + Drop(Attn(LN1(x))) [+ cross]; y = h + Drop(FFN(LN2(h))) (the stack ends
    with a final LayerNorm)."""

    def __init__(self, width: int, heads: int, ffn: int, *, dropout: float = 0.1, eps: float = 1e-12,
                 lora_rank: int = 0, lora_alpha: float = 0.0, lora_dropout: float = 0.0, norm: str = "post",
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"model config: width {width} not divisible by heads {heads}")
        if norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {norm!r}")
        self.pre_norm = norm == "pre"
        hd = width // heads
        self.heads, self.head_dim, self.rate, self.eps, self.dtype = heads, hd, dropout, eps, dtype
        u, p = torch_uniform, functools.partial(param, rngs, dtype=param_dtype)
        self.qkv = p(u(width), (width, 3, heads, hd), ("embed", None, "heads", "head_dim"))
        self.qkv_b = p(u(width), (3, heads, hd), (None, "heads", "head_dim"))
        self.o = p(u(width), (heads, hd, width), ("heads", "head_dim", "embed"))
        self.o_b = p(u(width), (width,), ("embed",))
        self.ln1_scale = p(nnx.initializers.ones, (width,), ("embed",))
        self.ln1_bias = p(nnx.initializers.zeros, (width,), ("embed",))
        self.ff1 = p(u(width), (width, ffn), ("embed", "mlp"))
        self.ff1_b = p(u(width), (ffn,), ("mlp",))
        self.ff2 = p(u(ffn), (ffn, width), ("mlp", "embed"))
        self.ff2_b = p(u(ffn), (width,), ("embed",))
        self.ln2_scale = p(nnx.initializers.ones, (width,), ("embed",))
        self.ln2_bias = p(nnx.initializers.zeros, (width,), ("embed",))
        self.lora_rank = lora_rank
        if lora_rank:  # peft-style LoRA on query (index 0) and value (index 1): x A B * alpha/r, B = 0 at init
            self.lora_scale, self.lora_rate = lora_alpha / lora_rank, lora_dropout
            self.lora_a = p(u(width), (2, width, lora_rank), (None, "embed", "rank"), kind=LoRAParam)
            self.lora_b = p(nnx.initializers.zeros, (2, lora_rank, heads, hd), (None, "rank", "heads", "head_dim"),
                            kind=LoRAParam)

    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array, mask: jax.Array | None, *,
                 layer_index: int = 0, cross: Cross | None = None, cache: KV | None = None,
                 cache_index: jax.Array | int = 0, key: jax.Array | None = None,
                 queries: int | None = None) -> tuple[jax.Array, KV | None]:
        """x [N,T,E]; mask bool broadcastable to [N,T,S] (True = attend) or None; returns (y, new cache).
        ``queries=n``: outputs for the first n positions only (every position still gives keys/values):
        the same numbers as ``y[:, :n]`` without the other positions' queries, attention rows and FFN."""
        dt = self.dtype
        xc = x.astype(dt)
        xa = layer_norm(xc, self.ln1_scale[...], self.ln1_bias[...], self.eps) if self.pre_norm else xc
        w, wb = self.qkv[...].astype(dt), self.qkv_b[...].astype(dt)
        if queries is None:
            qkv = jnp.einsum("nte,ejhd->ntjhd", xa, w) + wb
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            if cache is not None or cross is not None:
                raise ValueError("Block: queries= works without a cache or a cross hook")
            q = jnp.einsum("nte,ehd->nthd", xa[:, :queries], w[:, 0]) + wb[0]
            kv = jnp.einsum("nte,ejhd->ntjhd", xa, w[:, 1:]) + wb[1:]
            k, v = kv[:, :, 0], kv[:, :, 1]
            xc, mask = xc[:, :queries], (None if mask is None else mask[:, :queries])
        if self.lora_rank:
            xl = dropout(xa, self.lora_rate, fold(key, 0))
            a, b = self.lora_a[...].astype(dt), self.lora_b[...].astype(dt)
            low = jnp.einsum("nte,jer->jntr", xl, a)
            q = q + jnp.einsum("ntr,rhd->nthd", low[0, :, :q.shape[1]], b[0]) * self.lora_scale
            v = v + jnp.einsum("ntr,rhd->nthd", low[1], b[1]) * self.lora_scale
        q, k = apply_rope(q, sin[:, :q.shape[1]], cos[:, :q.shape[1]]), apply_rope(k, sin, cos)
        new_cache = None
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, axis=1)
            new_cache = (k, v)
            k, v = k.astype(dt), v.astype(dt)
        if cache is not None and q.shape[1] == 1 and key is None:
            ctx = _one_query_attention(q, k, v, mask, self.head_dim, dt)
        else:
            s = jnp.einsum("nthd,nshd->nhts", q, k, preferred_element_type=jnp.float32) / np.sqrt(self.head_dim)
            if mask is not None:
                s = jnp.where(mask[:, None], s, NEG_INF)
            probs = dropout(jax.nn.softmax(s, axis=-1), self.rate, fold(key, 1)).astype(dt)
            ctx = jnp.einsum("nhts,nshd->nthd", probs, v)
        att = jnp.einsum("nthd,hde->nte", ctx, self.o[...].astype(dt)) + self.o_b[...].astype(dt)
        att = dropout(att, self.rate, fold(key, 2))
        if cross is not None:  # FA_cross: gated adapter output joins the self-attention output pre-LN
            att = att + cross(layer_index, x).astype(dt)
        if self.pre_norm:
            h = att + xc
            hf = layer_norm(h, self.ln2_scale[...], self.ln2_bias[...], self.eps)
        else:
            h = hf = layer_norm(att + xc, self.ln1_scale[...], self.ln1_bias[...], self.eps)
        f = jax.nn.gelu(hf @ self.ff1[...].astype(dt) + self.ff1_b[...].astype(dt), approximate=False)
        f = dropout(f @ self.ff2[...].astype(dt) + self.ff2_b[...].astype(dt), self.rate, fold(key, 3))
        if self.pre_norm:
            return f + h, new_cache
        return layer_norm(f + h, self.ln2_scale[...], self.ln2_bias[...], self.eps), new_cache


class Stack(nnx.Module):
    """A RoFormer encoder stack (a Python loop over blocks, so per-layer hooks stay plain Python)."""

    def __init__(self, n_layers: int, width: int, heads: int, ffn: int, *, remat: bool = False,
                 max_positions: int = 1536, position_table: str = "sinusoid", limit: str = "positions",
                 **block_kw):
        """``position_table``: 'sinusoid' (fixed HF table) or 'learned' (a [max_positions, head_dim] parameter,
        N(0,1) at init: what the official modules hold under transformers 4.52.4); ``limit`` names the config
        key that sets ``max_positions`` (for the error when positions run past it)."""
        if position_table not in ("sinusoid", "learned"):
            raise ValueError(f"position table must be 'sinusoid' or 'learned', got {position_table!r}")
        rngs = block_kw.pop("rngs")
        self.head_dim = width // heads
        if position_table == "learned":  # torch nn.Embedding init
            self.pos_table = param(rngs, nnx.initializers.normal(1.0), (max_positions, self.head_dim),
                                   (None, "head_dim"), block_kw.get("param_dtype", jnp.float32))
        self.blocks = nnx.List([Block(width, heads, ffn, rngs=rngs, **block_kw) for _ in range(n_layers)])
        if block_kw.get("norm", "post") == "pre":  # pre-LN: the residual stream is normalised once, at the end
            pdt = block_kw.get("param_dtype", jnp.float32)
            self.final_ln_scale = param(rngs, nnx.initializers.ones, (width,), ("embed",), pdt)
            self.final_ln_bias = param(rngs, nnx.initializers.zeros, (width,), ("embed",), pdt)
            self.eps = block_kw.get("eps", 1e-12)
        self.remat, self.max_positions, self.limit = remat, max_positions, limit
        self.heads = heads

    def table(self) -> jax.Array:
        """The [max_positions, head_dim] rotary table (sin half, cos half), fixed or learned."""
        if hasattr(self, "pos_table"):
            return self.pos_table[...].astype(jnp.float32)
        return jnp.asarray(sinusoid_table(self.max_positions, self.head_dim))

    def check_positions(self, positions: jax.Array, cache: list[KV] | None) -> None:
        """Raise when positions can run past the table: known values, else the cache length, else the sequence
        length (every caller's positions stay below it)."""
        if cache is not None:
            top = cache[0][0].shape[1]
        elif isinstance(positions, jax.core.Tracer):
            top = positions.shape[-1]
        else:
            top = int(np.max(np.asarray(positions))) + 1 if np.size(positions) else 0
        if top > self.max_positions:
            from m4mjax.run.errors import UserError

            raise UserError(f"rotary positions up to {top - 1} but the position table holds {self.max_positions} "
                            "(longer windows need a longer table)", self.limit)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array | None, *,
                 rope_extra: jax.Array | None = None, cross: Cross | None = None,
                 cache: list[KV] | None = None, cache_index: jax.Array | int = 0,
                 key: jax.Array | None = None, last_queries: int | None = None
                 ) -> tuple[jax.Array, list[jax.Array], list[KV] | None]:
        """Run all layers; returns (output, every layer's input hidden state, new caches or None).
        ``last_queries=n``: the last layer computes (and the output holds) the first n positions only."""
        self.check_positions(positions, cache)
        sin, cos = rope(positions, self.table(), rope_extra)
        hiddens, new_caches = [], []
        for i, blk in enumerate(self.blocks):
            hiddens.append(x)
            c = None if cache is None else cache[i]

            # ``i`` is closed over, not a default argument: remat traces defaults, and the cross hook needs
            # a Python int layer index (run is called right away, so the loop variable is the current one).
            nq = last_queries if i == len(self.blocks) - 1 else None

            def run(blk, x, sin, cos, c, cache_index, key):
                return blk(x, sin, cos, mask, layer_index=i, cross=cross, cache=c, cache_index=cache_index,  # noqa: B023
                           key=key, queries=nq)  # noqa: B023

            if self.remat:
                run = nnx.remat(run)
            x, c = run(blk, x, sin, cos, c, cache_index, fold(key, i))
            new_caches.append(c)
        if hasattr(self, "final_ln_scale"):
            x = layer_norm(x, self.final_ln_scale[...], self.final_ln_bias[...], self.eps)
        return x, hiddens, (new_caches if cache is not None else None)

    def init_cache(self, n: int, length: int, dtype) -> list[KV]:
        """Zeroed KV caches for ``n`` sequences of up to ``length`` positions."""
        shape = (n, length, self.heads, self.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]


def causal_mask(t: int, s: int | None = None, offset: jax.Array | int = 0) -> jax.Array:
    """Bool [1, t, s]: query i (absolute position offset+i) may attend key j iff j <= offset+i."""
    s = t if s is None else s
    q = jnp.arange(t)[:, None] + offset
    return (jnp.arange(s)[None, :] <= q)[None]
