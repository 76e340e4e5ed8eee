"""KV-cache sampling: determinism, EOS/PAD layout, batching, and agreement with full forward passes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4mjax.model import M4MTransformer, model_config
from m4mjax.sample import generate, sample_logits


def tiny_cfg():
    cfg = model_config(0)
    cfg.update(width=32, layers=2, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=32, max_frame_tokens=7)
    return cfg


@pytest.fixture(scope="module")
def model():
    return M4MTransformer(tiny_cfg(), rngs=nnx.Rngs(0))


def prompts(cfg, B=3, F0=4, seed=0):
    rng = np.random.default_rng(seed)
    out = np.full((B, F0, cfg.max_frame_tokens), cfg.pad_id, np.int32)
    for b in range(B):
        for f in range(F0):
            k = rng.integers(0, 4)
            out[b, f, :2 * k] = rng.integers(0, 3328, 2 * k)
            out[b, f, 2 * k] = cfg.eos_id
    return jnp.asarray(out)


def check_layout(rows, cfg):
    for row in np.asarray(rows).reshape(-1, cfg.max_frame_tokens):
        eos = np.flatnonzero(row == cfg.eos_id)
        assert len(eos) == 1, row
        assert (row[eos[0] + 1:] == cfg.pad_id).all(), row
        assert (row[:eos[0]] < cfg.sos_id).all(), row  # only normal tokens before EOS


def test_generate_deterministic_layout_and_prompt_kept(model):
    cfg = model.cfg
    p = prompts(cfg)
    a = generate(model, p, 5, jax.random.key(0))
    b = generate(model, p, 5, jax.random.key(0))
    c = generate(model, p, 5, jax.random.key(1))
    assert a.shape == (3, 9, cfg.max_frame_tokens)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    np.testing.assert_array_equal(a[:, :4], p)
    check_layout(a[:, 4:], cfg)
    check_layout(generate(model, p, 2, jax.random.key(2), temperature=1.5, top_p=0.9)[:, 4:], cfg)


def test_greedy_matches_full_forward_and_single_prompts(model):
    """Cached greedy decoding == argmax of teacher-forced full passes; a batch == its prompts one by one."""
    cfg = model.cfg
    p = prompts(cfg, seed=1)
    n, L = 2, cfg.max_frame_tokens
    out = np.asarray(generate(model, p, n, jax.random.key(0), temperature=0.0))
    fwd = nnx.jit(lambda m, t: m(t))
    buf = np.concatenate([np.asarray(p), np.full((3, n, L), cfg.pad_id, np.int32)], 1)
    done = np.zeros(3, bool)
    for f in range(4, 4 + n):
        done[:] = False
        for i in range(L):
            logits = np.array(fwd(model, jnp.asarray(buf))[:, f, i])
            logits[:, [cfg.sos_id, cfg.pad_id]] = -np.inf
            tok = np.where(i == L - 1, cfg.eos_id, logits.argmax(-1))
            tok = np.where(done, cfg.pad_id, tok)
            buf[:, f, i] = tok
            done |= tok == cfg.eos_id
    np.testing.assert_array_equal(out, buf)
    for b in range(3):
        single = generate(model, p[b:b + 1], n, jax.random.key(0), temperature=0.0)
        np.testing.assert_array_equal(single[0], out[b])


def test_empty_prompt_and_bad_input(model):
    cfg = model.cfg
    out = generate(model, jnp.zeros((2, 0, cfg.max_frame_tokens), jnp.int32), 2, jax.random.key(0))
    assert out.shape == (2, 2, cfg.max_frame_tokens)
    check_layout(out, cfg)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, jnp.zeros((2, 3, 5), jnp.int32), 2, jax.random.key(0))


def test_top_p_keeps_only_the_nucleus():
    logits = jnp.log(jnp.array([[0.6, 0.3, 0.05, 0.05]]))
    draws = jax.vmap(lambda k: sample_logits(logits, k, jnp.float32(1.0), jnp.float32(0.8)))(
        jax.random.split(jax.random.key(0), 200))
    assert set(np.unique(draws)) == {0, 1}
    greedy = sample_logits(logits, jax.random.key(0), jnp.float32(0.0), jnp.float32(1.0))
    assert int(greedy[0]) == 0
