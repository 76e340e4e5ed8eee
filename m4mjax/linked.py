"""Function alignment (spec §4) as a task: the ``link`` config section, the model builder, the target-stream loss,
the trainable filter and sampling. The models themselves, one class per link kind (FA_self, FA_cross, seq2seq)
behind one interface, are in ``m4mjax.link_models``.

Official defaults per kind (``link_config``): FA_self LoRA r=64/alpha=128 on every query/value projection, FA_cross
r=16/alpha=32 with an adapter every 2 global layers, seq2seq the official encoder-decoder sizes trained from scratch;
loss on the target frames only; span masking of the target (25 %, 10 frames; off for seq2seq, whose official
forward never masks).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from m4mjax.layers import AdapterParam, LoRAParam
from m4mjax.link_models import KIND_CLASSES, LinkedModel
from m4mjax.run.errors import UserError

KINDS = tuple(KIND_CLASSES)  # ("fa_self", "fa_cross", "seq2seq")
# seq2seq model sizes (official cp_transformer_seq2seq.py: hidden 256, 3 + 3 layers, 4 heads, FFN 512, local 2 x 4 heads)
SEQ2SEQ = dict(width=256, layers=3, heads=4, ffn=512, local_layers=2, local_heads=4, local_ffn=512)


def link_config(kind: str = "fa_self") -> ml_collections.ConfigDict:
    """The ``link`` section of a function-alignment experiment config (official defaults per kind)."""
    if kind not in KINDS:
        raise UserError(f"link kind must be one of {KINDS}, got {kind!r}", "config.link.kind")
    out = ml_collections.ConfigDict(dict(
        kind=kind,  # 'fa_self' (one pass) | 'fa_cross' (two passes + adapters) | 'seq2seq' (from-scratch baseline)
        lora_rank=0, lora_alpha=0.0,  # LoRA on query/value (the kind's official: 64/128 FA_self, 16/32 FA_cross)
        lora_dropout=0.1,  # dropout on the LoRA input
        lora_scope="all",  # 'all' = every query/value incl. local encoder/decoder (official peft match) | 'global'
        change_pe=True,  # fa_self: target positions restart at 0 + segment embedding (False = official ablation)
        adapter_every=2,  # fa_cross: one adapter per this many global layers (at layers 0, n, 2n, ...)
        adapter_width=256, adapter_heads=4, adapter_dropout=0.1,  # fa_cross adapter: inner width, heads, dropout
        mask_prob=0.25,  # span-masking rate in training (0 = off; the released demo runs used 0)
        mask_length=10,  # frames per masked span
        mask_stream="target",  # 'target' | 'reference' (the official task word 'lmask')
        adapter_scale=1.0,  # fa_cross: default multiplier on adapter outputs when sampling (guidance-like)
        adapter_norm=False,  # fa_cross: normalise the adapter's inputs (parameter-free LayerNorm of the target's
        # layer input and of the reference states), as a post-LN foundation hands them; for pre-LN foundations
        # whose residual stream grows with depth (deviation from the official code, off = official)
        ref_stride=1, target_stride=1,  # fa_cross: absolute frame index = position * stride (time compression)
        train="link",  # 'link' = only LoRA/adapter/segment/mask variables | 'full' = all
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
        # deviation (off = ()): for each window length w (frames), add to the global input that predicts target
        # frame j a zero-initialised projection of the share of reference frames j .. j+w-1 in which each pitch
        # sounds: what a chord template reads over the coming beat / bar, with no attention to learn first
        sounding_ahead=(),
    ))
    out.update(KIND_CLASSES[kind].official)  # the kind's own defaults (LoRA size; seq2seq: no masking, all trained)
    return out


def resolve_link(link: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``cfg.link`` with ``lora_rank``/``lora_alpha`` of 0 replaced by the kind's official values, so
    ``--config.link.kind=fa_cross`` alone switches the link with its own LoRA size (idempotent)."""
    out = ml_collections.ConfigDict(link.to_dict())
    official = KIND_CLASSES[out.kind].official if out.kind in KIND_CLASSES else {}
    rank, alpha = official.get("lora_rank", out.lora_rank), official.get("lora_alpha", out.lora_alpha)
    if not out.lora_rank:
        out.lora_rank = rank
    if not out.lora_alpha and rank:
        out.lora_alpha = float(alpha) * out.lora_rank / rank  # the official alpha/rank ratio (2)
    return out


def check_link(link: ml_collections.ConfigDict) -> None:
    """A UserError naming the first ``link`` value no kind accepts."""
    checks = [("kind", link.kind in KINDS, f"one of {KINDS}"), ("train", link.train in ("link", "full"), "'link' or 'full'"),
              ("mask_stream", link.mask_stream in ("target", "reference"), "'target' or 'reference'"),
              ("mask_prob", 0.0 <= link.mask_prob <= 1.0, "in [0, 1]"), ("adapter_every", link.adapter_every >= 1, ">= 1")]
    for name in ("target_sounding", "sounding_ahead"):
        if link.get(name, False):
            checks.append((name, link.ref_stride == link.target_stride,
                           "off when ref_stride != target_stride (it adds reference frame j to target frame j)"))
    if link.get("sounding_ahead", ()):
        checks.append(("sounding_ahead", all(isinstance(w, int) and w >= 1 for w in link.sounding_ahead),
                       "window lengths in frames, each >= 1"))
    for name, ok, want in checks:
        if not ok:
            raise UserError(f"must be {want}, got {link[name]!r}", f"config.link.{name}")


def make(model_cfg: ml_collections.ConfigDict, link: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> LinkedModel:
    """The linked model of kind ``link.kind`` on the foundation ``model_cfg`` (``link`` as resolved)."""
    check_link(link)
    return KIND_CLASSES[link.kind](model_cfg, link, rngs=rngs)


# --- task interface -----------------------------------------------------------------------------------
def build(cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> LinkedModel:
    """The linked model of an experiment config (``cfg.model`` + ``cfg.link``, its LoRA size resolved); a kind
    refuses a run it cannot train (``LinkedModel.check_run``)."""
    if "link" not in cfg:
        raise UserError("a function-alignment task needs a 'link' section (see m4mjax.linked.link_config)", "config")
    link = resolve_link(cfg.link)
    check_link(link)
    KIND_CLASSES[link.kind].check_run(cfg)
    return make(cfg.model, link, rngs=rngs)


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
    check_link(cfg.link)
    return nnx.Any(LoRAParam, AdapterParam) if cfg.link.train == "link" else nnx.Param


# --- sampling -------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "n_frames", "decode"))
def _generate(graphdef, params, reference, prompt, rng, temperature, top_p, scale, n_frames: int,
              decode: tuple = ("sample",)):
    from m4mjax import chord_decode
    from m4mjax.sampling import sample_frame

    model = nnx.merge(graphdef, params)
    B, F0, L = prompt.shape
    state = model.start(reference, n_frames, prompt if F0 else None, scale=scale)
    out = jnp.concatenate([prompt, jnp.full((B, n_frames, L), model.cfg.pad_id, jnp.int32)], 1)

    def body(j, c):
        out, state, rng = c
        rng, k = jax.random.split(rng)
        if decode[0] == "scored":
            frame = chord_decode.scored_frame(model, state.g, *decode[1:])
        else:
            frame = sample_frame(model, state.g, k, temperature, top_p)
        out = jax.lax.dynamic_update_slice_in_dim(out, frame[:, None], F0 + j, axis=1)
        return out, model.step(state, frame, scale=scale), rng

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
