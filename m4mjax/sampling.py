"""KV-cache sampling from the foundation LM (the library under ``m4mjax.sample`` and ``m4mjax.continuation``;
``m4mjax.linked`` samples its target frames with ``sample_frame``).

The global decoder's cache is filled from the prompt once; each new frame is sampled token by token by
the local decoder (its own KV cache), EOS ends the frame (forced at the last slot), PAD fills the rest,
then the frame's embedding advances the global cache by one step. A whole batch of prompts is continued in
one jitted loop (``generate``); load the model with ``m4mjax.runs.load_run(workdir, streams=runs.LM_STREAMS)``.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax.model import M4MTransformer


NUCLEUS_K = 64  # candidates of the fast nucleus path (exact: falls back to bisection when they hold < top_p)


def _nucleus_threshold(probs: jax.Array, top_p: jax.Array) -> jax.Array:
    """Per row, the smallest probability kept by nucleus filtering: keep every token with p >= it.

    Exact: the top ``NUCLEUS_K`` probabilities (sorted by ``lax.top_k``) give the threshold when they hold at
    least ``top_p`` of the mass; otherwise (flat rows) a 30-step bisection over the whole row, computed only then.
    (A full sort is what XLA's CPU backend makes ~10x slower for batched sampling.)"""
    k = min(NUCLEUS_K, probs.shape[-1])
    vals, _ = jax.lax.top_k(probs, k)
    csum = jnp.cumsum(vals, -1)
    idx = jnp.minimum((csum < top_p).sum(-1, keepdims=True), k - 1)
    fast = jnp.take_along_axis(vals, idx, -1)

    def bisect(_):
        def step(_, lohi):
            lo, hi = lohi
            mid = (lo + hi) / 2
            ok = jnp.where(probs >= mid, probs, 0.0).sum(-1, keepdims=True) >= top_p
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        n = probs.shape[:-1] + (1,)
        return jax.lax.fori_loop(0, 30, step, (jnp.zeros(n), probs.max(-1, keepdims=True) * (1 + 1e-6)))[0]

    return jax.lax.cond(jnp.all(csum[..., -1:] >= top_p), lambda _: fast, bisect, None)


def _inverse_cdf(weights: jax.Array, u: jax.Array, block: int = 64) -> jax.Array:
    """Index i of each row of ``weights`` [N,V] (>= 0, unnormalised) with P(i) = w_i / sum(w), from uniforms u [N].

    Two levels (block sums, then one block) instead of one cumulative sum over V: XLA's CPU cumsum of a
    3,331-wide row cost 3x more. Never returns a zero-weight index (rounding falls back to the block's last
    nonzero entry)."""
    N, V = weights.shape
    nb = -(-V // block)
    w = jnp.pad(weights, ((0, 0), (0, nb * block - V))).reshape(N, nb, block)
    cb = jnp.cumsum(w.sum(-1), -1)  # [N, nb]
    x = u * cb[:, -1]
    blk = jnp.minimum((cb <= x[:, None]).sum(-1), nb - 1)  # first block whose running mass exceeds x
    before = jnp.where(blk > 0, jnp.take_along_axis(cb, jnp.maximum(blk - 1, 0)[:, None], -1)[:, 0], 0.0)
    row = jnp.take_along_axis(w, blk[:, None, None], 1)[:, 0]  # [N, block]
    j = (jnp.cumsum(row, -1) + before[:, None] <= x[:, None]).sum(-1)
    last = block - 1 - jnp.argmax((row > 0)[:, ::-1], -1)
    return blk * block + jnp.minimum(j, last)


def sample_logits(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Sample ids from logits [N,V] with temperature (<= 0 means greedy) and nucleus (top-p) filtering.

    Inverse-CDF sampling: one uniform number per row (a Gumbel draw per vocabulary entry cost more than the
    local decoder step at batch 16), and the nucleus filter only when ``top_p < 1``."""
    probs = jax.nn.softmax(logits / jnp.maximum(temperature, 1e-6), axis=-1)
    kept = jax.lax.cond(top_p >= 1.0, lambda _: probs,
                        lambda _: jnp.where(probs >= _nucleus_threshold(probs, top_p), probs, 0.0), None)
    sampled = _inverse_cdf(kept, jax.random.uniform(key, probs.shape[:-1]))
    return jnp.where(temperature <= 0, jnp.argmax(logits, -1), sampled).astype(jnp.int32)


def sample_frame(model: M4MTransformer, g: jax.Array, key: jax.Array, temperature: jax.Array,
                 top_p: jax.Array) -> jax.Array:
    """Tokens [N,L] of one frame per row from global outputs g [N,E] (local decoder with a KV cache)."""
    cfg = model.cfg
    N, L = g.shape[0], cfg.max_frame_tokens
    banned = jnp.zeros((cfg.vocab_size,), bool).at[jnp.array([cfg.sos_id, cfg.pad_id])].set(True)

    def cond(c):
        i, _, _, _, done, _ = c
        return (i < L) & ~jnp.all(done)

    def body(c):
        i, x, cache, toks, done, key = c
        logits, cache = model.local_step(x, i, cache)
        key, k = jax.random.split(key)
        tok = sample_logits(jnp.where(banned, -jnp.inf, logits), k, temperature, top_p)
        if cfg.get("row_format", "eos") == "eos":  # official rows may be full (no EOS)
            tok = jnp.where(i == L - 1, cfg.eos_id, tok)  # no room left: end the frame
        tok = jnp.where(done, cfg.pad_id, tok)
        toks = jax.lax.dynamic_update_slice_in_dim(toks, tok[:, None], i, axis=1)
        return i + 1, model.embed_tokens(tok), cache, toks, done | (tok == cfg.eos_id), key

    init = (jnp.int32(0), g.astype(model.dtype), model.init_local_cache(N), jnp.full((N, L), cfg.pad_id, jnp.int32),
            jnp.zeros((N,), bool), key)
    return jax.lax.while_loop(cond, body, init)[3]


@functools.partial(jax.jit, static_argnames=("graphdef", "n_frames"))
def _generate(graphdef, state, prompt: jax.Array, rng: jax.Array, temperature: jax.Array, top_p: jax.Array,
              n_frames: int) -> jax.Array:
    model = nnx.merge(graphdef, state)
    B, F0, L = prompt.shape
    cache = model.init_global_cache(B, F0 + n_frames + 1)
    frames, _ = model.local_encode(prompt)
    sos = jnp.broadcast_to(model.global_sos[...].astype(frames.dtype), (B, 1, frames.shape[-1]))
    h0 = jnp.concatenate([sos, frames], axis=1)  # [SOS, frame 0 .. F0-1]: the last output predicts frame F0
    g, _, cache = model.global_decode(h0, cache=cache, cache_index=0)
    out = jnp.concatenate([prompt.astype(jnp.int32), jnp.full((B, n_frames, L), model.cfg.pad_id, jnp.int32)], 1)

    def body(t, c):
        out, cache, g_last, rng = c
        rng, k = jax.random.split(rng)
        frame = sample_frame(model, g_last, k, temperature, top_p)
        out = jax.lax.dynamic_update_slice_in_dim(out, frame[:, None], F0 + t, axis=1)
        emb, _ = model.local_encode(frame[:, None])
        g, _, cache = model.global_decode(emb, cache=cache, cache_index=F0 + 1 + t)
        return out, cache, g[:, 0], rng

    return jax.lax.fori_loop(0, n_frames, body, (out, cache, g[:, -1], rng))[0]


def generate(model: M4MTransformer, prompt_tokens: jax.Array, n_frames: int, rng: jax.Array,
             temperature: float = 1.0, top_p: float = 1.0) -> jax.Array:
    """Continue prompts [B,F0,L] by ``n_frames`` frames -> tokens [B,F0+n_frames,L] (one jitted loop)."""
    if prompt_tokens.ndim != 3 or prompt_tokens.shape[-1] != model.cfg.max_frame_tokens:
        raise ValueError(f"generate: prompt must be [B, F0, {model.cfg.max_frame_tokens}], got {prompt_tokens.shape}")
    if n_frames < 1:
        raise ValueError(f"generate: n_frames must be >= 1, got {n_frames}")
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, jnp.asarray(prompt_tokens, jnp.int32), rng, jnp.float32(temperature),
                     jnp.float32(top_p), n_frames=n_frames)


# ----------------------------------------------------------------------------------------- prompts, files
def test_prompt(workdir: str, frames: int):
    """The first ``frames`` frames of the run's first test window (a prompt when the user gives none)."""
    from m4mjax.datasets import pipeline
    from m4mjax.run import cli

    cfg = cli.load_config(workdir)
    cfg.data.batch_size = 1
    cfg.data.frames = max(int(frames), 1)
    return next(iter(pipeline.make_dataset(cfg.data, "test", seed=0)))["tokens"][0]


def load_prompt(path: str, frames: int, max_frame_tokens: int, row_format: str = "eos") -> tuple[np.ndarray, dict]:
    """(tokens [F0, L], timing) of the first ``frames`` frames of a MIDI file; timing (tempo, time signature,
    see ``tokenizer.timing_of``) is what the sampled file is written with."""
    from m4mjax import tokenizer as tk

    score = tk.load_midi(path)
    notes, n = tk.midi_to_notes(score, name=str(path))
    f0 = min(int(frames), n)
    return tk.notes_to_tokens(notes, 0, f0, max_frame_tokens, row_format=row_format), tk.timing_of(score, f0)


def write_samples(tokens: np.ndarray, out: str, timing: dict | None = None) -> list[str]:
    """Write sampled token rows [B, F, L] as MIDI files (sample i > 0 gets a ``_i`` suffix), each ending at
    frame F (notes cut there) with the prompt's tempo and time signature (default 120 qpm, 4/4)."""
    from m4mjax import tokenizer as tk

    tokens = np.asarray(tokens)
    root, ext = os.path.splitext(out)
    paths = []
    for i, toks in enumerate(tokens):
        path = out if i == 0 else f"{root}_{i}{ext or '.mid'}"
        tk.notes_to_midi(tk.tokens_to_notes(toks), path, **(timing or {}), end_frame=toks.shape[0])
        paths.append(path)
    return paths
