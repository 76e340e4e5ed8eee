"""Scored chord decoding: choose each frame's chord row by its whole probability, not note by note.

A label frame is written ``[0, bass, 0, tone, 0, tone, ..., 127, beat, ..., EOS]`` (``m4mjax.labels``: the chord
track, instrument 0, bass / tones / extensions in layout order, then the beat track's drum markers). Greedy
decoding spells a chord one note at a time, so a 4-note chord is right only when four argmaxes are; it can also
write note sets no chord has. Here, at each frame:

1. ``p_open`` = p(first token = instrument 0), the model's probability that a chord starts here.
2. The chord's duration class: the one with the most mass over the 12 bass pitch-duration tokens at position 1
   (every note of a chord row has the same duration class, ``labels.chord_track``).
3. Every candidate chord row (``candidates``: each quality ``labels`` renders x 12 roots x every inversion, plus
   the extended qualities in root position) is scored exactly: the sum of its tokens' log-probabilities plus
   log p(the row ends there, i.e. the next token is not instrument 0). Candidates share prefixes, so the local
   decoder runs once per node of their prefix trie (``Trie``), a level per token position, batched over nodes.
4. The frame opens the best candidate when ``joint``: its score beats log(1 - p_open) ("no chord"), else when
   ``p_open >= 0.5`` (``open='greedy'``). Both score only the rows with p_open >= 0.5: below it no candidate can win
   (their probabilities sum to at most p_open), so the cost follows the chords, not the batch.
5. The rest of the frame (the beat track and EOS) is decoded greedily after the chosen prefix, with instrument 0
   banned right after it (a chosen chord ends where it was scored to end; "no chord" means no chord note).

Not done: chords are not forced at barlines (the model's p_open there is what decides), and there is no beam
over frames; candidates outside the enumerated set (added-tone labels such as C:maj(9)) cannot be written.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from m4mjax import labels
from m4mjax import tokenizer as tok

CHORD_INSTRUMENT = 0  # the chord track's program (labels.chord_track)
INS = -1  # trie symbol of the instrument token; other symbols are MIDI pitches
EXTENDED = ("9", "maj9", "min9", "11", "min11", "13", "maj13", "min13")


def candidates(max_notes: int = tok.MAX_NOTES_PER_FRAME) -> list[tuple[int, ...]]:
    """Chord rows as chord-track pitches in layout order (bass 36+pc, tones 48+pc ascending, extensions 60+pc
    ascending), distinct, at most ``max_notes`` notes: every quality of ``labels.QUALITY_ORDER`` x 12 roots x every
    inversion (the bass on each chord tone), and the extended qualities (9th..13th chords) in root position."""
    rows: dict[tuple[int, ...], None] = {}
    for q in list(labels.QUALITY_ORDER) + list(EXTENDED):
        for root in range(12):
            bass, tones, ext = labels.harte_to_notes(f"{labels.NAMES[root]}:{q}")
            for b in (tones if q in labels.QUALITY_ORDER else (bass,)):
                row = (labels.BASS_LOW + b,) + tuple(labels.TONE_LOW + t for t in tones) \
                    + tuple(labels.EXT_LOW + e for e in ext)
                if len(row) <= max_notes:
                    rows[row] = None
    return list(rows)


class Trie(NamedTuple):
    """The candidates after their bass, one prefix trie per bass pitch class, levels padded to one shape.

    A candidate's tokens are ``[INS, bass, INS, p2, ..., INS, pK]``; the trie of bass class b holds the part after
    the bass, ``[INS, p2, ..., INS, pK]``. Level r holds the distinct prefixes of length r (level 0: the empty one,
    i.e. the node right after the bass). ``parent[r][b]`` / ``symbol[r][b]``: each level-r node's parent at level
    r-1 and the symbol it appends (r >= 1; padding nodes point at node 0). ``node[b, c, r]``: candidate c's node at
    level r; ``target[b, c, r]``: its symbol at position r; ``length[b, c]`` = 2K_c - 2 (-1: padding candidate);
    ``pitches[b, c]``: its chord-track pitches (-1 padded)."""
    parent: tuple[np.ndarray, ...]
    symbol: tuple[np.ndarray, ...]
    node: np.ndarray
    target: np.ndarray
    length: np.ndarray
    pitches: np.ndarray


@functools.lru_cache(maxsize=8)
def build_trie(max_notes: int) -> Trie:
    rows = candidates(max_notes)
    by_bass = [[r for r in rows if r[0] % 12 == (labels.BASS_LOW + b) % 12] for b in range(12)]
    seqs = [[[s for p in r[1:] for s in (INS, p)] for r in grp] for grp in by_bass]
    depth = max(len(q) for grp in seqs for q in grp)
    n_cand = max(len(grp) for grp in seqs)
    index = [[{(): 0}] + [{} for _ in range(depth)] for _ in range(12)]
    parent = [[[0]] + [[] for _ in range(depth)] for _ in range(12)]
    symbol = [[[0]] + [[] for _ in range(depth)] for _ in range(12)]
    node = np.zeros((12, n_cand, depth + 1), np.int32)
    target = np.zeros((12, n_cand, depth), np.int32)
    length = np.full((12, n_cand), -1, np.int32)
    pitches = np.full((12, n_cand, max(len(r) for r in rows)), -1, np.int32)
    for b in range(12):
        for c, seq in enumerate(seqs[b]):
            for r in range(1, len(seq) + 1):
                key = tuple(seq[:r])
                if key not in index[b][r]:
                    index[b][r][key] = len(parent[b][r])
                    parent[b][r].append(index[b][r - 1][key[:-1]])
                    symbol[b][r].append(seq[r - 1])
                node[b, c, r] = index[b][r][key]
            target[b, c, :len(seq)] = seq
            length[b, c] = len(seq)
            pitches[b, c, :len(by_bass[b][c])] = by_bass[b][c]

    def padded(table, r):
        width = max(len(table[b][r]) for b in range(12))
        return np.array([table[b][r] + [0] * (width - len(table[b][r])) for b in range(12)], np.int32)

    return Trie(tuple(padded(parent, r) for r in range(depth + 1)), tuple(padded(symbol, r) for r in range(depth + 1)),
                node, target, length, pitches)


def _tokens(symbols: jax.Array, duration: jax.Array) -> jax.Array:
    """Trie symbols -> token ids: INS -> the chord instrument; pitch p -> p + (duration + 1) * 128."""
    return jnp.where(symbols == INS, CHORD_INSTRUMENT, symbols + (duration + 1) * tok.N_PITCHES).astype(jnp.int32)


def _take(cache, idx: jax.Array):
    """Rows ``idx`` [B, N] of a [B*M, ...]-shaped cache pytree laid out as B blocks of M -> [B*N, ...]."""
    def one(x):
        B = idx.shape[0]
        x = x.reshape(B, -1, *x.shape[1:])
        return jnp.take_along_axis(x, idx.reshape(B, -1, *([1] * (x.ndim - 2))), 1).reshape(-1, *x.shape[2:])
    return jax.tree_util.tree_map(one, cache)


def _not_instrument(logp: jax.Array) -> jax.Array:
    """log p(next token is not the chord instrument), exactly (no 1 - p cancellation): logsumexp of the rest."""
    return jax.nn.logsumexp(logp[..., CHORD_INSTRUMENT + 1:], -1)


class Scores(NamedTuple):
    no_chord: jax.Array  # [B] log p(no chord starts here)
    rows: jax.Array  # [B, k * C] log p of each scored candidate row (-inf: padding)
    pitches: jax.Array  # [B, k * C, K] their chord-track pitches (-1 padded)
    duration: jax.Array  # [B] the duration class of the rows


def score_rows(model, g: jax.Array, max_notes: int, basses: int = 12) -> Scores:
    """Score every candidate row whose bass is among the ``basses`` most likely bass pitch classes (12: every
    candidate, exact) for the frames whose global outputs are g [B, E]. ``model`` needs ``init_local_cache``,
    ``local_step``, ``embed_tokens`` and ``dtype`` (M4MTransformer's)."""
    trie = build_trie(max_notes)
    B, k = g.shape[0], basses
    R = trie.target.shape[2]
    lp0, cache = model.local_step(g.astype(model.dtype), 0, model.init_local_cache(B))
    lp0 = jax.nn.log_softmax(lp0, -1)
    no_chord = _not_instrument(lp0)
    lp1, cache = model.local_step(model.embed_tokens(jnp.full((B,), CHORD_INSTRUMENT, jnp.int32)), 1, cache)
    lp1 = jax.nn.log_softmax(lp1, -1)
    ids = (np.arange(tok.N_DURATIONS)[:, None] + 1) * tok.N_PITCHES + labels.BASS_LOW + np.arange(12)
    duration = jax.nn.logsumexp(lp1[:, ids], -1).argmax(-1).astype(jnp.int32)  # the bass row's duration class
    bass_lp = jnp.take_along_axis(lp1, (duration[:, None] + 1) * tok.N_PITCHES + labels.BASS_LOW + jnp.arange(12), 1)
    bass_pc = jax.lax.top_k(bass_lp, k)[1] if k < 12 else jnp.broadcast_to(jnp.arange(12), (B, 12))  # [B, k]
    prefix = lp0[:, CHORD_INSTRUMENT, None] + jnp.take_along_axis(bass_lp, bass_pc, 1)  # [B, k]
    rows_b = bass_pc.reshape(-1)  # B' = B * k rows, each in its bass's trie
    dur = jnp.repeat(duration, k)
    cache = _take(cache, jnp.zeros((B, k), jnp.int32))
    logits, cache = model.local_step(model.embed_tokens(labels.BASS_LOW + rows_b + (dur + 1) * tok.N_PITCHES), 2,
                                     cache)
    logp = [jax.nn.log_softmax(logits, -1)[:, None]]  # per level: [B', N_r, V]
    for r in range(1, R + 1):
        par = jnp.asarray(trie.parent[r])[rows_b]  # [B', N_r]
        cache = _take(cache, par)
        toks = _tokens(jnp.asarray(trie.symbol[r])[rows_b], dur[:, None])
        logits, cache = model.local_step(model.embed_tokens(toks.reshape(-1)), 2 + r, cache)
        logp.append(jax.nn.log_softmax(logits, -1).reshape(par.shape[0], par.shape[1], -1))
    length = jnp.asarray(trie.length)[rows_b]  # [B', C]
    node, target = jnp.asarray(trie.node)[rows_b], jnp.asarray(trie.target)[rows_b]
    score = jnp.zeros(length.shape, jnp.float32)
    for r in range(R + 1):
        n_nodes, V = logp[r].shape[1:]
        flat = logp[r].reshape(-1, n_nodes * V)
        on = jnp.take_along_axis(flat, node[:, :, r] * V + _tokens(target[:, :, r], dur[:, None]), 1) if r < R else 0.0
        end = jnp.take_along_axis(_not_instrument(logp[r]), node[:, :, r], 1)  # the row stops here: the next
        # token is not another chord note
        score = score + jnp.where(r < length, on, jnp.where(r == length, end, 0.0))
    score = jnp.where(length >= 0, score, -jnp.inf) + prefix.reshape(-1)[:, None]
    C = length.shape[1]
    return Scores(no_chord, score.reshape(B, k * C), jnp.asarray(trie.pitches)[bass_pc].reshape(B, k * C, -1),
                  duration)


def complete_frame(model, g: jax.Array, prefix: jax.Array, prefix_len: jax.Array) -> jax.Array:
    """Tokens [B, L] of one frame: ``prefix`` [B, L] for the first ``prefix_len`` [B] tokens, then greedy, with
    the chord instrument banned right after the prefix and SOS/PAD never written."""
    cfg = model.cfg
    B, L = g.shape[0], cfg.max_frame_tokens
    banned = jnp.zeros((cfg.vocab_size,), bool).at[jnp.array([cfg.sos_id, cfg.pad_id])].set(True)
    no_ins = banned.at[CHORD_INSTRUMENT].set(True)

    def cond(c):
        i, _, _, _, done = c
        return (i < L) & ~jnp.all(done)

    def body(c):
        i, x, cache, toks, done = c
        logits, cache = model.local_step(x, i, cache)
        ban = jnp.where((i == prefix_len)[:, None], no_ins[None], banned[None])
        t = jnp.where(i < prefix_len, prefix[:, i], jnp.argmax(jnp.where(ban, -jnp.inf, logits), -1))
        if cfg.get("row_format", "eos") == "eos":
            t = jnp.where(i == L - 1, cfg.eos_id, t)
        t = jnp.where(done, cfg.pad_id, t).astype(jnp.int32)
        toks = jax.lax.dynamic_update_slice_in_dim(toks, t[:, None], i, axis=1)
        return i + 1, model.embed_tokens(t), cache, toks, done | (t == cfg.eos_id)

    init = (jnp.int32(0), g.astype(model.dtype), model.init_local_cache(B), jnp.full((B, L), cfg.pad_id, jnp.int32),
            jnp.zeros((B,), bool))
    return jax.lax.while_loop(cond, body, init)[3]


def choose(scores: Scores, open_mode: str = "joint") -> tuple[jax.Array, jax.Array]:
    """(opens a chord [B] bool, pitches of the best candidate [B, K]) from ``score_rows``' scores."""
    best = scores.rows.argmax(-1)
    top = jnp.take_along_axis(scores.rows, best[:, None], 1)[:, 0]
    if open_mode == "joint":
        opens = top > scores.no_chord
    elif open_mode == "greedy":
        opens = jnp.exp(scores.no_chord) <= 0.5
    else:
        raise ValueError(f"open_mode must be 'joint' or 'greedy', got {open_mode!r}")
    return opens, jnp.take_along_axis(scores.pitches, best[:, None, None], 1)[:, 0]


SCORED_ROWS = 4  # rows scored at a time: only rows where a chord may open are scored, a chunk per loop turn


def scored_frame(model, g: jax.Array, open_mode: str = "joint", basses: int = 4) -> jax.Array:
    """Tokens [B, L] of one label frame per row of g [B, E], the chord chosen by ``score_rows`` (module doc).

    Only rows with p_open >= 0.5 can open a chord (step 4), so only they are scored, ``SCORED_ROWS`` at a time
    (the likeliest first) until none is left: the cost follows the chords, not the batch size."""
    cfg = model.cfg
    B, L = g.shape[0], cfg.max_frame_tokens
    R = min(B, SCORED_ROWS)
    max_notes = max(1, (L - 1) // 2)
    p_open = jax.nn.softmax(model.local_step(g.astype(model.dtype), 0, model.init_local_cache(B))[0], -1
                            )[:, CHORD_INSTRUMENT]

    def body(c):
        prefix, plen, todo = c
        idx = jax.lax.top_k(jnp.where(todo, p_open, -1.0), R)[1]  # the next R rows still to score
        live = todo[idx]
        sc = score_rows(model, g[idx], max_notes, basses)
        opens, rows = choose(sc, open_mode)
        n = (rows >= 0).sum(-1)
        pd = rows + (sc.duration[:, None] + 1) * tok.N_PITCHES
        inter = jnp.stack([jnp.full_like(pd, CHORD_INSTRUMENT), pd], -1).reshape(R, -1)[:, :L]
        new = jnp.full((R, L), cfg.pad_id, jnp.int32).at[:, :inter.shape[1]].set(inter)
        prefix = prefix.at[idx].set(jnp.where(live[:, None], new, prefix[idx]))
        plen = plen.at[idx].set(jnp.where(live & opens, 2 * n, plen[idx]).astype(jnp.int32))
        return prefix, plen, todo.at[idx].set(False)

    init = (jnp.full((B, L), cfg.pad_id, jnp.int32), jnp.zeros((B,), jnp.int32), p_open >= 0.5)
    prefix, plen, _ = jax.lax.while_loop(lambda c: jnp.any(c[2]), body, init)
    return complete_frame(model, g, prefix, plen)
