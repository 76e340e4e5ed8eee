"""The linked models (spec §4), one class per link kind behind one interface (``LinkedModel``):

* ``link_forward(reference, target)``: teacher-forced target global outputs (training, audits);
* ``start(reference, n_frames, prompt)`` -> ``LinkState`` and ``step(state, frame)`` -> ``LinkState``: the cached
  sampler (``state.g`` predicts the next target frame).

The kinds:

* ``FASelf`` (official ``RoformerPrompt``): ONE causal global pass over
  ``[global SOS, ref 0 .. ref F1-1, tgt 0 .. tgt F2-2]``; the output at sequence position F1+j predicts
  target frame j (so the last reference frame is the target segment's first input). Rotary positions are
  ``0..F1-1`` then ``0..F2-1`` (time-aligned); segment ids 0/1 select a zero-initialised learned row added to
  the rotary table (``change_pe=False`` is the ablation: plain positions, no segment table).
* ``FACross`` (official ``RoformerYinyang``): the same LoRA'd LM runs on both streams. The reference pass is the
  LM's ordinary causal pass (global SOS prepended, last frame dropped, exactly as the official code calls it);
  every ``adapter_every`` global layers a gated cross-attention adapter reads the target's layer input (queries)
  and the reference's input to the same layer (keys/values; no mask, so the whole reference is visible) and adds
  its output to the target's self-attention output before the residual LayerNorm (``layers.Block``). Absolute
  frame indices are ``position * stride`` per stream.
* ``Seq2Seq`` (the paper's from-scratch baseline, official ``cp_transformer_seq2seq.py``): an encoder-decoder at
  the official sizes (``link.seq2seq``), every parameter trained from scratch. The shared local encoder embeds
  both streams; a bidirectional global encoder (no mask, rotary positions 0..F1-1, no SOS) reads the reference;
  the causal global decoder is the LM's, with a full-width cross-attention (the FA_cross adapter module with
  ``adapter_width`` = width, gate initialised to 1) in EVERY layer reading the encoder's OUTPUT. Deviation (a
  transformers RoFormer decoder has its own cross-attention sublayer after self-attention, queries from that
  sublayer's output, rotary positions): the cross term joins through the same hook as FA_cross's adapters, with
  absolute-frame position terms, so both cross-attending models share one sampler.

Shared by every kind (``LinkedModel``): span masking (frame embeddings of ``mask_stream``, out of the local encoder,
replaced by a learned mask embedding when a mask key is given), ``reference_sounding`` and ``target_sounding``
(deviations, off = official: the pitches sounding in the reference through zero-initialised projections).

Every kind IS an ``M4MTransformer`` (subclass), so each foundation parameter keeps its path and an LM checkpoint
merges by path; the LoRA/adapter/segment/mask variables are absent from it and keep their (identity) init.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from m4mjax import adapters as ad
from m4mjax import tokenizer as tok
from m4mjax.layers import AdapterParam, Stack, fold, layer_norm, param
from m4mjax.model import M4MTransformer
from m4mjax.run.errors import UserError

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


class LinkState(NamedTuple):
    """Sampling state: global KV cache, the global output predicting target frame ``t``, adapter keys/values."""
    cache: list
    g: jax.Array  # [B, E]
    t: jax.Array  # int32: target frames known so far (prompt + sampled)
    base: jax.Array  # int32: cache slots before the target segment (FASelf: F1; the cross kinds: 0)
    kv: list  # the cross kinds: per-adapter (k, v) of the reference; [] for FASelf
    sound: jax.Array | None = None  # link.target_sounding: [B, F1 + 1, E] (LinkedModel.aligned_sounding)


class LinkedModel(M4MTransformer):
    """What every link kind shares (the foundation LM, span masking, the sounding-pitch projections) and the
    interface the task code calls; a kind subclasses it (FASelf, FACross, Seq2Seq)."""

    accepts_scale = False  # whether ``scale`` (a multiplier on cross-attention outputs) means anything
    official: dict = {}  # the kind's official ``link`` defaults (linked.link_config), e.g. its LoRA size (spec §4)

    def __init__(self, model_cfg: ml_collections.ConfigDict, link: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        mcfg = ml_collections.ConfigDict(model_cfg.to_dict())
        mcfg.update(self.model_overrides(link))
        mcfg.update(lora_rank=link.lora_rank, lora_alpha=float(link.lora_alpha), lora_dropout=link.lora_dropout,
                    lora_scope=link.lora_scope)
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
        if link.get("sounding_ahead", ()):
            self.ahead_sounding_embed = param(rngs, nnx.initializers.zeros, (len(link.sounding_ahead), N_SOUNDING, E),
                                              (None, None, "embed"), pdt, kind=AdapterParam)
        self.build_link(mcfg, rngs)

    # --- what a kind defines ---------------------------------------------------------------------------
    @classmethod
    def model_overrides(cls, link: ml_collections.ConfigDict) -> dict:
        """Changes to the foundation's model config this kind makes (before the model is built)."""
        return {"segment_embedding": False}

    @classmethod
    def check_run(cls, cfg: ml_collections.ConfigDict) -> None:
        """Raise a UserError for a run config this kind cannot train (beyond ``linked.check_link``)."""

    def build_link(self, mcfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> None:
        """Create the kind's own variables (after the shared ones, so their random init does not move)."""

    def link_forward(self, reference: jax.Array, target: jax.Array, *, key: jax.Array | None = None,
                     scale: jax.Array | float = 1.0, target_mask: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array, list[jax.Array]]:
        """(target global outputs g [B,F2,E], target token embeddings [B,F2,L,E], target-pass layer inputs);
        ``target_mask`` (bool [B,F2]): target frames whose embedding is replaced by the mask embedding."""
        raise NotImplementedError

    def start(self, reference: jax.Array, n_frames: int, prompt: jax.Array | None = None, *,
              scale: jax.Array | float = 1.0, mask_key: jax.Array | None = None) -> LinkState:
        """Encode the reference [B,F1,L] once plus an optional target prompt [B,F0,L]; room for ``n_frames`` more
        frames. ``mask_key`` span-masks the reference as in training (the official sampler does so for 'lmask')."""
        raise NotImplementedError

    def step(self, state: LinkState, frame: jax.Array, *, scale: jax.Array | float = 1.0) -> LinkState:
        """Feed target frame ``state.t`` (tokens [B,L]) -> state whose ``g`` predicts frame ``state.t + 1``."""
        raise NotImplementedError

    # --- shared pieces -----------------------------------------------------------------------------------
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
        """``link.target_sounding`` / ``link.sounding_ahead``: [B, n, E], row j = the projection of the reference's
        pitches sounding at frame j, plus for each window length w of ``sounding_ahead`` the projection of the share
        of frames j .. j+w-1 (those inside the window) in which each pitch sounds (zero past the reference's end);
        None when both are off."""
        ahead = tuple(self.link.get("sounding_ahead", ()) or ())
        if not self.link.get("target_sounding", False) and not ahead:
            return None
        on = sounding_pitches(reference)
        F = on.shape[1]
        out = 0.0
        if self.link.get("target_sounding", False):
            out = self._project_sounding(on, self.target_sounding_embed)
        if ahead:
            c = jnp.pad(jnp.cumsum(on.astype(jnp.float32), axis=1), ((0, 0), (1, max(ahead)), (0, 0)), mode="edge")
            c = c.at[:, 0].set(0.0)  # c[:, j] = frames sounding in 0 .. j-1, held at the total past the end
            j = jnp.arange(F)
            for k, w in enumerate(ahead):
                share = (c[:, j + w] - c[:, j]) / jnp.minimum(w, F - j)[None, :, None].astype(jnp.float32)
                out = out + self._project_sounding(share, self.ahead_sounding_embed[k])
        out = jnp.pad(out, ((0, 0), (0, max(n - F, 0)), (0, 0)))[:, :n]
        return out.astype(self.dtype)

    def _project_sounding(self, on: jax.Array, w: jax.Array) -> jax.Array:
        """Sounding pitches [B, F, 128] through a (zero-initialised) projection w [128, E], times sqrt(width): the
        residual stream's elements are O(1) and Adam moves each weight by ~lr per step whatever its scale, so without
        the gain the projection stayed ~100x below the stream for hundreds of steps (measured: row norms 0.3 against
        frame norms 16 after 100 steps at lr 1e-3). Zero init keeps the identity at init."""
        return on.astype(w.dtype) @ w[...] * self.cfg.width ** 0.5

    def _sos(self, like: jax.Array) -> jax.Array:
        """The global SOS vector [B,1,E] for frames ``like`` [B,F,E]."""
        return jnp.broadcast_to(self.global_sos[...].astype(like.dtype), (like.shape[0], 1, like.shape[-1]))

    def _start_inputs(self, reference: jax.Array, prompt: jax.Array | None, mask_key: jax.Array | None):
        """``start``'s common first part: (the prompt [B,F0,L], empty when None; the reference's frame embeddings;
        the aligned sounding pitches, long enough for the prompt's inputs)."""
        B, F1, L = reference.shape
        prompt = jnp.zeros((B, 0, L), jnp.int32) if prompt is None else prompt
        fr, _ = self.frame_embeddings(reference, "reference", mask_key=mask_key)
        return prompt, fr, self.aligned_sounding(reference, max(F1, prompt.shape[1]) + 1)

    def _prompt_inputs(self, first: jax.Array, prompt: jax.Array, sound: jax.Array | None) -> jax.Array:
        """The global inputs predicting target frames 0..F0: ``first`` [B,1,E] then the prompt's frames, plus the
        aligned sounding pitches."""
        F0 = prompt.shape[1]
        head = jnp.concatenate([first, self.local_encode(prompt)[0] if F0 else first[:, :0]], 1)
        return head if sound is None else head + sound[:, :F0 + 1].astype(head.dtype)

    def _step_input(self, state: LinkState, frame: jax.Array) -> jax.Array:
        """The global input [B,1,E] of target frame ``state.t`` (predicting ``state.t + 1``)."""
        emb = self.local_encode(frame[:, None])[0]
        if state.sound is None:
            return emb
        i, n = state.t + 1, state.sound.shape[1]  # the music under frame t + 1 (zero past the reference's end)
        return emb + jnp.where(i < n, jax.lax.dynamic_slice_in_dim(state.sound, jnp.minimum(i, n - 1), 1, 1),
                               0).astype(emb.dtype)

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

    def _embed_pair(self, reference, target, key, target_mask):
        fr, _ = self.frame_embeddings(reference, "reference", fold(key, 0), fold(key, 2))
        ft, tok_emb = self.frame_embeddings(target, "target", fold(key, 1), fold(key, 3), target_mask)
        return fr, ft, tok_emb, self.aligned_sounding(reference, target.shape[1])


class FASelf(LinkedModel):
    """FA_self: reference and target in one causal global pass (module docstring)."""

    official = dict(lora_rank=64, lora_alpha=128.0)

    @classmethod
    def model_overrides(cls, link):
        return {"segment_embedding": bool(link.change_pe)}

    def self_positions(self, f1: int, f2: int) -> tuple[jax.Array, jax.Array | None]:
        """Rotary positions and segment ids of the concatenated sequence (length f1 + f2)."""
        if not self.link.change_pe:
            return jnp.arange(f1 + f2), None
        pos = jnp.concatenate([jnp.arange(f1), jnp.arange(f2)])
        return pos, (jnp.arange(f1 + f2) >= f1).astype(jnp.int32)

    def link_forward(self, reference, target, *, key=None, scale=1.0, target_mask=None):
        B, F1, _ = reference.shape
        F2 = target.shape[1]
        fr, ft, tok_emb, sound = self._embed_pair(reference, target, key, target_mask)
        h = jnp.concatenate([self._sos(fr), fr, ft[:, :-1]], axis=1)
        if sound is not None:
            h = h.at[:, F1:].add(sound.astype(h.dtype))
        pos, seg = self.self_positions(F1, F2)
        seg = None if seg is None else jnp.broadcast_to(seg, (B, F1 + F2))
        g, hiddens, _ = self.global_decode(h, jnp.broadcast_to(pos, (B, F1 + F2)), segment_ids=seg, key=fold(key, 4))
        return g[:, F1:], tok_emb, [x[:, F1:] for x in hiddens]

    def start(self, reference, n_frames, prompt=None, *, scale=1.0, mask_key=None):
        B, F1, _ = reference.shape
        prompt, fr, sound = self._start_inputs(reference, prompt, mask_key)
        F0 = prompt.shape[1]
        head = self._prompt_inputs(fr[:, -1:], prompt, sound)  # the last reference frame predicts target frame 0
        cache = self.init_global_cache(B, F1 + F0 + n_frames + 1)
        pos, seg = self.self_positions(F1, F0 + 1)
        seg = None if seg is None else jnp.broadcast_to(seg, (B, F1 + F0 + 1))
        g, _, cache = self.global_decode(jnp.concatenate([self._sos(fr), fr[:, :-1], head], 1),
                                         jnp.broadcast_to(pos, (B, F1 + F0 + 1)), segment_ids=seg, cache=cache,
                                         cache_index=0)
        return LinkState(cache, g[:, -1], jnp.int32(F0), jnp.int32(F1), [], sound)

    def step(self, state, frame, *, scale=1.0):
        B = frame.shape[0]
        i = state.t + 1  # the frame's position inside the target segment
        slot = state.base + i
        pos, seg = (i, jnp.ones((B, 1), jnp.int32)) if self.link.change_pe else (slot, None)
        g, _, cache = self.global_decode(self._step_input(state, frame), jnp.full((B, 1), pos, jnp.int32),
                                         segment_ids=seg, cache=state.cache, cache_index=slot)
        return state._replace(cache=cache, g=g[:, 0], t=state.t + 1)


class FACross(LinkedModel):
    """FA_cross: the target pass reads the reference pass through gated cross-attention adapters."""

    accepts_scale = True
    official = dict(lora_rank=16, lora_alpha=32.0)

    def build_link(self, mcfg, rngs):
        every, width, heads, dropout, gate = self._adapter_shape(mcfg)
        self.adapters = nnx.List([
            ad.CrossAdapter(mcfg.width, width, heads, dropout=dropout, gate_init=gate, dtype=self.dtype,
                            param_dtype=jnp.dtype(mcfg.param_dtype), rngs=rngs)
            for _ in range(mcfg.layers // every)])

    def _adapter_shape(self, mcfg):
        lk = self.link
        return lk.adapter_every, lk.adapter_width, lk.adapter_heads, lk.adapter_dropout, 0.0

    @property
    def adapter_every(self) -> int:
        return self.link.adapter_every

    def reference_kv(self, fr: jax.Array, key: jax.Array | None = None) -> list[ad.KVPair]:
        """Each adapter's keys/values from reference frame embeddings fr [B,F1,E]: the LM's causal pass, the input
        to the adapter's layer."""
        idx = jnp.arange(fr.shape[1]) * self.link.ref_stride
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

    def link_forward(self, reference, target, *, key=None, scale=1.0, target_mask=None):
        F2 = target.shape[1]
        fr, ft, tok_emb, sound = self._embed_pair(reference, target, key, target_mask)
        cross = self.cross_fn(self.reference_kv(fr, fold(key, 5)), jnp.arange(F2) * self.link.target_stride, scale,
                              fold(key, 6))
        h = self.global_inputs(ft)
        g, hiddens, _ = self.global_decode(h if sound is None else h + sound.astype(h.dtype), cross=cross,
                                           key=fold(key, 4))
        return g, tok_emb, hiddens

    def start(self, reference, n_frames, prompt=None, *, scale=1.0, mask_key=None):
        B = reference.shape[0]
        prompt, fr, sound = self._start_inputs(reference, prompt, mask_key)
        F0 = prompt.shape[1]
        kv = self.reference_kv(fr)
        cache = self.init_global_cache(B, F0 + n_frames + 1)
        cross = self.cross_fn(kv, jnp.arange(F0 + 1) * self.link.target_stride, scale)
        g, _, cache = self.global_decode(self._prompt_inputs(self._sos(fr), prompt, sound), cross=cross, cache=cache,
                                         cache_index=0)
        return LinkState(cache, g[:, -1], jnp.int32(F0), jnp.int32(0), kv, sound)

    def step(self, state, frame, *, scale=1.0):
        i = state.t + 1
        cross = self.cross_fn(state.kv, jnp.full((1,), i * self.link.target_stride, jnp.int32), scale)
        g, _, cache = self.global_decode(self._step_input(state, frame), cross=cross, cache=state.cache,
                                         cache_index=state.base + i)
        return state._replace(cache=cache, g=g[:, 0], t=state.t + 1)


class Seq2Seq(FACross):
    """The from-scratch encoder-decoder baseline: FA_cross's sampler and hook, a bidirectional reference encoder,
    a full-width cross-attention in every decoder layer (module docstring)."""

    official = dict(lora_rank=0, lora_alpha=0.0, mask_prob=0.0, train="full")  # the official forward never masks

    @classmethod
    def model_overrides(cls, link):
        return dict(link.seq2seq, segment_embedding=False)

    @classmethod
    def check_run(cls, cfg):
        if cfg.link.train != "full":
            raise UserError(f"must be 'full' for seq2seq (a from-scratch baseline), got {cfg.link.train!r}",
                            "config.link.train")
        if cfg.get("init_from"):
            raise UserError("seq2seq is the from-scratch baseline: its shapes are not the foundation's "
                            "(set --config.init_from=)", "config.init_from")

    def _adapter_shape(self, mcfg):
        return 1, mcfg.width, mcfg.heads, mcfg.dropout, 1.0

    def build_link(self, mcfg, rngs):
        super().build_link(mcfg, rngs)
        self.encoder = Stack(mcfg.layers, mcfg.width, mcfg.heads, mcfg.ffn, max_positions=mcfg.max_frames,
                             limit="model.max_frames", dropout=mcfg.dropout, eps=mcfg.layer_norm_eps,
                             norm=mcfg.get("norm", "post"), dtype=self.dtype,
                             param_dtype=jnp.dtype(mcfg.param_dtype), rngs=rngs)

    @property
    def adapter_every(self) -> int:
        return 1

    def reference_kv(self, fr, key=None):
        """The bidirectional encoder's output, projected for every layer's cross-attention."""
        idx = jnp.arange(fr.shape[1]) * self.link.ref_stride
        pos = jnp.broadcast_to(jnp.arange(fr.shape[1]), fr.shape[:2])
        enc, _, _ = self.encoder(fr.astype(self.dtype), pos, None, key=key)
        return [a.project_kv(enc, idx) for a in self.adapters]


KIND_CLASSES: dict[str, type[LinkedModel]] = {"fa_self": FASelf, "fa_cross": FACross, "seq2seq": Seq2Seq}
