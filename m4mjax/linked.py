"""The linked model (spec §4): the unchanged foundation LM aligned to a reference stream, two ways.

* ``fa_self`` (official ``RoformerPrompt``): ONE causal global pass over
  ``[global SOS, ref 0 .. ref F1-1, tgt 0 .. tgt F2-2]``; the output at sequence position F1+j predicts
  target frame j (so the last reference frame is the target segment's first input). Rotary positions are
  ``0..F1-1`` then ``0..F2-1`` (time-aligned); segment ids 0/1 select a zero-initialised learned row added to
  the rotary table (``change_pe=False`` is the ablation: plain positions, no segment table). Loss on the
  target frames only. LoRA r=64/alpha=128 on every query/value projection.
* ``fa_cross`` (official ``RoformerYinyang``): the same LoRA'd LM (r=16/alpha=32) runs on both streams.
  The reference pass is the LM's ordinary causal pass (global SOS prepended, last frame dropped, exactly as
  the official code calls it); every ``adapter_every`` global layers a gated cross-attention adapter reads
  the target's layer input (queries) and the reference's input to the same layer (keys/values; no mask, so
  the whole reference is visible) and adds its output to the target's self-attention output before the
  residual LayerNorm (``layers.Block``). Absolute frame indices are ``position * stride`` per stream.
* ``seq2seq`` (the paper's from-scratch baseline, official ``cp_transformer_seq2seq.py``): an encoder-decoder at
  the official sizes (``link.seq2seq``: width 256, 3 + 3 global layers, 4 heads, FFN 512, local stacks of 2
  layers), every parameter trained from scratch. The shared local encoder embeds both streams; a bidirectional
  global encoder (no mask, rotary positions 0..F1-1, no SOS) reads the reference; the causal global decoder is
  the LM's, with a full-width cross-attention (the FA_cross adapter module with ``adapter_width`` = width,
  gate initialised to 1) in EVERY layer reading the encoder's OUTPUT. Deviation (a transformers RoFormer decoder
  has its own cross-attention sublayer after self-attention, queries from that sublayer's output, rotary
  positions): the cross term joins through the same hook as FA_cross's adapters, with absolute-frame position
  terms, so both cross-attending models share one sampler.
* Span masking (all kinds; the seq2seq default is off, as the official forward never masks): frame embeddings of ``mask_stream`` (out of the local encoder, before the global
  SOS shift) are replaced by a learned mask embedding, only when a dropout key is given (training).
* ``reference_sounding`` (all kinds; deviation, off = official): the pitches sounding at each reference frame
  (``sounding_pitches``, held notes included) enter its frame embedding through a zero-initialised projection.

The linked model IS an ``M4MTransformer`` (subclass, nothing overridden), so every foundation parameter keeps
its path and ``--config.init_from=<LM workdir>`` merges the LM weights by path; the LoRA/adapter/segment/
mask variables are absent from an LM checkpoint and keep their (identity) init.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from m4mjax import adapters as ad
from m4mjax import tokenizer as tok
from m4mjax.layers import AdapterParam, LoRAParam, Stack, fold, layer_norm, param
from m4mjax.model import M4MTransformer
from m4mjax.run.cli import UserError

KINDS = ("fa_self", "fa_cross", "seq2seq")
# seq2seq model sizes (official cp_transformer_seq2seq.py: hidden 256, 3 + 3 layers, 4 heads, FFN 512, local 2 x 4 heads)
SEQ2SEQ = dict(width=256, layers=3, heads=4, ffn=512, local_layers=2, local_heads=4, local_ffn=512)


OFFICIAL_LORA = {"fa_self": (64, 128.0), "fa_cross": (16, 32.0), "seq2seq": (0, 0.0)}  # (rank, alpha) per kind (spec §4)


def link_config(kind: str = "fa_self") -> ml_collections.ConfigDict:
    """The ``link`` section of a function-alignment experiment config (official defaults per kind)."""
    if kind not in KINDS:
        raise UserError(f"link kind must be one of {KINDS}, got {kind!r}", "config.link.kind")
    rank, alpha = OFFICIAL_LORA[kind]
    s2s = kind == "seq2seq"
    return ml_collections.ConfigDict(dict(
        kind=kind,  # 'fa_self' (one pass) | 'fa_cross' (two passes + adapters) | 'seq2seq' (from-scratch baseline)
        lora_rank=rank, lora_alpha=alpha,  # LoRA on query/value (official: 64/128 FA_self, 16/32 FA_cross)
        lora_dropout=0.1,  # dropout on the LoRA input
        lora_scope="all",  # 'all' = every query/value incl. local encoder/decoder (official peft match) | 'global'
        change_pe=True,  # fa_self: target positions restart at 0 + segment embedding (False = official ablation)
        adapter_every=2,  # fa_cross: one adapter per this many global layers (at layers 0, n, 2n, ...)
        adapter_width=256, adapter_heads=4, adapter_dropout=0.1,  # fa_cross adapter: inner width, heads, dropout
        mask_prob=0.0 if s2s else 0.25,  # span-masking rate in training (0 = off; the released demo runs used 0)
        mask_length=10,  # frames per masked span
        mask_stream="target",  # 'target' | 'reference' (the official task word 'lmask')
        adapter_scale=1.0,  # fa_cross: default multiplier on adapter outputs when sampling (guidance-like)
        adapter_norm=False,  # fa_cross: normalise the adapter's inputs (parameter-free LayerNorm of the target's
        # layer input and of the reference states), as a post-LN foundation hands them; for pre-LN foundations
        # whose residual stream grows with depth (deviation from the official code, off = official)
        ref_stride=1, target_stride=1,  # fa_cross: absolute frame index = position * stride (time compression)
        train="full" if s2s else "link",  # 'link' = only LoRA/adapter/segment/mask variables | 'full' = all
        seq2seq=dict(SEQ2SEQ),  # seq2seq: the model sizes it uses instead of cfg.model's (encoder = decoder shape)
        # training-loss weight per target token class (label_token_weights; all 1 = official plain token mean)
        loss_weights=dict(open=1.0, chord=1.0, beat=1.0, eos=1.0),
        # deviation (off = official): add to each reference frame's embedding a learned projection (zero-initialised)
        # of the pitches SOUNDING at that frame (``sounding_pitches``), so what is heard now, held notes included,
        # is one linear read away instead of an attention search over earlier onsets and their durations
        reference_sounding=False,
        # deviation (off = official): add to the global input that predicts target frame j a zero-initialised
        # projection of the pitches sounding in the REFERENCE at frame j (time-aligned streams, strides 1): the
        # music under the frame being predicted, with no attention to learn first (a from-scratch CPU model does
        # not learn FA_self's alignment in 1,000 steps: docs/RESULTS.md, issue 23)
        target_sounding=False,
    ))


def resolve_link(link: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``cfg.link`` with ``lora_rank``/``lora_alpha`` of 0 replaced by the kind's official values, so
    ``--config.link.kind=fa_cross`` alone switches the link with its own LoRA size (idempotent)."""
    out = ml_collections.ConfigDict(link.to_dict())
    rank, alpha = OFFICIAL_LORA.get(out.kind, (out.lora_rank, out.lora_alpha))
    if not out.lora_rank:
        out.lora_rank = rank
    if not out.lora_alpha and rank:
        out.lora_alpha = float(alpha) * out.lora_rank / rank  # the official alpha/rank ratio (2)
    return out


def _check(link) -> None:
    checks = [("kind", link.kind in KINDS, f"one of {KINDS}"), ("train", link.train in ("link", "full"), "'link' or 'full'"),
              ("mask_stream", link.mask_stream in ("target", "reference"), "'target' or 'reference'"),
              ("mask_prob", 0.0 <= link.mask_prob <= 1.0, "in [0, 1]"), ("adapter_every", link.adapter_every >= 1, ">= 1")]
    if link.kind == "seq2seq":
        checks.append(("train", link.train == "full", "'full' for seq2seq (a from-scratch baseline)"))
    if link.get("target_sounding", False):
        checks.append(("target_sounding", link.ref_stride == link.target_stride,
                       "off when ref_stride != target_stride (it adds reference frame j to target frame j)"))
    for name, ok, want in checks:
        if not ok:
            raise UserError(f"must be {want}, got {link[name]!r}", f"config.link.{name}")


N_SOUNDING = 128  # MIDI pitches


def sounding_pitches(tokens: jax.Array) -> jax.Array:
    """Bool [B, F, 128]: the pitches of pitched (non-drum) notes sounding at each frame of token rows [B, F, L]: a
    note sounds from its onset frame for its duration class's frames (``tokenizer.DURATION_FRAMES``), clipped to the
    window; notes that began before the window are unknown to it (as to the model)."""
    B, F, L = tokens.shape
    ins, pd = tokens[..., 0:L - 1:2], tokens[..., 1:L:2]
    ok = (ins >= 0) & (ins < tok.N_PITCHES) & (ins != tok.DRUM) & (pd >= tok.N_PITCHES) & (
        pd < tok.N_PITCHES * (tok.N_DURATIONS + 1))
    pitch = jnp.where(ok, pd % tok.N_PITCHES, 0)
    length = jnp.asarray(tok.DURATION_FRAMES)[jnp.clip(pd // tok.N_PITCHES - 1, 0, tok.N_DURATIONS - 1)]
    start = jnp.broadcast_to(jnp.arange(F)[None, :, None], ok.shape)
    end = jnp.minimum(start + length, F)
    b = jnp.broadcast_to(jnp.arange(B)[:, None, None], ok.shape)
    w = ok.astype(jnp.int32)
    delta = jnp.zeros((B, F + 1, N_SOUNDING), jnp.int32).at[b, start, pitch].add(w).at[b, end, pitch].add(-w)
    return jnp.cumsum(delta, axis=1)[:, :F] > 0


class LinkedModel(M4MTransformer):
    """The foundation LM (same parameter paths) plus the link's variables; see the module docstring."""

    def __init__(self, model_cfg: ml_collections.ConfigDict, link: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        _check(link)
        mcfg = ml_collections.ConfigDict(model_cfg.to_dict())
        s2s = link.kind == "seq2seq"
        if s2s:
            mcfg.update(dict(link.seq2seq))
        mcfg.update(lora_rank=link.lora_rank, lora_alpha=float(link.lora_alpha), lora_dropout=link.lora_dropout,
                    lora_scope=link.lora_scope, segment_embedding=link.kind == "fa_self" and link.change_pe)
        super().__init__(mcfg, rngs=rngs)
        self.link = ml_collections.FrozenConfigDict(link)
        E, pdt = mcfg.width, jnp.dtype(mcfg.param_dtype)
        self.mask_embed = param(rngs, nnx.initializers.normal(0.1), (E,), ("embed",), pdt, kind=AdapterParam)
        if link.get("reference_sounding", False):
            self.sounding_embed = param(rngs, nnx.initializers.zeros, (N_SOUNDING, E), (None, "embed"), pdt,
                                        kind=AdapterParam)
        if link.get("target_sounding", False):
            self.target_sounding_embed = param(rngs, nnx.initializers.zeros, (N_SOUNDING, E), (None, "embed"), pdt,
                                               kind=AdapterParam)
        if link.kind != "fa_self":
            every, width, heads = (1, E, mcfg.heads) if s2s else (link.adapter_every, link.adapter_width, link.adapter_heads)
            self.adapters = nnx.List([
                ad.CrossAdapter(E, width, heads, dropout=link.adapter_dropout if not s2s else mcfg.dropout,
                                gate_init=1.0 if s2s else 0.0, dtype=self.dtype, param_dtype=pdt, rngs=rngs)
                for _ in range(mcfg.layers // every)])
        if s2s:  # the bidirectional reference encoder (same block shape as the decoder)
            self.encoder = Stack(mcfg.layers, E, mcfg.heads, mcfg.ffn, max_positions=mcfg.max_frames,
                                 limit="model.max_frames", dropout=mcfg.dropout, eps=mcfg.layer_norm_eps,
                                 norm=mcfg.get("norm", "post"), dtype=self.dtype, param_dtype=pdt, rngs=rngs)

    # --- pieces shared by training and sampling --------------------------------------------------------
    def frame_embeddings(self, tokens: jax.Array, stream: str, key: jax.Array | None = None,
                         mask_key: jax.Array | None = None, mask: jax.Array | None = None
                         ) -> tuple[jax.Array, jax.Array]:
        """Local encoder + span masking of ``stream`` ('reference'|'target') when ``mask_key`` is given; ``mask``
        (bool [B,F]) masks those frames as well, deterministically (audits: what the model reads without them)."""
        frames, tok_emb = self.local_encode(tokens, key)
        if stream == "reference" and self.link.get("reference_sounding", False):
            frames = frames + self._project_sounding(sounding_pitches(tokens), self.sounding_embed).astype(frames.dtype)
        if mask is not None:
            frames = ad.apply_mask(frames, mask, self.mask_embed[...])
        lk = self.link
        if mask_key is not None and lk.mask_prob > 0 and lk.mask_stream == stream:
            B, F = frames.shape[:2]
            frames = ad.apply_mask(frames, ad.span_mask(mask_key, B, F, lk.mask_prob, lk.mask_length),
                                   self.mask_embed[...])
        return frames, tok_emb

    def aligned_sounding(self, reference: jax.Array, n: int) -> jax.Array | None:
        """``link.target_sounding``: [B, n, E], row j = the projection of the reference's pitches sounding at frame
        j (zero past its end), added to the global input that predicts target frame j; None when off."""
        if not self.link.get("target_sounding", False):
            return None
        on = sounding_pitches(reference)
        on = jnp.pad(on, ((0, 0), (0, max(n - on.shape[1], 0)), (0, 0)))[:, :n]
        return self._project_sounding(on, self.target_sounding_embed).astype(self.dtype)

    def _project_sounding(self, on: jax.Array, w: nnx.Param) -> jax.Array:
        """Sounding pitches [B, F, 128] through a (zero-initialised) projection w [128, E], times sqrt(width): the
        residual stream's elements are O(1) and Adam moves each weight by ~lr per step whatever its scale, so without
        the gain the projection stayed ~100x below the stream for hundreds of steps (measured: row norms 0.3 against
        frame norms 16 after 100 steps at lr 1e-3). Zero init keeps the identity at init."""
        return on.astype(w.dtype) @ w[...] * self.cfg.width ** 0.5

    @property
    def adapter_every(self) -> int:
        return 1 if self.link.kind == "seq2seq" else self.link.adapter_every

    def reference_kv(self, fr: jax.Array, key: jax.Array | None = None) -> list[ad.KVPair]:
        """Each adapter's keys/values from reference frame embeddings fr [B,F1,E]: fa_cross = the LM's causal
        pass, the input to the adapter's layer; seq2seq = the bidirectional encoder's output, for every layer."""
        idx = jnp.arange(fr.shape[1]) * self.link.ref_stride
        if self.link.kind == "seq2seq":
            pos = jnp.broadcast_to(jnp.arange(fr.shape[1]), fr.shape[:2])
            enc, _, _ = self.encoder(fr.astype(self.dtype), pos, None, key=key)
            return [a.project_kv(enc, idx) for a in self.adapters]
        _, ref_hiddens, _ = self.global_decode(self.global_inputs(fr), key=key)
        return [a.project_kv(self._adapter_input(ref_hiddens[i * self.adapter_every]), idx)
                for i, a in enumerate(self.adapters)]

    def _adapter_input(self, h: jax.Array) -> jax.Array:
        """An adapter's view of a residual-stream state: as is, or LayerNorm'd without parameters
        (``link.adapter_norm``)."""
        if not self.link.get("adapter_norm", False):
            return h
        E = h.shape[-1]
        return layer_norm(h, jnp.ones((E,), jnp.float32), jnp.zeros((E,), jnp.float32), 1e-6)

    def cross_fn(self, kv: list[ad.KVPair], q_index: jax.Array, scale: jax.Array | float = 1.0,
                 key: jax.Array | None = None):
        """The per-layer ``cross`` hook for the target pass (zero delta on layers without an adapter)."""
        every = self.adapter_every

        def cross(i: int, h: jax.Array) -> jax.Array:
            if i % every or i // every >= len(kv):
                return jnp.zeros_like(h)
            return self.adapters[i // every](self._adapter_input(h), q_index, kv[i // every], scale=scale,
                                             key=fold(key, 100 + i))

        return cross

    def self_positions(self, f1: int, f2: int) -> tuple[jax.Array, jax.Array | None]:
        """fa_self rotary positions and segment ids of the concatenated sequence (length f1 + f2)."""
        if not self.link.change_pe:
            return jnp.arange(f1 + f2), None
        pos = jnp.concatenate([jnp.arange(f1), jnp.arange(f2)])
        return pos, (jnp.arange(f1 + f2) >= f1).astype(jnp.int32)

    # --- training forward ------------------------------------------------------------------------------
    def link_forward(self, reference: jax.Array, target: jax.Array, *, key: jax.Array | None = None,
                     scale: jax.Array | float = 1.0, target_mask: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
        """(target global outputs g [B,F2,E], target token embeddings [B,F2,L,E], target-pass layer inputs);
        ``target_mask`` (bool [B,F2]): target frames whose embedding is replaced by the mask embedding."""
        B, F1, _ = reference.shape
        F2 = target.shape[1]
        fr, _ = self.frame_embeddings(reference, "reference", fold(key, 0), fold(key, 2))
        ft, tok_emb = self.frame_embeddings(target, "target", fold(key, 1), fold(key, 3), target_mask)
        sound = self.aligned_sounding(reference, F2)
        if self.link.kind == "fa_self":
            sos = jnp.broadcast_to(self.global_sos[...].astype(fr.dtype), (B, 1, fr.shape[-1]))
            h = jnp.concatenate([sos, fr, ft[:, :-1]], axis=1)
            if sound is not None:
                h = h.at[:, F1:].add(sound.astype(h.dtype))
            pos, seg = self.self_positions(F1, F2)
            seg = None if seg is None else jnp.broadcast_to(seg, (B, F1 + F2))
            g, hiddens, _ = self.global_decode(h, jnp.broadcast_to(pos, (B, F1 + F2)), segment_ids=seg,
                                               key=fold(key, 4))
            return g[:, F1:], tok_emb, [x[:, F1:] for x in hiddens]
        cross = self.cross_fn(self.reference_kv(fr, fold(key, 5)), jnp.arange(F2) * self.link.target_stride, scale,
                              fold(key, 6))
        h = self.global_inputs(ft)
        g, hiddens, _ = self.global_decode(h if sound is None else h + sound.astype(h.dtype), cross=cross,
                                           key=fold(key, 4))
        return g, tok_emb, hiddens

    def link_hidden(self, reference: jax.Array, target: jax.Array, *, key: jax.Array | None = None,
                    scale: jax.Array | float = 1.0, target_mask: jax.Array | None = None) -> jax.Array:
        """Target local-decoder outputs [B,F2,L,E] given the reference (teacher forcing; dropout + masking iff
        ``key``; ``target_mask`` as in ``link_forward``)."""
        g, tok_emb, _ = self.link_forward(reference, target, key=key, scale=scale, target_mask=target_mask)
        return self.local_hidden(g, tok_emb, fold(key, 7))

    def link_logits(self, reference: jax.Array, target: jax.Array, *, key: jax.Array | None = None,
                    scale: jax.Array | float = 1.0, target_mask: jax.Array | None = None) -> jax.Array:
        """Target logits [B,F2,L,V] given the reference (teacher forcing; dropout + masking iff ``key``)."""
        return self.logits(self.link_hidden(reference, target, key=key, scale=scale, target_mask=target_mask))


# --- task interface -----------------------------------------------------------------------------------
def build(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> LinkedModel:
    """The linked model of an experiment config (``cfg.model`` + ``cfg.link``)."""
    if "link" not in cfg:
        raise UserError("a function-alignment task needs a 'link' section (see m4mjax.linked.link_config)", "config")
    return LinkedModel(cfg.model, cfg.link, rngs=rngs)


LOSS_CLASSES = ("open", "chord", "beat", "eos")  # link.loss_weights keys (label_token_weights)


def label_token_weights(targets: jax.Array, weights: dict, chord_instrument: int = 0, drum: int = 127,
                        eos: int | None = None) -> jax.Array:
    """Per-token loss weights [..., L] of label rows ``[ins, pd, ins, pd, ..., EOS, PAD]`` by class: 'open' = a
    frame's first token (whether a chord starts there, whatever it is), 'chord' = later chord-instrument tokens and
    the pitch tokens they introduce, 'beat' = the drum instrument's tokens and their pitches, 'eos' = a later EOS;
    anything else weighs 1."""
    L = targets.shape[-1]
    ins_of = jnp.repeat(targets[..., 0::2], 2, axis=-1)[..., :L]  # the instrument token of each (ins, pd) pair
    first = jnp.arange(L) == 0
    w = jnp.where(ins_of == chord_instrument, weights["chord"], jnp.where(ins_of == drum, weights["beat"], 1.0))
    if eos is not None:
        w = jnp.where(targets == eos, weights["eos"], w)
    return jnp.where(first, weights["open"], w).astype(jnp.float32)


def loss_fn(model: LinkedModel, batch: dict, key: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """Token cross-entropy on the target stream only (PAD ignored); aux as ``model.lm_loss``. In training (a key
    given) tokens weigh ``link.loss_weights`` by class (``label_token_weights``; all 1 = the official plain mean);
    held-out loss (no key) is always the plain token mean, so runs with different weights compare."""
    h = model.link_hidden(batch["reference"], batch["target"], key=key)
    lw = model.link.get("loss_weights", None) or {}
    weights = None
    if key is not None and any(float(lw.get(c, 1.0)) != 1.0 for c in LOSS_CLASSES):
        weights = label_token_weights(batch["target"], {c: float(lw.get(c, 1.0)) for c in LOSS_CLASSES},
                                      eos=model.cfg.eos_id)
    return model.token_loss(h, batch["target"], weights)


def trainable(cfg: ml_collections.ConfigDict):
    """nnx filter of the variables the optimizer updates: LoRA + adapter variables, or every parameter."""
    _check(cfg.link)
    return nnx.Any(LoRAParam, AdapterParam) if cfg.link.train == "link" else nnx.Param


# --- incremental decoding -------------------------------------------------------------------------------
class LinkState(NamedTuple):
    """Sampling state: global KV cache, the global output predicting target frame ``t``, adapter keys/values."""
    cache: list
    g: jax.Array  # [B, E]
    t: jax.Array  # int32: target frames known so far (prompt + sampled)
    base: jax.Array  # int32: cache slots before the target segment (fa_self: F1; fa_cross: 0)
    kv: list  # fa_cross: per-adapter (k, v) of the reference; [] for fa_self
    sound: jax.Array | None = None  # link.target_sounding: [B, F1 + 1, E] (LinkedModel.aligned_sounding)


def encode_reference(model: LinkedModel, reference: jax.Array, n_frames: int, prompt: jax.Array | None = None,
                     *, scale: jax.Array | float = 1.0, mask_key: jax.Array | None = None) -> LinkState:
    """Encode the reference [B,F1,L] once (fa_self: into the global KV cache; fa_cross: adapter keys/values
    of every adapted layer) plus an optional target prompt [B,F0,L]; room for ``n_frames`` more frames.
    ``mask_key`` span-masks the reference as in training (the official sampler does so for 'lmask' tasks)."""
    B, F1, L = reference.shape
    prompt = jnp.zeros((B, 0, L), jnp.int32) if prompt is None else prompt
    F0 = prompt.shape[1]
    mk = mask_key if model.link.mask_stream == "reference" else None
    fr, _ = model.frame_embeddings(reference, "reference", mask_key=mk)
    fp = model.local_encode(prompt)[0] if F0 else fr[:, :0]
    sos = jnp.broadcast_to(model.global_sos[...].astype(fr.dtype), (B, 1, fr.shape[-1]))
    sound = model.aligned_sounding(reference, max(F1, F0) + 1)
    # the inputs predicting target frames 0..F0 (fa_self: the last reference frame, then the prompt's frames)
    head = jnp.concatenate([fr[:, -1:] if model.link.kind == "fa_self" else sos, fp], 1)
    if sound is not None:
        head = head + sound[:, :F0 + 1].astype(head.dtype)
    if model.link.kind == "fa_self":
        cache = model.init_global_cache(B, F1 + F0 + n_frames + 1)
        pos, seg = model.self_positions(F1, F0 + 1)
        seg = None if seg is None else jnp.broadcast_to(seg, (B, F1 + F0 + 1))
        g, _, cache = model.global_decode(jnp.concatenate([sos, fr[:, :-1], head], 1),
                                          jnp.broadcast_to(pos, (B, F1 + F0 + 1)), segment_ids=seg, cache=cache,
                                          cache_index=0)
        return LinkState(cache, g[:, -1], jnp.int32(F0), jnp.int32(F1), [], sound)
    kv = model.reference_kv(fr)
    cache = model.init_global_cache(B, F0 + n_frames + 1)
    cross = model.cross_fn(kv, jnp.arange(F0 + 1) * model.link.target_stride, scale)
    g, _, cache = model.global_decode(head, cross=cross, cache=cache, cache_index=0)
    return LinkState(cache, g[:, -1], jnp.int32(F0), jnp.int32(0), kv, sound)


def target_step(model: LinkedModel, state: LinkState, frame: jax.Array, *,
                scale: jax.Array | float = 1.0) -> LinkState:
    """Feed target frame ``state.t`` (tokens [B,L]) -> state whose ``g`` predicts frame ``state.t + 1``.
    ``scale`` (scalar or [B]) multiplies the fa_cross adapter outputs (the official sampler's multiplier)."""
    B = frame.shape[0]
    emb = model.local_encode(frame[:, None])[0]
    i = state.t + 1  # the frame's position inside the target segment
    if state.sound is not None:  # the music under frame t + 1 (zero past the reference's end)
        n = state.sound.shape[1]
        emb = emb + jnp.where(i < n, jax.lax.dynamic_slice_in_dim(state.sound, jnp.minimum(i, n - 1), 1, 1),
                              0).astype(emb.dtype)
    slot = state.base + i
    if model.link.kind == "fa_self":
        pos, seg = (i, jnp.ones((B, 1), jnp.int32)) if model.link.change_pe else (slot, None)
        g, _, cache = model.global_decode(emb, jnp.full((B, 1), pos, jnp.int32), segment_ids=seg,
                                          cache=state.cache, cache_index=slot)
    else:
        cross = model.cross_fn(state.kv, jnp.full((1,), i * model.link.target_stride, jnp.int32), scale)
        g, _, cache = model.global_decode(emb, cross=cross, cache=state.cache, cache_index=slot)
    return state._replace(cache=cache, g=g[:, 0], t=state.t + 1)


@functools.partial(jax.jit, static_argnames=("graphdef", "n_frames", "decode"))
def _generate(graphdef, params, reference, prompt, rng, temperature, top_p, scale, n_frames: int,
              decode: tuple = ("sample",)):
    from m4mjax import chord_decode
    from m4mjax.sampling import sample_frame

    model = nnx.merge(graphdef, params)
    B, F0, L = prompt.shape
    state = encode_reference(model, reference, n_frames, prompt if F0 else None, scale=scale)
    out = jnp.concatenate([prompt, jnp.full((B, n_frames, L), model.cfg.pad_id, jnp.int32)], 1)

    def body(j, c):
        out, state, rng = c
        rng, k = jax.random.split(rng)
        if decode[0] == "scored":
            frame = chord_decode.scored_frame(model, state.g, *decode[1:])
        else:
            frame = sample_frame(model, state.g, k, temperature, top_p)
        out = jax.lax.dynamic_update_slice_in_dim(out, frame[:, None], F0 + j, axis=1)
        return out, target_step(model, state, frame, scale=scale), rng

    return jax.lax.fori_loop(0, n_frames, body, (out, state, rng))[0]


def generate(model: LinkedModel, reference: jax.Array, rng: jax.Array, *, n_frames: int | None = None,
             prompt: jax.Array | None = None, temperature: float = 1.0, top_p: float = 1.0,
             scale: float | jax.Array | None = None, scored: tuple[str, int] | None = None) -> jax.Array:
    """Sample target tokens [B, F0+n_frames, L] aligned to reference [B,F1,L] (default n_frames: F1 - F0);
    ``scale`` defaults to ``link.adapter_scale`` (fa_cross only). ``scored=(open_mode, basses)``: label frames
    by ``m4mjax.chord_decode.scored_frame`` (chord rows scored whole, the rest greedy) instead of sampling."""
    reference = jnp.asarray(reference, jnp.int32)
    B, F1, L = reference.shape
    prompt = jnp.zeros((B, 0, L), jnp.int32) if prompt is None else jnp.asarray(prompt, jnp.int32)
    n = F1 - prompt.shape[1] if n_frames is None else n_frames
    if n < 1:
        raise ValueError(f"generate: nothing to sample (n_frames={n}, prompt {prompt.shape[1]} of {F1} frames)")
    scale = model.link.adapter_scale if scale is None else scale
    graphdef, params = nnx.split(model)
    return _generate(graphdef, params, reference, prompt, rng, jnp.float32(temperature), jnp.float32(top_p),
                     jnp.asarray(scale, jnp.float32), n_frames=n,
                     decode=("sample",) if scored is None else ("scored", str(scored[0]), int(scored[1])))
