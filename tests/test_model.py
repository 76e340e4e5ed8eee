"""Foundation LM: KV caches, causality, loss, parameter counts, LoRA and the function-alignment hooks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4mjax.layers import AdapterParam, LoRAParam, causal_mask
from m4mjax.model import M4MTransformer, count_params, lm_loss, loss_fn, model_config

ATOL = 1e-4  # float32 tolerance for cached-vs-full comparisons (values are O(1) after LayerNorm)

# jitted entry points (eager op-by-op dispatch is far slower on CPU than one compile)
fwd = nnx.jit(lambda m, t: m(t))
jloss = nnx.jit(loss_fn)
jglobal = nnx.jit(lambda m, h, c, i: m.global_decode(h, cache=c, cache_index=i))
jstep = nnx.jit(lambda m, x, i, c: m.local_step(x, i, c))


def tiny_cfg(**kw):
    cfg = model_config(0)
    cfg.update(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=32,
               max_frame_tokens=9, dropout=0.1)
    cfg.update(**kw)
    return cfg


def tokens(key, shape=(2, 6, 9), n_notes_max=4, cfg=None):
    """Valid frame rows: 2k note tokens, EOS, PAD..."""
    cfg = cfg or tiny_cfg()
    rng = np.random.default_rng(key)
    B, F, L = shape
    out = np.full(shape, cfg.pad_id, np.int32)
    for b in range(B):
        for f in range(F):
            k = rng.integers(0, n_notes_max + 1)
            out[b, f, :2 * k] = rng.integers(0, 3328, 2 * k)
            out[b, f, 2 * k] = cfg.eos_id
    return jnp.asarray(out)


@pytest.fixture(scope="module")
def model():
    return M4MTransformer(tiny_cfg(), rngs=nnx.Rngs(0))


def test_size1_param_count():
    n = count_params(model_config(1))
    # 111,454,723 trainable + 393,216 fixed sinusoidal rows the official count includes = 111.85M
    assert n == 111_454_723
    assert abs(n + 1536 * 64 + 2 * 1536 * 96 - 111.8e6) < 0.1e6


def test_every_param_has_logical_names(model):
    for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = v.get_metadata().get("out_sharding") or v.get_metadata().get("sharding_names")
        assert names is not None and len(names) == v[...].ndim, path


def test_global_kv_cache_matches_full(model):
    h = jax.random.normal(jax.random.key(0), (2, 7, 32))
    full, _, _ = nnx.jit(lambda m, h: m.global_decode(h))(model, h)
    cache = model.init_global_cache(2, 10)
    out1, _, cache = jglobal(model, h[:, :3], cache, 0)  # prefill 3
    steps = [out1]
    for t in range(3, 7):
        o, _, cache = jglobal(model, h[:, t:t + 1], cache, t)
        steps.append(o)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=ATOL)


def test_local_kv_cache_matches_full(model):
    tok = tokens(1)

    @nnx.jit
    def teacher_forced(m, tok):
        frames, tok_emb = m.local_encode(tok)
        g, _, _ = m.global_decode(m.global_inputs(frames))
        return g, m.local_decode(g, tok_emb)  # [B,F,E], [B,F,L,V]

    g, full = teacher_forced(model, tok)
    B, F, L = tok.shape
    x = g.reshape(B * F, -1)
    cache = model.init_local_cache(B * F)
    flat = tok.reshape(B * F, L)
    for i in range(L):
        logits, cache = jstep(model, x, i, cache)
        np.testing.assert_allclose(logits, full.reshape(B * F, L, -1)[:, i], atol=ATOL)
        x = model.embed_tokens(flat[:, i])


def test_causality_over_frames_and_tokens(model):
    tok = tokens(2)
    base = fwd(model, tok)
    t = 2
    changed = tok.at[:, t + 1].set(tokens(3)[:, t + 1])
    out = fwd(model, changed)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-6)
    assert np.abs(out[:, t + 2:] - base[:, t + 2:]).max() > 1e-4
    # inside a frame: token j only influences predictions of later tokens (and later frames)
    changed = tok.at[:, t, 3].set((tok[:, t, 3] + 7) % 3328)
    out = fwd(model, changed)
    np.testing.assert_allclose(out[:, t, :4], base[:, t, :4], atol=1e-6)
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)


def test_loss_ignores_pad():
    cfg = tiny_cfg()
    tok = tokens(4)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=tok.shape + (cfg.vocab_size,)), jnp.float32)
    loss_of = jax.jit(lm_loss, static_argnums=2)  # one program for both calls (eager: one per primitive)
    loss, aux = loss_of(logits, tok, cfg.pad_id)
    noisy = np.where((np.asarray(tok) == cfg.pad_id)[..., None], np.asarray(logits) * 5 + 3, logits)
    loss2, aux2 = loss_of(jnp.asarray(noisy), tok, cfg.pad_id)
    assert np.isclose(loss, loss2) and aux["tokens"] == int((tok != cfg.pad_id).sum()) == aux2["tokens"]
    assert 0.0 <= aux["accuracy"] <= 1.0


def test_dropout_only_with_key(model):
    tok = tokens(5)
    l0, _ = lm_loss(fwd(model, tok), tok, model.cfg.pad_id)
    l1, _ = jloss(model, tok, jax.random.key(0))
    l2, _ = jloss(model, tok, jax.random.key(0))
    l3, _ = jloss(model, tok, jax.random.key(1))
    assert l1 == l2 and len({float(l0), float(l1), float(l3)}) == 3


def test_lora_starts_as_identity_and_is_selectable():
    lcfg = tiny_cfg(lora_rank=4, lora_alpha=8.0)
    lm = M4MTransformer(lcfg, rngs=nnx.Rngs(1))
    base = M4MTransformer(tiny_cfg(), rngs=nnx.Rngs(2))
    nnx.update(base, nnx.state(lm, nnx.All(nnx.Param, nnx.Not(LoRAParam))))
    tok = tokens(6)
    np.testing.assert_allclose(lm(tok), base(tok), atol=1e-6)
    lora = nnx.state(lm, LoRAParam)
    n_lora = sum(x.size for x in jax.tree.leaves(lora))
    # q and v in every block of the three stacks (1+1 local, 2 global blocks): r*(E + E) each
    assert n_lora == 4 * 2 * 4 * (32 + 32)
    lora = jax.tree.map(lambda x: x + 0.1, lora)
    nnx.update(lm, lora)
    assert np.abs(lm(tok) - base(tok)).max() > 1e-4
    assert count_params(tiny_cfg(lora_rank=4, lora_alpha=8.0, lora_scope="global"), LoRAParam) == 2 * 2 * 4 * 64


def test_positions_hook(model):
    h = jax.random.normal(jax.random.key(3), (2, 6, 32))
    base, _, _ = model.global_decode(h)
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    shifted, _, _ = model.global_decode(h, pos + 11)  # rotary attention is relative: a global shift is a no-op
    np.testing.assert_allclose(shifted, base, atol=ATOL)
    restart = jnp.concatenate([jnp.arange(3), jnp.arange(3)])[None].repeat(2, 0)  # FA_self: target restarts at 0
    out, _, _ = model.global_decode(h, restart)
    np.testing.assert_allclose(out[:, :3], base[:, :3], atol=ATOL)
    assert np.abs(out[:, 3:] - base[:, 3:]).max() > 1e-4


def test_segment_embedding_hook():
    m = M4MTransformer(tiny_cfg(segment_embedding=True), rngs=nnx.Rngs(0))
    plain = M4MTransformer(tiny_cfg(), rngs=nnx.Rngs(0))
    assert count_params(tiny_cfg(segment_embedding=True), AdapterParam) == 2 * 16
    h = jax.random.normal(jax.random.key(3), (2, 6, 32))
    seg = jnp.array([[0, 0, 0, 1, 1, 1]] * 2)
    np.testing.assert_allclose(m.global_decode(h, segment_ids=seg)[0], plain.global_decode(h)[0], atol=1e-6)
    m.segment_embed[...] = jax.random.normal(jax.random.key(4), (2, 16))
    a = m.global_decode(h, segment_ids=seg)[0]
    b = m.global_decode(h, segment_ids=jnp.zeros_like(seg))[0]
    assert np.abs(a - b).max() > 1e-4
    with pytest.raises(ValueError, match="segment_embedding"):
        plain.global_decode(h, segment_ids=seg)


def test_cross_hook_and_hidden_states(model):
    tok = tokens(7)
    base, hiddens = nnx.jit(lambda m, t: m(t, return_hidden=True))(model, tok)
    assert len(hiddens) == model.cfg.layers and hiddens[0].shape == (2, 6, 32)
    seen = []

    def zeros(i, h):
        seen.append((i, h.shape))
        return jnp.zeros_like(h)

    np.testing.assert_allclose(model(tok, cross=zeros), base, atol=1e-6)
    assert [i for i, _ in seen] == [0, 1]
    # a delta at frame position 3 of layer 1 changes frames >= 3 only (causal)
    noise = jax.random.normal(jax.random.key(5), (2, 32))  # not a constant shift: LayerNorm would remove that
    bump = lambda i, h: jnp.zeros_like(h).at[:, 3].set(noise * (i == 1))
    out = model(tok, cross=bump)
    np.testing.assert_allclose(out[:, :3], base[:, :3], atol=1e-6)
    assert np.abs(out[:, 3:] - base[:, 3:]).max() > 1e-4


def test_attn_mask_hook(model):
    tok = tokens(8)
    base = fwd(model, tok)
    np.testing.assert_allclose(model(tok, attn_mask=causal_mask(6)), base, atol=1e-6)
    full = model(tok, attn_mask=jnp.ones((1, 6, 6), bool))  # bidirectional: early frames now see the future
    assert np.abs(full[:, 0] - base[:, 0]).max() > 1e-4


def test_remat_same_grads():
    tok = tokens(9)
    grads = []
    for remat in (False, True):
        m = M4MTransformer(tiny_cfg(remat=remat, dropout=0.0, layers=1), rngs=nnx.Rngs(0))
        g = nnx.jit(nnx.grad(lambda m: loss_fn(m, tok)[0]))(m)
        grads.append(jax.tree.leaves(g))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_runs():
    m = M4MTransformer(tiny_cfg(dtype="bfloat16", layers=1), rngs=nnx.Rngs(0))
    loss, aux = jloss(m, tokens(10))
    assert loss.dtype == jnp.float32 and np.isfinite(loss)


def test_bad_config():
    with pytest.raises(ValueError, match="size"):
        model_config(7)
    with pytest.raises(ValueError, match="heads"):
        M4MTransformer(tiny_cfg(heads=3), rngs=nnx.Rngs(0))


def test_global_spread_sees_a_collapsed_global_decoder():
    """evaluate.global_spread is large for an untrained model and ~0 when the global decoder's last LayerNorm
    scale is zeroed (every frame then gets the same output: the collapse seen in the CPU-sized :base run)."""
    import numpy as np
    from flax import nnx

    from m4mjax import evaluate
    from m4mjax import model as lm

    cfg = lm.model_config(0)
    cfg.update(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=64, max_frame_tokens=9,
               max_frames=64, dropout=0.0)
    model = lm.M4MTransformer(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = np.full((2, 12, 9), cfg.pad_id, np.int32)
    tokens[:, :, :4] = rng.integers(0, 3328, (2, 12, 4))
    tokens[:, :, 4] = cfg.eos_id
    assert evaluate.global_spread(model, tokens) > 0.05
    last = model.global_decoder.blocks[-1]
    last.ln2_scale[...] = last.ln2_scale[...] * 0
    assert evaluate.global_spread(model, tokens) < 1e-6


def _np_block(blk, x, norm):
    """The layer written out in numpy from the spec (no rotation: sin 0, cos 1), post- or pre-LN."""
    from scipy.special import erf

    g = {k: np.asarray(getattr(blk, k)[...], np.float64) for k in
         ("qkv", "qkv_b", "o", "o_b", "ff1", "ff1_b", "ff2", "ff2_b", "ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias")}

    def ln(v, s, b):
        return (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + blk.eps) * s + b

    def attn(a):
        q, k, v = (np.einsum("te,ehd->thd", a, g["qkv"][:, j]) + g["qkv_b"][j] for j in range(3))
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(q.shape[-1])
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.einsum("thd,hde->te", np.einsum("hts,shd->thd", p, v), g["o"]) + g["o_b"]

    def ffn(a):
        u = a @ g["ff1"] + g["ff1_b"]
        return (0.5 * u * (1 + erf(u / np.sqrt(2)))) @ g["ff2"] + g["ff2_b"]

    if norm == "post":
        h = ln(x + attn(x), g["ln1_scale"], g["ln1_bias"])
        return ln(h + ffn(h), g["ln2_scale"], g["ln2_bias"])
    h = x + attn(ln(x, g["ln1_scale"], g["ln1_bias"]))
    return h + ffn(ln(h, g["ln2_scale"], g["ln2_bias"]))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_block_matches_the_layer_written_out(norm):
    """model.norm: both LayerNorm placements equal an independent numpy layer (random LN scales and biases, so
    swapping LN1/LN2 or normalising the wrong sum fails); a pre-LN stack ends with its final LayerNorm."""
    from m4mjax.layers import Block, Stack

    blk = Block(16, 2, 32, dropout=0.0, eps=1e-6, norm=norm, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    for name in ("ln1_scale", "ln1_bias", "ln2_scale", "ln2_bias"):
        getattr(blk, name)[...] = jnp.asarray(rng.normal(1.0 if "scale" in name else 0.0, 0.5, 16), jnp.float32)
    x = rng.normal(0, 2, (1, 5, 16))
    half = jnp.zeros((1, 5, 1, 4))
    y, _ = nnx.jit(lambda b, x, s, c: b(x, s, c, None))(blk, jnp.asarray(x, jnp.float32), half, half + 1)
    np.testing.assert_allclose(np.asarray(y[0]), _np_block(blk, x[0], norm), atol=2e-4, rtol=1e-4)
    stack = Stack(1, 16, 2, 32, dropout=0.0, eps=1e-6, norm=norm, rngs=nnx.Rngs(3))
    out, hiddens, _ = nnx.jit(lambda st, x, p: st(x, p, None))(stack, jnp.asarray(x, jnp.float32),
                                                                 jnp.zeros((1, 5), jnp.int32))
    assert hasattr(stack, "final_ln_scale") == (norm == "pre")
    if norm == "pre":  # unit variance per vector after the final LayerNorm (scale 1, bias 0 at init)
        np.testing.assert_allclose(np.asarray(out).std(-1), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="model.norm"):
        Block(16, 2, 32, norm="sandwich", rngs=nnx.Rngs(0))


def test_pre_norm_model_caches_match_full():
    """A pre-LN model: the global KV cache gives the full forward's outputs."""
    m = M4MTransformer(tiny_cfg(norm="pre"), rngs=nnx.Rngs(1))
    h = jax.random.normal(jax.random.key(0), (2, 6, 32))
    full, _, _ = nnx.jit(lambda m, h: m.global_decode(h))(m, h)
    cache = m.init_global_cache(2, 8)
    out1, _, cache = jglobal(m, h[:, :2], cache, 0)
    steps = [out1]
    for t in range(2, 6):
        o, _, cache = jglobal(m, h[:, t:t + 1], cache, t)
        steps.append(o)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=ATOL)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_last_layer_queries_equal_the_full_stack(norm):
    """Stack(last_queries=n) (what local_encode uses: only the SOS output becomes the frame vector) gives the
    full stack's first n outputs: the last layer's keys/values still come from every position (a key built
    from the query rows only, a mask or rotary table not sliced, or LoRA on the wrong rows would differ)."""
    from m4mjax.layers import Stack

    rng = np.random.default_rng(4)
    stack = Stack(2, 16, 2, 32, dropout=0.0, eps=1e-6, norm=norm, lora_rank=4, lora_alpha=8.0, rngs=nnx.Rngs(5))
    for blk in stack.blocks:  # LoRA nonzero on query and value
        blk.lora_b[...] = jnp.asarray(rng.normal(0, 0.3, blk.lora_b.shape), jnp.float32)
    x = jnp.asarray(rng.normal(0, 1, (3, 7, 16)), jnp.float32)
    pos = jnp.asarray(np.broadcast_to(np.arange(7), (3, 7)))
    mask = rng.random((3, 1, 7)) < 0.7
    mask[:, :, 0] = True  # a PAD-style key mask

    @nnx.jit
    def stacks(stack, x, pos, mask):  # one program: every stack run below (eager: one per primitive and shape)
        out = []
        for m in (mask, causal_mask(7)):
            full, hid_full, _ = stack(x, pos, m)
            out.append((full, hid_full, [stack(x, pos, m, last_queries=n)[:2] for n in (1, 3)]))
        return out

    for full, hid_full, parts in stacks(stack, x, pos, jnp.asarray(mask)):
        for n, (part, hid) in zip((1, 3), parts):
            assert part.shape == (3, n, 16)
            np.testing.assert_allclose(part, full[:, :n], atol=1e-5)
            np.testing.assert_allclose(hid[-1], hid_full[-1], atol=1e-6)  # the last layer's input is untouched
    # the model's frame vectors are the full local encoder's first position
    mdl = M4MTransformer(tiny_cfg(norm=norm, local_layers=2, local_pad_mask=True), rngs=nnx.Rngs(2))
    tk = tokens(3, cfg=mdl.cfg)
    B, F, L = tk.shape

    @nnx.jit
    def frames_both_ways(mdl, tk):
        frames, _ = mdl.local_encode(tk)
        ids = jnp.concatenate([jnp.full((B * F, 1), mdl.cfg.sos_id), tk.reshape(B * F, L)], 1)
        emb = jnp.take(mdl.embed[...], ids, axis=0)
        h, _, _ = mdl.local_encoder(emb, jnp.broadcast_to(jnp.arange(L + 1), (B * F, L + 1)),
                                    (ids != mdl.cfg.pad_id)[:, None, :])
        return frames, h[:, 0].reshape(B, F, -1)

    frames, want = frames_both_ways(mdl, tk)
    np.testing.assert_allclose(frames, want, atol=1e-5)
