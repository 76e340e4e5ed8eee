"""FA_self / FA_cross links: identity at init, wiring of the cross term and its inputs, LoRA placement,
cached decoding vs the full forward, the trainable filter, init_from path compatibility, span masking."""
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from m4m_fixtures import random_frames
from m4mjax import adapters as ad
from m4mjax import linked
from m4mjax import link_models
from m4mjax.layers import AdapterParam, LoRAParam
from m4mjax.model import M4MTransformer, model_config

B, F1, F2, L = 2, 6, 5, 9


def tiny_cfg(**kw):
    cfg = model_config(0)
    cfg.update(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=32,
               max_frame_tokens=L, dropout=0.1)
    cfg.update(**kw)
    return cfg


TINY_S2S = dict(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=32)


def tiny_link(kind, **kw):
    lk = linked.link_config(kind)
    lk.update(lora_rank=0 if kind == "seq2seq" else 4, lora_alpha=8.0, adapter_width=16, adapter_heads=4,
              mask_length=3, seq2seq=TINY_S2S)
    lk.update(**kw)
    return lk


def full_cfg(link, **model_kw):
    return ml_collections.ConfigDict(dict(model=tiny_cfg(**model_kw), link=link))


def tokens(seed, F, cfg=None):
    """Valid frame rows [B, F, L]: 2k note tokens, EOS, PAD..."""
    return random_frames(cfg or tiny_cfg(), B, F, seed)


def randomize(m, kind, seed, std=0.5):
    """Every variable of type ``kind`` -> N(0, std^2) (so zero-initialised LoRA B, gates, segments act)."""
    st = nnx.state(m, kind)
    leaves, tdef = jax.tree.flatten(st)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(m, jax.tree.unflatten(tdef, [jax.random.normal(k, x.shape, x.dtype) * std for k, x in zip(keys, leaves)]))


def merge_by_path(base: dict, new: dict, used: list) -> dict:
    """Independent stand-in for train.py's init_from merge: leaves of ``new`` replace ``base``'s at equal paths."""
    out = {}
    for k, v in base.items():
        n = new.get(k, new.get(str(k)))
        if isinstance(v, dict):
            out[k] = merge_by_path(v, n, used) if isinstance(n, dict) else v
        elif n is not None:
            assert np.shape(n) == np.shape(v), k
            out[k], _ = n, used.append(1)
        else:
            out[k] = v
    return out


def lm_into(linked_model, lm):
    """Load the plain LM's parameters into the linked model by path; every LM leaf must find a home."""
    lm_pure = nnx.state(lm, nnx.Param).to_pure_dict()
    st = nnx.state(linked_model, nnx.Param)
    used = []
    merged = merge_by_path(st.to_pure_dict(), lm_pure, used)
    assert len(used) == len(jax.tree.leaves(lm_pure))
    nnx.replace_by_pure_dict(st, merged)
    nnx.update(linked_model, st)


link_logits = nnx.jit(lambda m, r, t: m.link_logits(r, t))
lm_logits = nnx.jit(lambda m, t: M4MTransformer.__call__(m, t))


@pytest.fixture(scope="module")
def lm():
    return M4MTransformer(tiny_cfg(), rngs=nnx.Rngs(0))


# --- identity at init -----------------------------------------------------------------------------------
def test_fa_cross_at_init_is_the_lm_on_the_target(lm):
    m = linked.build(full_cfg(tiny_link("fa_cross")), nnx.Rngs(1))
    lm_into(m, lm)  # also init_from: the LM's weights land at the same paths
    ref, tgt = tokens(1, F1), tokens(2, F2)
    np.testing.assert_allclose(link_logits(m, ref, tgt), lm_logits(lm, tgt), atol=1e-5)
    randomize(m, LoRAParam, 3)  # sanity: the comparison can fail
    assert np.abs(link_logits(m, ref, tgt) - lm_logits(lm, tgt)).max() > 1e-3


def test_fa_self_invariants(lm):
    """At init (segment 0, LoRA B 0) the target still attends the reference, so it is NOT the LM on the
    target alone. What holds: (a) with an empty reference it is exactly the LM on the target; (b) always it
    equals the LM's own forward over [reference; target] with rotary positions 0..F1-1, 0..F2-1 and segment
    ids 0/1, sliced to the target frames (checked with LoRA and segment rows nonzero)."""
    m = linked.build(full_cfg(tiny_link("fa_self")), nnx.Rngs(1))
    lm_into(m, lm)
    ref, tgt = tokens(1, F1), tokens(2, F2)
    np.testing.assert_allclose(link_logits(m, ref[:, :0], tgt), lm_logits(lm, tgt), atol=1e-5)
    assert np.abs(link_logits(m, ref, tgt) - lm_logits(lm, tgt)).max() > 1e-3  # the reference matters
    randomize(m, LoRAParam, 3)
    randomize(m, AdapterParam, 4)
    both = jnp.concatenate([ref, tgt], axis=1)
    pos = jnp.asarray(np.r_[np.arange(F1), np.arange(F2)])[None].repeat(B, 0)
    seg = jnp.asarray(np.r_[np.zeros(F1), np.ones(F2)].astype(np.int32))[None].repeat(B, 0)
    lm_pos = nnx.jit(lambda m, t, p, s: M4MTransformer.__call__(m, t, positions=p, segment_ids=s)[:, F1:])
    want = lm_pos(m, both, pos, seg)
    np.testing.assert_allclose(link_logits(m, ref, tgt), want, atol=1e-4)
    wrong = lm_pos(m, both, jnp.arange(F1 + F2)[None].repeat(B, 0), seg)
    assert np.abs(wrong - want).max() > 1e-3  # positions that do not restart would be caught


# --- the cross term and its inputs ---------------------------------------------------------------------
def _np_ln(x, s, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * s + b


def _np_rope(x, pos):  # x [N,T,H,D]: rotate interleaved pairs by pos * 10000^(-2k/D)
    D = x.shape[-1]
    ang = pos[:, :, None, None] * 10000.0 ** (-2 * np.arange(D // 2) / D)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = x0 * np.cos(ang) - x1 * np.sin(ang), x1 * np.cos(ang) + x0 * np.sin(ang)
    return out


def _np_softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_cross_term_enters_before_the_layernorm():
    """Hand-computed block 0 of the target pass with a nonzero gate: LN(x + Attn(x) + g*CrossAttn(x, ref)) ..."""
    m = linked.make(tiny_cfg(dropout=0.0), tiny_link("fa_cross"), rngs=nnx.Rngs(1))
    randomize(m, AdapterParam, 5)
    ref, tgt = tokens(1, F1), tokens(2, F2)
    # one jitted program: the two streams' inputs to layer 0 and the target pass's input to layer 1
    x, r, got = nnx.jit(lambda m, ref, tgt: (m.global_inputs(m.local_encode(tgt)[0]),
                                             m.global_inputs(m.local_encode(ref)[0]),
                                             m.link_forward(ref, tgt)[2][1]))(m, ref, tgt)
    x = np.asarray(x, np.float64)  # target input to layer 0
    r = np.asarray(r, np.float64)  # reference input to layer 0
    blk, a = m.global_decoder.blocks[0], m.adapters[0]
    P = lambda v: np.asarray(v[...], np.float64)
    qkv = np.einsum("nte,ejhd->ntjhd", x, P(blk.qkv)) + P(blk.qkv_b)
    pos = np.broadcast_to(np.arange(F2), (B, F2)).astype(np.float64)
    q, k, v = _np_rope(qkv[:, :, 0], pos), _np_rope(qkv[:, :, 1], pos), qkv[:, :, 2]
    s = np.einsum("nthd,nshd->nhts", q, k) / np.sqrt(q.shape[-1])
    s = np.where(np.tril(np.ones((F2, F2), bool)), s, -np.inf)
    att = np.einsum("nhts,nshd->nthd", _np_softmax(s), v).reshape(B, F2, -1) @ P(blk.o).reshape(-1, 32) + P(blk.o_b)

    def pe(idx):  # interleaved sinusoid of the model width
        ang = idx[:, None] * np.exp(np.arange(0, 32, 2) * -np.log(10000.0) / 32)
        return np.stack([np.sin(ang), np.cos(ang)], -1).reshape(len(idx), 32)

    lin = lambda h, w, b: np.einsum("...e,ehd->...hd", h, P(w)) + P(b)
    pq, pk = lin(pe(np.arange(F2)), a.pos, a.pos_b), lin(pe(np.arange(F1)), a.pos, a.pos_b)
    aq, ak, av = lin(x, a.q, a.q_b) + pq, lin(r, a.k, a.k_b) + pk, lin(r, a.v, a.v_b) + pk
    cs = np.einsum("bthd,bshd->bhts", aq, ak) / 2.0  # head_dim 4, no mask: the whole reference is visible
    ctx = np.einsum("bhts,bshd->bthd", _np_softmax(cs), av)
    delta = (np.einsum("bthd,hde->bte", ctx, P(a.o)) + P(a.o_b)) * P(a.gate)

    def rest(h):
        f = h @ P(blk.ff1) + P(blk.ff1_b)
        f = 0.5 * f * (1 + erf(f / np.sqrt(2))) @ P(blk.ff2) + P(blk.ff2_b)
        return _np_ln(f + h, P(blk.ln2_scale), P(blk.ln2_bias))

    want = rest(_np_ln(att + delta + x, P(blk.ln1_scale), P(blk.ln1_bias)))
    after = rest(_np_ln(att + x, P(blk.ln1_scale), P(blk.ln1_bias)) + delta)  # the wiring this test rejects
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(after - want).max() > 1e-2


def _spied_forwards(m, ref, tgt, seen_kv, seen_q):
    """One jitted program: the linked forward (the spies record what the adapters read) and the plain LM's forward
    of each stream with every layer's input; returns the recorded values and those layer inputs."""
    @nnx.jit
    def run(m, ref, tgt):
        seen_kv.clear(), seen_q.clear()  # this trace's calls only
        m.link_forward(ref, tgt)
        _, ref_h = M4MTransformer.__call__(m, ref, return_hidden=True)
        _, tgt_h = M4MTransformer.__call__(m, tgt, return_hidden=True)
        return list(seen_kv), list(seen_q), ref_h, tgt_h

    return run(m, ref, tgt)


def test_adapters_read_each_layers_inputs(monkeypatch):
    """Spy on the adapters: keys/values come from the reference's input to layer 0, 2, queries from the
    target's input to the same layer (an independent LM forward of each stream), at absolute frame indices."""
    m = linked.make(tiny_cfg(layers=4), tiny_link("fa_cross", ref_stride=2, target_stride=3),
                           rngs=nnx.Rngs(1))
    randomize(m, LoRAParam, 6)  # LoRA on: the LM forwards below must include it too (gates stay 0)
    seen_kv, seen_q = [], []
    orig_kv, orig_call = ad.CrossAdapter.project_kv, ad.CrossAdapter.__call__
    monkeypatch.setattr(ad.CrossAdapter, "project_kv", lambda s, h, i: (seen_kv.append((h, i)), orig_kv(s, h, i))[1])
    monkeypatch.setattr(ad.CrossAdapter, "__call__",
                        lambda s, h, i, kv, **kw: (seen_q.append((h, i)), orig_call(s, h, i, kv, **kw))[1])
    ref, tgt = tokens(1, F1), tokens(2, F2)
    seen_kv, seen_q, ref_h, tgt_h = _spied_forwards(m, ref, tgt, seen_kv, seen_q)
    assert len(seen_kv) == len(seen_q) == 2
    for n, layer in enumerate([0, 2]):
        np.testing.assert_allclose(seen_kv[n][0], ref_h[layer], atol=1e-5)
        np.testing.assert_allclose(seen_q[n][0], tgt_h[layer], atol=1e-5)
        np.testing.assert_array_equal(seen_kv[n][1], np.arange(F1) * 2)
        np.testing.assert_array_equal(seen_q[n][1], np.arange(F2) * 3)
    assert np.abs(ref_h[2] - ref_h[1]).max() > 1e-3  # layers are distinguishable


def test_adapter_norm_hands_the_adapters_layernormed_states(monkeypatch):
    """link.adapter_norm: the adapters read each layer's input LayerNorm'd (no parameters), both streams; so
    scaling a residual stream's state would not change what they see."""
    m = linked.make(tiny_cfg(layers=2), tiny_link("fa_cross", adapter_norm=True), rngs=nnx.Rngs(1))
    seen_kv, seen_q = [], []
    orig_kv, orig_call = ad.CrossAdapter.project_kv, ad.CrossAdapter.__call__
    monkeypatch.setattr(ad.CrossAdapter, "project_kv", lambda s, h, i: (seen_kv.append(h), orig_kv(s, h, i))[1])
    monkeypatch.setattr(ad.CrossAdapter, "__call__",
                        lambda s, h, i, kv, **kw: (seen_q.append(h), orig_call(s, h, i, kv, **kw))[1])
    ref, tgt = tokens(1, F1), tokens(2, F2)
    seen_kv, seen_q, ref_h, tgt_h = _spied_forwards(m, ref, tgt, seen_kv, seen_q)
    norm = lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)  # noqa: E731
    np.testing.assert_allclose(seen_kv[0], norm(np.asarray(ref_h[0])), atol=1e-4)
    np.testing.assert_allclose(seen_q[0], norm(np.asarray(tgt_h[0])), atol=1e-4)
    assert np.abs(np.asarray(seen_q[0]).std(-1) - 1).max() < 1e-3


def test_cross_hook_under_remat():
    """With remat the adapters still see Python layer indices and give the same logits."""
    out = []
    for remat in (False, True):
        m = linked.make(tiny_cfg(remat=remat), tiny_link("fa_cross"), rngs=nnx.Rngs(1))
        randomize(m, AdapterParam, 12)
        out.append(link_logits(m, tokens(1, F1), tokens(2, F2)))
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


# --- LoRA placement -------------------------------------------------------------------------------------
def test_lora_is_a_delta_on_query_and_value_only():
    """Merging scale * A @ B into the query and value weights of a plain LM reproduces the LoRA'd model in
    every stack (scope 'all'); a LoRA that touched key, output or FFN weights could not match."""
    m = linked.make(tiny_cfg(dropout=0.0), tiny_link("fa_self", lora_dropout=0.0), rngs=nnx.Rngs(1))
    randomize(m, LoRAParam, 7)
    plain = M4MTransformer(tiny_cfg(dropout=0.0), rngs=nnx.Rngs(0))
    lm_into(m, plain)  # same base weights in both
    n = 0
    for stack in ("local_encoder", "global_decoder", "local_decoder"):
        for lb, pb in zip(getattr(m, stack).blocks, getattr(plain, stack).blocks):
            A, Bm = np.asarray(lb.lora_a[...]), np.asarray(lb.lora_b[...])
            w = np.asarray(pb.qkv[...]).copy()
            w[:, 0] += np.einsum("er,rhd->ehd", A[0], Bm[0]) * lb.lora_scale  # query
            w[:, 2] += np.einsum("er,rhd->ehd", A[1], Bm[1]) * lb.lora_scale  # value
            pb.qkv[...] = jnp.asarray(w)
            n += 1
    assert n == 4  # 1 local encoder + 2 global + 1 local decoder blocks
    tgt = tokens(2, F2)
    np.testing.assert_allclose(lm_logits(m, tgt), lm_logits(plain, tgt), atol=1e-4)


# --- cached decoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fa_self", "fa_cross", "seq2seq"])
def test_cached_steps_equal_the_full_forward(kind):
    m = linked.make(tiny_cfg(layers=4 if kind == "fa_cross" else 2), tiny_link(kind), rngs=nnx.Rngs(1))
    randomize(m, LoRAParam, 8)
    randomize(m, AdapterParam, 9)  # gates, segment rows nonzero
    ref, tgt = tokens(1, F1), tokens(2, F2)
    g_full, tok_emb, logits_full = nnx.jit(
        lambda m, r, t: (lambda g, e, _: (g, e, m.local_decode(g, e)))(*m.link_forward(r, t)))(m, ref, tgt)
    enc = nnx.jit(lambda m, r, p: m.start(r, F2 - p.shape[1], p))  # same cache size
    step = nnx.jit(lambda m, s, f: m.step(s, f))
    dec = nnx.jit(lambda m, g, e: m.local_decode(g[:, None], e[:, None])[:, 0])
    for f0 in (0, 2):  # no target prompt / a 2-frame target prompt
        state = enc(m, ref, tgt[:, :f0])
        for t in range(f0, F2):
            np.testing.assert_allclose(state.g, g_full[:, t], atol=1e-4, err_msg=f"{kind} frame {t}")
            np.testing.assert_allclose(dec(m, state.g, tok_emb[:, t]), logits_full[:, t], atol=1e-4)
            state = step(m, state, tgt[:, t])


def test_greedy_generate_follows_the_teacher_forced_argmax():
    # 4 layers (two adapters): the model shape of test_adapter_scale_zero..., so both use one compiled sampler
    m = linked.make(tiny_cfg(layers=4), tiny_link("fa_cross"), rngs=nnx.Rngs(1))
    randomize(m, AdapterParam, 10)
    ref = tokens(1, F1)
    out = np.asarray(linked.generate(m, ref, jax.random.key(0), n_frames=4, temperature=0.0, scale=0.5))
    assert out.shape == (B, 4, L)
    cfg = m.cfg
    logits = np.array(nnx.jit(lambda m, r, t: m.link_logits(r, t, scale=0.5))(m, ref, jnp.asarray(out)))
    logits[..., [cfg.sos_id, cfg.pad_id]] = -np.inf
    for b in range(B):
        for f in range(4):
            row = list(out[b, f])
            end = row.index(cfg.eos_id)
            assert all(tk == cfg.pad_id for tk in row[end + 1:])
            for i in range(min(end + 1, L - 1)):
                assert row[i] == logits[b, f, i].argmax(), (b, f, i)


def test_adapter_scale_zero_makes_the_reference_irrelevant():
    """The sampler's adapter-output multiplier (generate --scale): at 0 the target pass is the LoRA'd LM alone,
    so two different references give the same greedy frames; at 1 the (random, nonzero) adapters make them differ."""
    m = linked.make(tiny_cfg(layers=4), tiny_link("fa_cross"), rngs=nnx.Rngs(3))
    randomize(m, AdapterParam, 11, std=1.0)
    ref_a, ref_b = tokens(1, F1), tokens(7, F1)
    gen = lambda ref, scale: np.asarray(linked.generate(m, ref, jax.random.key(0), n_frames=4, temperature=0.0,
                                                        scale=scale))
    np.testing.assert_array_equal(gen(ref_a, 0.0), gen(ref_b, 0.0))
    assert (gen(ref_a, 1.0) != gen(ref_b, 1.0)).any()


# --- trainable variables, parameter counts ----------------------------------------------------------------
def _paths(state):
    return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}


@pytest.mark.parametrize("kind", ["fa_self", "fa_cross"])
def test_trainable_filter(kind, lm):
    cfg = full_cfg(tiny_link(kind))
    m = linked.build(cfg, nnx.Rngs(1))
    train = _paths(nnx.state(m, linked.trainable(cfg)))
    frozen = _paths(nnx.state(m, nnx.Not(linked.trainable(cfg))))
    assert frozen == _paths(nnx.state(lm, nnx.Param))  # exactly the foundation model, at its own paths
    extra = {"lora_a", "lora_b", "segment_embed", "mask_embed"}
    assert all(p.split("/")[-1] in extra or p.startswith("adapters/") for p in train)
    assert ("segment_embed" in train) == (kind == "fa_self") and "mask_embed" in train
    cfg["link"].train = "full"
    assert _paths(nnx.state(m, linked.trainable(cfg))) == train | frozen


def test_seq2seq_trains_everything_at_the_official_sizes():
    """seq2seq (spec 4c, official cp_transformer_seq2seq.py): width 256, 3 + 3 global layers, FFN 512, local stacks
    of 2, whatever cfg.model says; every parameter trains. Counted by hand: a block is qkv+o 4(E^2+E), two
    LayerNorms 4E, FFN 2*E*512 + 512 + E; a cross-attention q/k/v/pos/o 5(E^2+E) + gate."""
    cfg = ml_collections.ConfigDict(dict(model=model_config(1), link=linked.link_config("seq2seq")))
    abstract = nnx.eval_shape(lambda: linked.build(cfg, nnx.Rngs(0)))
    E, V = 256, 3331
    block = 4 * (E * E + E) + 4 * E + 2 * E * 512 + 512 + E
    cross = 5 * (E * E + E) + 1
    want = (3 + 3 + 2 + 2) * block + 3 * cross + V * E + E * V + V + E + E  # + embed, head, SOS, mask row
    assert want == 7_967_238
    assert sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, linked.trainable(cfg)))) == want
    assert sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == want
    assert abstract.encoder.blocks[0].ff1.shape == (E, 512) and len(abstract.global_decoder.blocks) == 3


def test_seq2seq_encoder_is_bidirectional_and_its_cross_attention_is_on_at_init():
    """The seq2seq encoder sees the whole reference (its first frame's keys depend on the last reference frame;
    FA_cross's causal reference pass does not), and with gates at 1 the decoder reads it from step 0."""
    kv = nnx.jit(lambda m, fr: m.reference_kv(fr))
    fr = jax.random.normal(jax.random.key(0), (B, F1, 32))
    fr2 = fr.at[:, F1 // 2].add(1.0)  # change one middle reference frame
    for kind in ("seq2seq", "fa_cross"):
        m = linked.make(tiny_cfg(layers=4, dropout=0.0), tiny_link(kind), rngs=nnx.Rngs(1))
        randomize(m, AdapterParam, 4)
        diff = np.abs(np.asarray(kv(m, fr)[-1][0] - kv(m, fr2)[-1][0])).max(axis=(0, 2, 3))  # per key position
        assert diff[-1] > 1e-4, kind  # the change reaches later keys either way
        assert (diff[0] > 1e-4) == (kind == "seq2seq"), (kind, diff)  # and earlier ones only bidirectionally
    m = linked.make(tiny_cfg(dropout=0.0), tiny_link("seq2seq"), rngs=nnx.Rngs(2))
    assert float(m.adapters[0].gate[...][0]) == 1.0
    tgt = tokens(2, F2)
    assert np.abs(np.asarray(link_logits(m, tokens(1, F1), tgt) - link_logits(m, tokens(5, F1), tgt))).max() > 1e-3


def test_seq2seq_refuses_foundation_weights_and_link_only_training():
    from m4mjax.run.cli import UserError
    from m4mjax.tasks import get_task

    cfg = full_cfg(tiny_link("seq2seq"))
    cfg.init_from = "workdirs/lm_base"
    with pytest.raises(UserError, match="init_from"):
        get_task("analysis").build(cfg, nnx.Rngs(0))
    cfg.init_from, cfg.link.train = "", "link"
    with pytest.raises(UserError, match="full"):
        get_task("analysis").build(cfg, nnx.Rngs(0))


def test_size1_trainable_counts_match_the_official_models():
    """Official (spec 4): FA_self ~3.54M, FA_cross ~6.79M; LoRA hits all 36 query/value projections."""
    def count(kind):
        cfg = ml_collections.ConfigDict(dict(model=model_config(1), link=linked.link_config(kind)))
        abstract = nnx.eval_shape(lambda: linked.build(cfg, nnx.Rngs(0)))
        return sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, linked.trainable(cfg))))

    E, n_qv = 768, 2 * (12 + 3 + 3)
    adapter = 4 * (E * 256 + 256) + 256 * E + E + 1
    assert adapter == 984_833
    assert count("fa_self") == n_qv * 2 * E * 64 + 2 * 64 + E == 3_539_840
    assert count("fa_cross") == n_qv * 2 * E * 16 + 6 * adapter + E == 6_794_502


def test_init_from_merge_of_train_py(lm):
    """train.py's init_from merge (by path) puts an LM checkpoint into the linked model, link variables kept."""
    import importlib

    merge = None
    for mod, fn in (("m4mjax.steps", "merge_pure"), ("m4mjax.train", "_merge_pure")):
        try:
            merge = getattr(importlib.import_module(mod), fn)
            break
        except (ImportError, AttributeError):
            continue
    if merge is None:
        pytest.skip("no init_from merge function found (train.py restore being refactored)")
    m = linked.build(full_cfg(tiny_link("fa_cross")), nnx.Rngs(1))
    before = nnx.state(m, AdapterParam).to_pure_dict()
    st = nnx.state(m, nnx.Param)
    nnx.replace_by_pure_dict(st, merge(st.to_pure_dict(), nnx.state(lm, nnx.Param).to_pure_dict()))
    nnx.update(m, st)
    ref, tgt = tokens(1, F1), tokens(2, F2)
    np.testing.assert_allclose(link_logits(m, ref, tgt), lm_logits(lm, tgt), atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(m, AdapterParam).to_pure_dict(), before)


# --- span masking ---------------------------------------------------------------------------------------
def test_span_mask_shapes_and_counts():
    mask = np.asarray(ad.span_mask(jax.random.key(0), 64, 100, 0.25, 10))
    for row in mask:  # n in {2, 3} starts (0.25*100/10 + U -> 2 or 3), each a 10-frame span
        runs = np.diff(np.r_[0, row.astype(int), 0])
        lengths = np.flatnonzero(runs == -1) - np.flatnonzero(runs == 1)
        assert lengths.min() >= 10 and 10 <= row.sum() <= 30
    assert mask.sum(1).max() > 20  # some rows have 3 spans
    full = np.asarray(ad.span_mask(jax.random.key(1), 4, 12, 1.0, 12))
    assert full.all()  # one span as long as the stream covers it


def test_masked_reference_is_invisible():
    """mask_stream='reference' with one span covering the whole reference: the target no longer sees it
    (in training, i.e. with a key); without a key nothing is masked."""
    lk = tiny_link("fa_cross", mask_stream="reference", mask_prob=1.0, mask_length=F1, lora_dropout=0.0,
                   adapter_dropout=0.0)
    m = linked.make(tiny_cfg(dropout=0.0), lk, rngs=nnx.Rngs(1))
    randomize(m, AdapterParam, 11)
    tgt, key = tokens(2, F2), jax.random.key(3)
    f = nnx.jit(lambda m, r, t, k: m.link_logits(r, t, key=k))
    np.testing.assert_allclose(f(m, tokens(1, F1), tgt, key), f(m, tokens(4, F1), tgt, key), atol=1e-5)
    assert np.abs(link_logits(m, tokens(1, F1), tgt) - link_logits(m, tokens(4, F1), tgt)).max() > 1e-3


def test_target_mask_hides_the_label_past_as_training_masking_does():
    """``target_mask`` all True (label_audit --target=masked): the first token of frame j no longer depends on the
    label frames before it (only the music and the mask embedding reach the global pass), and it equals what a
    training pass whose span mask covers the whole target computes (dropout off); without the mask it depends."""
    lk = tiny_link("fa_self", mask_prob=1.0, mask_length=F2, lora_dropout=0.0)
    m = linked.make(tiny_cfg(dropout=0.0), lk, rngs=nnx.Rngs(1))
    randomize(m, LoRAParam, 12)
    ref, t1, t2 = tokens(1, F1), tokens(2, F2), tokens(5, F2)
    t2 = np.asarray(t2).copy()
    t2[:, -1] = np.asarray(t1)[:, -1]  # the last frame's own tokens equal; every earlier frame differs
    hide = jnp.ones((B, F2), bool)
    masked = nnx.jit(lambda m, r, t: m.link_logits(r, t, target_mask=hide))
    a, b = np.asarray(masked(m, ref, t1)), np.asarray(masked(m, ref, jnp.asarray(t2)))
    np.testing.assert_allclose(a[:, -1], b[:, -1], atol=1e-5)
    assert np.abs(link_logits(m, ref, t1)[:, -1] - link_logits(m, ref, jnp.asarray(t2))[:, -1]).max() > 1e-3
    trained = nnx.jit(lambda m, r, t, k: m.link_logits(r, t, key=k))(m, ref, t1, jax.random.key(0))
    np.testing.assert_allclose(a, trained, atol=1e-5)


def test_sounding_pitches_by_hand():
    """Frame 0: C4 (60) for 4 frames (duration class 3) and a drum 36 (never sounds); frame 2: E4 for 1 frame;
    frame 3: G4 for 8 frames (class 5), clipped at the window's 6 frames."""
    d = lambda p, c: p + (c + 1) * 128  # noqa: E731
    P, E = 3329, 3328
    rows = np.full((1, 6, 7), P, np.int32)
    rows[0, :, 0] = E
    rows[0, 0, :5] = [0, d(60, 3), 127, d(36, 0), E]
    rows[0, 2, :3] = [5, d(64, 0), E]
    rows[0, 3, :3] = [0, d(67, 5), E]
    want = np.zeros((1, 6, 128), bool)
    want[0, 0:4, 60] = True
    want[0, 2, 64] = True
    want[0, 3:6, 67] = True
    np.testing.assert_array_equal(link_models.sounding_pitches(jnp.asarray(rows)), want)


def test_reference_sounding_is_identity_at_init_and_then_reads_the_sounding_pitches():
    """The switch adds a zero-initialised link variable: at init the logits equal the model without it (same
    seed), once it is non-zero they change with the reference's sounding pitches; it is trained with the link."""
    off = linked.make(tiny_cfg(dropout=0.0), tiny_link("fa_self"), rngs=nnx.Rngs(1))
    on = linked.make(tiny_cfg(dropout=0.0), tiny_link("fa_self", reference_sounding=True), rngs=nnx.Rngs(1))
    ref, tgt = tokens(1, F1), tokens(2, F2)
    nnx.update(on, nnx.state(off, nnx.Param))  # every shared variable equal; sounding_embed stays zero
    np.testing.assert_allclose(link_logits(on, ref, tgt), link_logits(off, ref, tgt), atol=1e-6)
    assert on.sounding_embed.shape == (128, 32) and isinstance(on.sounding_embed, AdapterParam)
    on.sounding_embed[...] = jax.random.normal(jax.random.key(0), (128, 32))
    assert np.abs(link_logits(on, ref, tgt) - link_logits(off, ref, tgt)).max() > 1e-3


def target_pass_input(model, ref, tgt) -> np.ndarray:
    """The global decoder's input in the target pass of ``model.link_forward`` (fa_cross runs the reference's
    pass first), caught by a spy on ``global_decode``."""
    from unittest import mock

    seen = []
    real = linked.LinkedModel.global_decode

    def spy(self, h, *a, **kw):
        seen.append(h)
        return real(self, h, *a, **kw)

    def run(m, r, t):
        m.link_forward(r, t)
        return seen[-1]

    with mock.patch.object(linked.LinkedModel, "global_decode", spy):
        return np.asarray(nnx.jit(run)(model, ref, tgt))


def assert_sampler_matches_teacher_forcing(m, ref, tgt, kind):
    """The cached sampler (start + step, with and without a 2-frame prompt) gives teacher forcing's global outputs."""
    g_full, _, _ = nnx.jit(lambda m, r, t: m.link_forward(r, t))(m, ref, tgt)
    enc = nnx.jit(lambda m, r, p: m.start(r, F2 - p.shape[1], p))
    step = nnx.jit(lambda m, s, f: m.step(s, f))
    for f0 in (0, 2):
        state = enc(m, ref, tgt[:, :f0])
        for t in range(f0, F2):
            np.testing.assert_allclose(state.g, g_full[:, t], atol=1e-4, err_msg=f"{kind} frame {t}")
            state = step(m, state, tgt[:, t])


@pytest.mark.parametrize("kind", ["fa_self", "fa_cross"])
def test_target_sounding_adds_the_music_under_the_predicted_frame(kind):
    """link.target_sounding: zero at init (logits equal the switch off); with its projection W set, the global
    input that predicts target frame j (fa_self: sequence position F1 + j; fa_cross: j) gains W[p] for each pitch
    p sounding in the reference at frame j, and nothing else changes; the cached sampler computes the same."""
    lk = tiny_link(kind, target_sounding=True, lora_dropout=0.0)
    m = linked.make(tiny_cfg(dropout=0.0), lk, rngs=nnx.Rngs(1))
    off = linked.make(tiny_cfg(dropout=0.0), tiny_link(kind, lora_dropout=0.0), rngs=nnx.Rngs(1))
    nnx.update(m, nnx.state(off, nnx.Param))
    tgt = tokens(2, F2)
    ref = np.full((B, F1, L), 3329, np.int32)
    ref[:, :, 0] = 3328  # silent frames, but frame 2: C4 for 2 frames (duration class 1), a drum (never sounds)
    ref[:, 2, :5] = [0, 60 + 128 * 2, 127, 36 + 128 * 2, 3328]
    ref = jnp.asarray(ref)
    np.testing.assert_allclose(link_logits(m, ref, tgt), link_logits(off, ref, tgt), atol=1e-6)
    W = jax.random.normal(jax.random.key(0), (128, 32))
    m.target_sounding_embed[...] = W
    h_on, h_off = (target_pass_input(x, ref, tgt) for x in (m, off))
    want = np.zeros_like(h_on)
    first = F1 if kind == "fa_self" else 0  # where the input predicting target frame 0 sits
    want[:, first + 2] = want[:, first + 3] = W[60] * np.sqrt(32)  # C4 sounds at frames 2 and 3 (gain sqrt(width))
    np.testing.assert_allclose(h_on - h_off, want, atol=1e-5)
    randomize(m, AdapterParam, 9)
    assert_sampler_matches_teacher_forcing(m, ref, tgt, kind)


@pytest.mark.parametrize("kind", ["fa_self", "fa_cross"])
def test_sounding_ahead_adds_the_share_of_the_coming_frames_in_which_each_pitch_sounds(kind):
    """link.sounding_ahead=(2, 4): zero at init (logits equal the switch off); with its projections W2, W4 set, the
    global input predicting target frame j gains, for each window w, W_w[p] times the share of reference frames
    j .. j+w-1 that lie inside the window and in which pitch p sounds (counted here by hand); the cached sampler
    computes the same as teacher forcing."""
    lk = tiny_link(kind, sounding_ahead=(2, 4), lora_dropout=0.0)
    m = linked.make(tiny_cfg(dropout=0.0), lk, rngs=nnx.Rngs(1))
    off = linked.make(tiny_cfg(dropout=0.0), tiny_link(kind, lora_dropout=0.0), rngs=nnx.Rngs(1))
    nnx.update(m, nnx.state(off, nnx.Param))
    tgt = tokens(2, F2)
    ref = np.full((B, F1, L), 3329, np.int32)
    ref[:, :, 0] = 3328  # silent, but C4 (60) sounds at frames 2-3 and E4 (64) at the last frame (clipped)
    ref[:, 2, :3] = [0, 60 + 128 * 2, 3328]
    ref[:, F1 - 1, :3] = [0, 64 + 128 * 3, 3328]
    ref = jnp.asarray(ref)
    np.testing.assert_allclose(link_logits(m, ref, tgt), link_logits(off, ref, tgt), atol=1e-6)
    W = np.asarray(jax.random.normal(jax.random.key(0), (2, 128, 32)))
    m.ahead_sounding_embed[...] = W
    h_on, h_off = (target_pass_input(x, ref, tgt) for x in (m, off))
    sounding = {60: {2, 3}, 64: {F1 - 1}}
    want = np.zeros_like(h_on)
    first = F1 if kind == "fa_self" else 0
    for j in range(min(F2, F1)):
        for k, w in enumerate((2, 4)):
            inside = [f for f in range(j, j + w) if f < F1]
            for p, frames in sounding.items():
                share = len(frames & set(inside)) / len(inside)
                want[:, first + j] += share * W[k, p] * np.sqrt(32)
    np.testing.assert_allclose(h_on - h_off, want, atol=1e-5)
    randomize(m, AdapterParam, 9)
    assert_sampler_matches_teacher_forcing(m, ref, tgt, kind)


def test_sounding_ahead_rejects_bad_windows():
    """A window length below 1 or not an int is a one-line UserError naming the key."""
    from m4mjax.run.errors import UserError

    for bad in ((0,), (2.5,)):
        with pytest.raises(UserError, match="sounding_ahead"):
            linked.check_link(tiny_link("fa_self", sounding_ahead=bad))


def test_each_kind_is_its_own_class_with_its_official_defaults():
    """link.kind picks one class (no kind tests elsewhere); each class carries its official link defaults (spec §4:
    LoRA 64/128 FA_self, 16/32 FA_cross; seq2seq from scratch, unmasked) and says whether --scale applies."""
    want = {"fa_self": (link_models.FASelf, (64, 128.0, 0.25, "link"), False),
            "fa_cross": (link_models.FACross, (16, 32.0, 0.25, "link"), True),
            "seq2seq": (link_models.Seq2Seq, (0, 0.0, 0.0, "full"), True)}
    for kind, (cls, defaults, scale) in want.items():
        lk = linked.link_config(kind)
        assert (lk.lora_rank, lk.lora_alpha, lk.mask_prob, lk.train) == defaults, kind
        m = nnx.eval_shape(lambda: linked.make(tiny_cfg(), tiny_link(kind), rngs=nnx.Rngs(0)))
        assert type(m) is cls and m.accepts_scale is scale, kind
        assert hasattr(m, "adapters") == (kind != "fa_self") and hasattr(m, "encoder") == (kind == "seq2seq")
        assert m.cfg.segment_embedding == (kind == "fa_self")
    assert not linked.make(tiny_cfg(), tiny_link("fa_self", change_pe=False), rngs=nnx.Rngs(0)).cfg.segment_embedding
