"""The m4m foundation LM (``RoFormerSymbolicTransformer`` equivalent) in Flax NNX.

Hierarchy over ``tokens[B, F, L]`` (F 16th-note frames, each row: tokens, EOS, PAD...):
  1. local encoder (bidirectional) over [SOS, frame tokens] -> the SOS output is the frame embedding;
  2. global decoder (causal over frames) over [global SOS, frame 0 .. F-2] -> one vector per frame;
  3. local decoder (causal over tokens) over [global vector, tok 0 .. tok L-2] -> logits for tok 0 .. L-1.
Hooks used by the function-alignment links (spec 4) without forking this file: explicit rotary
``positions``, ``segment_ids`` (learned segment table, added to the rotary table), ``attn_mask``,
every layer's hidden states, and a per-layer ``cross(layer_index, h) -> delta`` callable.
As in the official code the local encoder does not mask PAD keys (set ``local_pad_mask`` to mask them).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from m4mjax.layers import KV, AdapterParam, Cross, LoRAParam, Stack, causal_mask, fold, param, torch_uniform
from m4mjax.run.mesh import constrain

__all__ = ["model_config", "M4MTransformer", "lm_loss", "loss_fn", "count_params", "LoRAParam", "AdapterParam"]

LOCAL_POSITIONS = 1536  # the local stacks' rotary table length (the official local configs' default)
# size -> (width, layers, heads, ffn) of the global decoder (spec 3)
SIZES = {0: (512, 6, 8, 1024), 1: (768, 12, 12, 3072), 2: (1024, 24, 16, 4096), 3: (1280, 32, 16, 5120)}


def model_config(size: int = 1) -> ml_collections.ConfigDict:
    """Model section of an experiment config for spec sizes 0..3 (size 1 = the released foundation model)."""
    if size not in SIZES:
        raise ValueError(f"model_config: size must be one of {sorted(SIZES)}, got {size}")
    width, layers, heads, ffn = SIZES[size]
    return ml_collections.ConfigDict(dict(
        size=size,  # informational: which spec size the numbers below came from
        vocab_size=3331,  # 3328 normal tokens + SOS, EOS, PAD
        sos_id=3328, eos_id=3329, pad_id=3330,  # special token ids (from the tokenizer)
        max_frame_tokens=33,  # L: tokens per frame row (16 notes x 2 + EOS)
        row_format="eos",  # 'eos': every row ends with EOS (L = 2 x notes + 1) | 'official': up to L/2 notes, EOS
        # only when fewer (the official rows: L = 32)
        width=width, layers=layers, heads=heads, ffn=ffn,  # global decoder
        local_layers=3, local_heads=8, local_ffn=768,  # local encoder and local decoder
        dropout=0.1,  # hidden and attention-probability dropout
        layer_norm_eps=1e-12,  # HF RoFormer default
        norm="post",  # 'post' (official: LayerNorm after each residual sum) | 'pre' (LayerNorm on each block's input,
        # one final LayerNorm per stack; the official checkpoints are post-LN)
        max_frames=1536,  # global rotary table length: frame positions must stay below it
        position_tables="sinusoid",  # rotary tables: 'sinusoid' (fixed) | 'learned' (all three stacks: trainable,
        # N(0,1) init, what the official modules hold under transformers 4.52.4) | 'learned_local' (local stacks
        # learned, global fixed: the official FA models, whose loader rebuilds the global sinusoids)
        dtype="float32",  # compute dtype: float32 | bfloat16 (LayerNorm, softmax, loss stay float32)
        param_dtype="float32",  # storage dtype of parameters
        remat=False,  # rematerialise each block in the backward pass (saves memory, costs ~1/3 more FLOPs)
        local_pad_mask=False,  # mask PAD keys in the local encoder (the official model does not)
        lora_rank=0,  # LoRA rank on query/value projections (0 = no LoRA)
        lora_alpha=0.0,  # LoRA scale = alpha / rank
        lora_dropout=0.1,  # dropout on the LoRA input
        lora_scope="all",  # 'all' = every query/value (official peft name match, 36 at size 1) | 'global'
        segment_embedding=False,  # FA_self: learned [2, head_dim] table added to the global rotary table
        head_capacity=0.0,  # training/eval loss: 0 = vocabulary head on every token slot (official); f in (0, 1] =
        # head + cross-entropy only on the real (non-PAD) slots, up to f x F x L per row (exact: a batch with a
        # fuller row falls back to the dense head). Most slots are PAD, and the head is the costliest layer
    ))


class M4MTransformer(nnx.Module):
    """Local encoder -> causal global decoder -> local decoder + vocabulary head (spec 3)."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        if cfg.lora_scope not in ("all", "global"):
            raise ValueError(f"model.lora_scope must be 'all' or 'global', got {cfg.lora_scope!r}")
        self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: the graphdef is a jit static argument
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.dtype = dt
        E, V = cfg.width, cfg.vocab_size
        common = dict(dropout=cfg.dropout, eps=cfg.layer_norm_eps, norm=cfg.get("norm", "post"), dtype=dt, param_dtype=pdt, remat=cfg.remat,
                      rngs=rngs)
        lora = dict(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)
        local_lora = lora if cfg.lora_scope == "all" else {}
        tables = cfg.get("position_tables", "sinusoid")  # absent from configs written before the key existed
        if tables not in ("sinusoid", "learned", "learned_local"):
            raise ValueError(f"model.position_tables must be 'sinusoid', 'learned' or 'learned_local', got {tables!r}")
        local_pos = dict(max_positions=LOCAL_POSITIONS, limit="model.max_frame_tokens",
                         position_table="sinusoid" if tables == "sinusoid" else "learned")
        global_pos = dict(max_positions=cfg.max_frames, limit="model.max_frames",
                          position_table="learned" if tables == "learned" else "sinusoid")
        normal = nnx.initializers.normal(1.0)  # torch nn.Embedding / randn init
        self.embed = param(rngs, normal, (V, E), ("vocab", "embed"), pdt)
        self.global_sos = param(rngs, normal, (E,), ("embed",), pdt)
        self.local_encoder = Stack(cfg.local_layers, E, cfg.local_heads, cfg.local_ffn, **local_pos, **common,
                                   **local_lora)
        self.global_decoder = Stack(cfg.layers, E, cfg.heads, cfg.ffn, **global_pos, **common, **lora)
        self.local_decoder = Stack(cfg.local_layers, E, cfg.local_heads, cfg.local_ffn, **local_pos, **common,
                                   **local_lora)
        self.head = param(rngs, torch_uniform(E), (E, V), ("embed", "vocab"), pdt)
        self.head_b = param(rngs, torch_uniform(E), (V,), ("vocab",), pdt)
        if cfg.segment_embedding:  # zero-initialised: training starts from the unmodified LM
            self.segment_embed = param(rngs, nnx.initializers.zeros, (2, E // cfg.heads), (None, "head_dim"), pdt,
                                       kind=AdapterParam)

    # --- the three stages --------------------------------------------------------------------------
    def local_encode(self, tokens: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """tokens [B,F,L] -> (frame embeddings [B,F,E], local-decoder token inputs [B,F,L,E])."""
        B, F, L = tokens.shape
        x = tokens.reshape(B * F, L)
        x = jnp.concatenate([jnp.full((B * F, 1), self.cfg.sos_id, x.dtype), x], axis=1)
        emb = jnp.take(self.embed[...], x, axis=0).astype(self.dtype)
        emb = constrain(emb, "batch", "seq", "embed")
        mask = (x != self.cfg.pad_id)[:, None, :] if self.cfg.local_pad_mask else None
        pos = jnp.broadcast_to(jnp.arange(L + 1), (B * F, L + 1))
        h, _, _ = self.local_encoder(emb, pos, mask, key=key, last_queries=1)  # only the SOS output is used
        E = self.cfg.width
        return h[:, 0].reshape(B, F, E), emb[:, :-1].reshape(B, F, L, E)

    def global_inputs(self, frames: jax.Array) -> jax.Array:
        """[global SOS, frame 0 .. F-2]: the decoder's input for next-frame prediction."""
        B, _, E = frames.shape
        sos = jnp.broadcast_to(self.global_sos[...].astype(frames.dtype), (B, 1, E))
        return jnp.concatenate([sos, frames[:, :-1]], axis=1)

    def global_decode(self, h: jax.Array, positions: jax.Array | None = None, *,
                      segment_ids: jax.Array | None = None, attn_mask: jax.Array | None = None,
                      cross: Cross | None = None, cache: list[KV] | None = None,
                      cache_index: jax.Array | int = 0, key: jax.Array | None = None
                      ) -> tuple[jax.Array, list[jax.Array], list[KV] | None]:
        """Causal decoder over frame vectors h [B,T,E].

        positions [B,T]: rotary positions (default cache_index + arange(T)); segment_ids [B,T] in {0,1}
        select the learned segment row (needs ``segment_embedding``); attn_mask bool [B|1,T,T] replaces
        the causal mask (no cache); cross(layer, layer_input) adds to each self-attention output.
        With ``cache`` (from ``init_global_cache``), T new frames are written at ``cache_index``.
        Returns (output [B,T,E], every layer's input [B,T,E], new cache)."""
        B, T, _ = h.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T) + cache_index, (B, T))
        extra = None
        if self.cfg.segment_embedding:
            seg = jnp.zeros((B, T), jnp.int32) if segment_ids is None else segment_ids
            extra = jnp.take(self.segment_embed[...], seg, axis=0)
        elif segment_ids is not None:
            raise ValueError("global_decode: segment_ids given but model.segment_embedding is False")
        if cache is not None:
            if attn_mask is not None:
                raise ValueError("global_decode: attn_mask is not supported with a KV cache")
            mask = causal_mask(T, cache[0][0].shape[1], cache_index)
        else:
            mask = causal_mask(T) if attn_mask is None else attn_mask
        h = constrain(h.astype(self.dtype), "batch", "seq", "embed")
        out, hiddens, cache = self.global_decoder(h, positions, mask, rope_extra=extra, cross=cross, cache=cache,
                                                  cache_index=cache_index, key=key)
        return constrain(out, "batch", "seq", "embed"), hiddens, cache

    def logits(self, h: jax.Array) -> jax.Array:
        """Vocabulary head, float32 logits."""
        dt = self.dtype
        return (h.astype(dt) @ self.head[...].astype(dt) + self.head_b[...].astype(dt)).astype(jnp.float32)

    def local_hidden(self, g: jax.Array, tok_emb: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """g [B,F,E] global outputs, tok_emb [B,F,L,E] -> local-decoder outputs [B,F,L,E] (teacher forcing)."""
        B, F, L, E = tok_emb.shape
        x = jnp.concatenate([g.reshape(B * F, 1, E).astype(self.dtype), tok_emb.reshape(B * F, L, E)[:, 1:]], 1)
        x = constrain(x, "batch", "seq", "embed")
        pos = jnp.broadcast_to(jnp.arange(L), (B * F, L))
        h, _, _ = self.local_decoder(x, pos, causal_mask(L), key=key)
        return h.reshape(B, F, L, E)

    def local_decode(self, g: jax.Array, tok_emb: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """g [B,F,E] global outputs, tok_emb [B,F,L,E] -> logits [B,F,L,V] (teacher forcing)."""
        return self.logits(self.local_hidden(g, tok_emb, key))

    def token_loss(self, h: jax.Array, targets: jax.Array, weights: jax.Array | None = None
                   ) -> tuple[jax.Array, dict]:
        """``lm_loss`` of the head on local-decoder outputs h [B,F,L,E] against targets [B,F,L]; with
        ``model.head_capacity`` the head runs only on real slots (``sparse_head_loss``)."""
        cap = float(self.cfg.get("head_capacity", 0.0))
        if cap <= 0:
            return lm_loss(self.logits(h), targets, self.cfg.pad_id, weights)
        return sparse_head_loss(self.logits, h, targets, self.cfg.pad_id, weights, cap)

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, attn_mask: jax.Array | None = None,
                 cross: Cross | None = None, key: jax.Array | None = None,
                 return_hidden: bool = False):
        """tokens [B,F,L] -> logits [B,F,L,V] for next-frame prediction (dropout iff ``key`` is given).

        positions/segment_ids/attn_mask index the global decoder's input sequence (position t holds frame
        t-1 and predicts frame t). With ``return_hidden`` also returns each global layer's input."""
        h, hiddens = self.hidden(tokens, positions=positions, segment_ids=segment_ids, attn_mask=attn_mask,
                                 cross=cross, key=key)
        logits = self.logits(h)
        return (logits, hiddens) if return_hidden else logits

    def hidden(self, tokens: jax.Array, *, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, attn_mask: jax.Array | None = None,
               cross: Cross | None = None, key: jax.Array | None = None) -> tuple[jax.Array, list[jax.Array]]:
        """``__call__`` without the head: (local-decoder outputs [B,F,L,E], each global layer's input)."""
        frames, tok_emb = self.local_encode(tokens, fold(key, 0))
        g, hiddens, _ = self.global_decode(self.global_inputs(frames), positions, segment_ids=segment_ids,
                                           attn_mask=attn_mask, cross=cross, key=fold(key, 1))
        return self.local_hidden(g, tok_emb, fold(key, 2)), hiddens

    # --- incremental decoding -----------------------------------------------------------------------
    def init_global_cache(self, batch: int, length: int) -> list[KV]:
        """Empty global KV cache for ``length`` frame positions."""
        if length > self.cfg.max_frames:
            raise ValueError(f"sampling: {length} frames exceed model.max_frames={self.cfg.max_frames}")
        return self.global_decoder.init_cache(batch, length, self.dtype)

    def init_local_cache(self, n: int) -> list[KV]:
        """Empty local-decoder KV cache for ``n`` frames of ``max_frame_tokens`` tokens."""
        return self.local_decoder.init_cache(n, self.cfg.max_frame_tokens, self.dtype)

    def local_step(self, x: jax.Array, index: jax.Array, cache: list[KV]) -> tuple[jax.Array, list[KV]]:
        """One local-decoder step: x [N,E] is the input at token position ``index`` -> (logits [N,V], cache)."""
        N = x.shape[0]
        pos = jnp.full((N, 1), index, jnp.int32)
        mask = causal_mask(1, cache[0][0].shape[1], index)
        h, _, cache = self.local_decoder(x[:, None].astype(self.dtype), pos, mask, cache=cache, cache_index=index)
        return self.logits(h[:, 0]), cache

    def embed_tokens(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings in the compute dtype."""
        return jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)


def lm_loss(logits: jax.Array, targets: jax.Array, pad_id: int,
            weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Mean token cross-entropy ignoring PAD (and where ``weights`` is 0); aux: tokens, accuracy, loss_sum."""
    mask = (targets != pad_id).astype(jnp.float32)
    if weights is not None:
        mask = mask * weights.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    n = mask.sum()
    total = (ce * mask).sum()
    correct = ((logits.argmax(-1) == targets) * mask).sum()
    denom = jnp.maximum(n, 1.0)
    return total / denom, dict(tokens=n, accuracy=correct / denom, loss_sum=total)


def sparse_head_loss(head, h: jax.Array, targets: jax.Array, pad_id: int, weights: jax.Array | None,
                     capacity: float) -> tuple[jax.Array, dict]:
    """``lm_loss(head(h), targets, pad_id, weights)`` computing ``head`` (outputs [..., E] -> logits [..., V])
    only on each row's real (non-PAD) slots: per batch row, the first ``ceil(capacity x F x L)`` real slots are
    gathered (order kept) and scored; if any row has more, the whole batch takes the dense path instead (both
    paths are compiled, ``lax.cond`` picks one), so the result never depends on the capacity."""
    B = targets.shape[0]
    E = h.shape[-1]
    t = targets.reshape(B, -1)
    n_slots = t.shape[1]
    C = min(max(int(math.ceil(capacity * n_slots)), 1), n_slots)
    real = t != pad_id
    w = None if weights is None else weights.reshape(B, -1)

    def sparse(_):
        idx = jax.vmap(lambda r: jnp.nonzero(r, size=C, fill_value=0)[0])(real)  # [B, C]
        take = jax.vmap(lambda x, i: jnp.take(x, i, axis=0))
        valid = jnp.arange(C)[None, :] < real.sum(1, keepdims=True)
        tt = jnp.where(valid, take(t, idx), pad_id)
        return lm_loss(head(take(h.reshape(B, n_slots, E), idx)), tt, pad_id, None if w is None else take(w, idx))

    def dense(_):
        return lm_loss(head(h), targets, pad_id, weights)

    if C == n_slots:
        return dense(None)
    return jax.lax.cond(real.sum(1).max() <= C, sparse, dense, None)


def loss_fn(model: M4MTransformer, tokens: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Pretraining objective on tokens [B,F,L]: next-frame token cross-entropy (PAD ignored)."""
    return model.token_loss(model.hidden(tokens, key=key)[0], tokens)


def count_params(cfg: ml_collections.ConfigDict, kind=nnx.Param) -> int:
    """Number of parameters of variable type ``kind`` without allocating (nnx.eval_shape)."""
    abstract = nnx.eval_shape(lambda: M4MTransformer(cfg, rngs=nnx.Rngs(0)))
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, kind)))


def train_step_flops(cfg, batch: int, frames: int) -> float:
    """Analytic FLOPs of one training step: 3 x forward; forward = 2 x (token slots x local params + frames x
    global params + token slots x E x V) + attention. Dense over all L slots, whatever their fill."""
    E, L, V = cfg.width, cfg.max_frame_tokens, cfg.vocab_size
    p_loc = cfg.local_layers * (4 * E * E + 2 * E * cfg.local_ffn)
    p_glob = cfg.layers * (4 * E * E + 2 * E * cfg.ffn)
    n = batch * frames
    dense = 2 * (n * (L + 1) * p_loc + n * p_glob + n * L * (p_loc + E * V))
    attn = 4 * E * (n * (L + 1) ** 2 * cfg.local_layers + batch * frames ** 2 * cfg.layers + n * L ** 2 * cfg.local_layers)
    return 3.0 * (dense + attn)
