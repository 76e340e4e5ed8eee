"""Scored chord decoding (m4mjax.chord_decode) against brute-force enumeration written here.

Two models: a hand-set one whose logits are a lookup table indexed by a hash of the tokens fed so far (so every
prefix has its own distribution, set by the test), and a tiny real M4MTransformer whose candidate rows are scored
here by its teacher-forced ``local_decode`` (the full causal pass, not the trie's cached steps).
"""
from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from m4mjax import chord_decode as cd
from m4mjax import tokenizer as tok

V = tok.VOCAB_SIZE
L = 17  # max_frame_tokens: 8 notes per chord row at most
MOD = 65521


class HandSetModel:
    """local_step: the state is a running hash of (position, input); logits = TABLE[hash % rows]."""

    CFG = ml_collections.FrozenConfigDict(dict(max_frame_tokens=L, vocab_size=V, sos_id=tok.SOS, pad_id=tok.PAD,
                                               eos_id=tok.EOS, row_format="eos"))

    def __init__(self, seed: int = 0, rows: int = 509):
        rng = np.random.default_rng(seed)
        table = rng.normal(0.0, 1.0, (rows, V)).astype(np.float32)
        # make the label vocabulary likely, as a trained analyser's: the chord instrument, chord-layout pitches at
        # a few durations, the drum instrument, beat markers, EOS
        table[:, 0] += rng.normal(4.0, 8.0, rows)  # some prefixes all but certain a chord opens
        for d in (3, 5, 7):
            table[:, 36 + (d + 1) * 128:72 + (d + 1) * 128] += rng.normal(5.0, 1.5, (rows, 36))
        table[:, tok.DRUM] += 3.0
        table[:, [35 + 128, 42 + 128]] += 4.0
        table[:, tok.EOS] += 3.0
        self.table = jnp.asarray(table)
        t64 = table.astype(np.float64)
        self.np_logp = t64 - np.logaddexp.reduce(t64, axis=1, keepdims=True)
        self.dtype = jnp.float32
        self.cfg = self.CFG

    @classmethod
    def reading(cls, table):
        """The model's rule over ``table`` (traced: the jitted helpers below take the table as an input rather than
        baking a 509 x V constant into each program, so models with different tables share one compiled program)."""
        m = cls.__new__(cls)
        m.table, m.dtype, m.cfg = table, jnp.float32, HandSetModel.CFG
        return m

    def init_local_cache(self, n):
        return [jnp.zeros((n,), jnp.int32)]

    def embed_tokens(self, t):
        return (jnp.asarray(t, jnp.float32) + 1.0)[:, None]

    def local_step(self, x, index, cache):
        h = (cache[0] * 31 + jnp.round(x[:, 0]).astype(jnp.int32) + 7 * jnp.asarray(index, jnp.int32)) % MOD
        return self.table[h % self.table.shape[0]], [h]


def _np_logp(model, seq_inputs):
    """log-softmax after each input of one sequence (x0 = a global output, then token ids): the hand-set model's
    rule replayed in plain numpy, one token at a time."""
    table = model.np_logp
    h, out = 0, []
    for i, x in enumerate(seq_inputs):
        v = int(round(float(np.ravel(x)[0]))) if i == 0 else int(x) + 1
        h = (h * 31 + v + 7 * i) % MOD
        out.append(table[h % len(table)].copy())
    return out


def _brute_force(model, g_row, max_notes, basses=12):
    """(no-chord log p, {pitches: log p}, duration) enumerating every candidate row token by token."""
    lp0, lp1 = _np_logp(model, [g_row, 0])
    # the duration class: most mass over the 12 bass pitch tokens
    mass = [np.logaddexp.reduce([lp1[36 + pc + (d + 1) * 128] for pc in range(12)]) for d in range(tok.N_DURATIONS)]
    d = int(np.argmax(mass))
    bass_lp = np.array([lp1[36 + pc + (d + 1) * 128] for pc in range(12)])
    keep = set(np.argsort(-bass_lp, kind="stable")[:basses].tolist())
    out = {}
    for row in cd.candidates(max_notes):
        if (row[0] - 36) % 12 not in keep:
            continue
        toks = [t for p in row for t in (0, p + (d + 1) * 128)]
        lps = _np_logp(model, [g_row] + toks)
        s = sum(lps[i][t] for i, t in enumerate(toks)) + np.logaddexp.reduce(lps[len(toks)][1:])
        out[row] = s
    return float(np.logaddexp.reduce(lp0[1:])), out, d


@functools.partial(jax.jit, static_argnums=(2, 3))
def _score_rows(table, g, max_notes, basses):
    return cd.score_rows(HandSetModel.reading(table), g, max_notes, basses)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _scored_frame(table, g, open_mode, basses):
    return cd.scored_frame(HandSetModel.reading(table), g, open_mode, basses=basses)


def _rows_of(scores, b):
    got = {}
    for s, p in zip(np.asarray(scores.rows[b]), np.asarray(scores.pitches[b])):
        if np.isfinite(s):
            got[tuple(int(x) for x in p if x >= 0)] = float(s)
    return got


def test_candidates_are_every_quality_root_and_inversion_in_layout_order():
    rows = cd.candidates(8)
    assert len(rows) == len(set(rows))
    # independently: C major and its inversions, A minor, G7 in second inversion, C:5 / C:1
    for row in [(36, 48, 52, 55), (40, 48, 52, 55), (43, 48, 52, 55), (45, 48, 52, 57), (38, 50, 53, 55, 59),
                (36, 48, 55), (43, 48, 55), (36, 48)]:
        assert row in rows
    for r in rows:  # layout: bass in 36-47, tones ascending in 48-59 including the bass's class, extensions in 60-71
        tones = [p for p in r[1:] if p < 60]
        assert 36 <= r[0] < 48 and tones == sorted(tones) and all(48 <= p < 60 for p in tones)
        assert (r[0] - 36) % 12 in {(p - 48) % 12 for p in tones}
    # distinct (bass, note set) rows, counted by hand: maj, min, dim, sus4 36 each (12 roots x 3 basses); 7, min7,
    # maj7, hdim7, minmaj7 48 each; aug 12 (4 distinct sets x 3 basses), dim7 12 (3 sets x 4); maj6 = min7 of
    # another root, min6 = hdim7, sus2 = sus4: nothing new; '5' 24, '1' 12 -> 444; plus 8 extended qualities x 12
    n_plain = len([r for r in rows if all(p < 60 for p in r)])
    assert n_plain == 4 * 36 + 5 * 48 + 12 + 12 + 24 + 12 == 444
    assert len(rows) - n_plain == 8 * 12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_candidate_score_equals_brute_force_with_a_hand_set_model(seed):
    model = HandSetModel(seed)
    g = jnp.array([[3.0], [11.0], [29.0]])
    sc = _score_rows(model.table, g, 8, 12)
    for b in range(g.shape[0]):
        none, want, d = _brute_force(model, np.asarray(g[b]), 8)
        assert int(sc.duration[b]) == d
        np.testing.assert_allclose(float(sc.no_chord[b]), none, rtol=1e-5, atol=1e-4)
        got = _rows_of(sc, b)
        assert set(got) == set(want)
        for row in want:
            np.testing.assert_allclose(got[row], want[row], rtol=1e-4, atol=1e-3)


def test_fewer_basses_score_the_brute_force_restricted_to_the_likeliest_basses():
    model = HandSetModel(5)
    g = jnp.array([[7.0], [13.0]])
    sc = _score_rows(model.table, g, 8, 3)
    for b in range(2):
        _, want, _ = _brute_force(model, np.asarray(g[b]), 8, basses=3)
        got = _rows_of(sc, b)
        assert set(got) == set(want)
        best = max(want, key=want.get)
        assert max(got, key=got.get) == best


@pytest.mark.parametrize("open_mode", ["joint", "greedy"])
def test_scored_frame_writes_the_best_row_then_decodes_the_rest_greedily(open_mode):
    model = HandSetModel(3)
    g = jnp.array([[float(x)] for x in range(0, 40, 2)])
    frames = np.asarray(_scored_frame(model.table, g, open_mode, 12))
    opened = 0
    for b in range(g.shape[0]):
        none, want, d = _brute_force(model, np.asarray(g[b]), 8)
        best = max(want, key=want.get)
        p_open = 1 - np.exp(none)
        opens = want[best] > none if open_mode == "joint" else p_open >= 0.5
        row = frames[b].tolist()
        if opens:
            opened += 1
            prefix = [t for p in best for t in (0, p + (d + 1) * 128)]
            assert row[:len(prefix)] == prefix
            rest_start = len(prefix)
        else:
            rest_start = 0
        # the rest: greedy with the chord instrument banned first, independently replayed
        inputs = [np.asarray(g[b])] + row[:rest_start]
        i = rest_start
        while i < L:
            lp = _np_logp(model, inputs)[-1]
            lp[[tok.SOS, tok.PAD]] = -np.inf
            if i == rest_start:
                lp[0] = -np.inf
            t = tok.EOS if i == L - 1 else int(np.argmax(lp))
            assert row[i] == t, (b, i)
            inputs.append(t)
            i += 1
            if t == tok.EOS:
                break
        assert all(x == tok.PAD for x in row[i:])
    assert 0 < opened < g.shape[0]  # both branches exercised


def test_a_real_model_scores_rows_as_its_teacher_forced_local_decoder():
    """The trie's cached, node-gathered local steps on a real (tiny, random) M4MTransformer give the same row
    scores as the full causal teacher-forced pass over each candidate row."""
    from flax import nnx

    from m4mjax.model import M4MTransformer, model_config

    mc = model_config()
    mc.update(width=32, layers=1, heads=2, ffn=64, local_layers=2, local_heads=2, local_ffn=64, max_frame_tokens=L,
              max_frames=32, dropout=0.0)
    model = M4MTransformer(mc, rngs=nnx.Rngs(0))
    gdef, state = nnx.split(model)
    g = jax.random.normal(jax.random.key(0), (2, 32))
    sc = jax.jit(lambda st, g: cd.score_rows(nnx.merge(gdef, st), g, 8, 12))(state, g)
    rows = cd.candidates(8)
    picks = [rows[i] for i in np.random.default_rng(0).choice(len(rows), 40, replace=False)]

    @jax.jit
    def teacher_forced(st, g_rows, toks):
        m = nnx.merge(gdef, st)
        # local_decode takes the local encoder's token inputs: [SOS, t0, .., t(L-2)] (it drops the first)
        shifted = jnp.concatenate([jnp.full((toks.shape[0], 1), tok.SOS, jnp.int32), toks[:, :-1]], 1)
        emb = m.embed_tokens(shifted.reshape(-1)).reshape(toks.shape[0], 1, L, -1)
        return jax.nn.log_softmax(m.local_decode(g_rows[:, None], emb), -1)[:, 0]

    for b in range(2):
        d = int(sc.duration[b])
        toks = np.full((len(picks), L), tok.PAD, np.int32)
        for c, row in enumerate(picks):
            seq = [t for p in row for t in (0, p + (d + 1) * 128)]
            toks[c, :len(seq)] = seq
        full = np.asarray(teacher_forced(state, jnp.broadcast_to(g[b], (len(picks), 32)), jnp.asarray(toks)),
                          np.float64)
        np.testing.assert_allclose(float(sc.no_chord[b]), np.logaddexp.reduce(full[0, 0, 1:]), atol=1e-4)
        got = _rows_of(sc, b)
        for c, row in enumerate(picks):
            n = 2 * len(row)
            want = sum(full[c, i, toks[c, i]] for i in range(n)) + np.logaddexp.reduce(full[c, n, 1:])
            np.testing.assert_allclose(got[row], want, rtol=1e-4, atol=1e-3)
