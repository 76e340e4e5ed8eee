"""``model.head_capacity``: the vocabulary head and cross-entropy computed only on real (non-PAD) token slots
must give the dense head's loss, metrics and gradients, for the LM and the linked (analysis) loss, with class
weights, and when a row holds more real slots than the capacity (the dense fallback)."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4mjax import linked
from m4mjax.model import M4MTransformer, loss_fn, model_config, sparse_head_loss

PAD = 3330


def _np_loss(logits, targets, weights, pad):
    """Weighted token cross-entropy ignoring PAD, written out in numpy (the definition, independently)."""
    logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    t = np.asarray(targets).reshape(-1)
    w = (t != pad) * (1.0 if weights is None else np.asarray(weights).reshape(-1))
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    ce = -logp[np.arange(len(t)), np.minimum(t, logits.shape[-1] - 1)]
    return (ce * w).sum() / max(w.sum(), 1.0), w.sum()


def _rows(rng, B, F, L, fill, pad=PAD):
    """Targets with ``fill`` real slots per row on average: each frame k tokens then PAD."""
    t = np.full((B, F, L), pad, np.int32)
    for b in range(B):
        for f in range(F):
            k = rng.binomial(L, fill)
            t[b, f, :k] = rng.integers(0, 40, k)
    return t


def test_sparse_head_loss_equals_dense_and_its_definition():
    rng = np.random.default_rng(0)
    B, F, L, E, V = 3, 5, 7, 6, 50
    pad = V - 1  # in the vocabulary, as the model's PAD
    W = jnp.asarray(rng.normal(size=(E, V)), jnp.float32)
    h = jnp.asarray(rng.normal(size=(B, F, L, E)), jnp.float32)
    head = lambda x: x @ W

    def both(h, t, w, cap_sparse):  # (loss, aux, d loss / d h) at the capacity and with the dense head
        out = []
        for cap in (cap_sparse, 1.0):
            f = lambda h: sparse_head_loss(head, h, t, pad, w, cap)
            (value, aux), g = jax.value_and_grad(f, has_aux=True)(h)
            out.append((value, aux, g))
        return out

    for fill, cap in ((0.2, 0.5), (0.9, 0.3)):  # second: rows fuller than the capacity -> dense fallback
        t = jnp.asarray(_rows(rng, B, F, L, fill, pad))
        w = jnp.asarray(rng.uniform(0.5, 3.0, (B, F, L)), jnp.float32)
        for weights in (None, w):
            (got, aux, g_sparse), (_, _, g_dense) = jax.jit(both, static_argnums=3)(h, t, weights, cap)
            want, n = _np_loss(h @ W, t, weights, pad)
            np.testing.assert_allclose(float(got), want, rtol=1e-5)
            np.testing.assert_allclose(float(aux["tokens"]), n, rtol=1e-6)
            # gradients with respect to the hidden states: zero on PAD slots, the dense ones elsewhere
            np.testing.assert_allclose(np.asarray(g_sparse), np.asarray(g_dense), atol=1e-6)
            assert np.all(np.asarray(g_sparse)[np.asarray(t) == pad] == 0)


def _tiny(**kw):
    """One layer per stack: the head's capacity cannot interact with depth (smaller programs to compile)."""
    cfg = model_config(0)
    cfg.update(width=32, layers=1, heads=2, ffn=64, local_layers=1, local_heads=2, local_ffn=32,
               max_frame_tokens=9, dropout=0.0, **kw)
    return cfg


@nnx.jit(static_argnums=1)
def _value_and_grad(model, f):
    return nnx.value_and_grad(f, has_aux=True)(model)


def _grads_and_loss(model, f):
    (value, aux), g = _value_and_grad(model, f)
    return float(value), aux, jax.tree.leaves(nnx.state(g, nnx.Param))


def test_lm_and_linked_losses_do_not_depend_on_head_capacity():
    rng = np.random.default_rng(1)
    tok = jnp.asarray(_rows(rng, 2, 6, 9, 0.25))
    ref = jnp.asarray(_rows(rng, 2, 6, 9, 0.4))
    link = linked.link_config("fa_self")
    link.update(lora_rank=2, lora_alpha=4.0, mask_prob=0.0, train="full")
    link.loss_weights.update(chord=3.0, open=2.0)
    out = {}
    for cap in (0.0, 0.4):
        lm = M4MTransformer(_tiny(head_capacity=cap), rngs=nnx.Rngs(0))
        lk = linked.make(_tiny(head_capacity=cap), link, rngs=nnx.Rngs(0))
        key = jax.random.key(3)  # a key: training path (class weights on)
        out[cap] = (_grads_and_loss(lm, lambda m: loss_fn(m, tok, key)),
                    _grads_and_loss(lk, lambda m: linked.loss_fn(m, {"reference": ref, "target": tok}, key)))
    for (v0, a0, g0), (v1, a1, g1) in zip(out[0.0], out[0.4]):
        np.testing.assert_allclose(v1, v0, rtol=1e-5)
        np.testing.assert_allclose(float(a1["accuracy"]), float(a0["accuracy"]), atol=1e-6)
        assert float(a1["tokens"]) == float(a0["tokens"])
        for x, y in zip(g1, g0):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5, rtol=1e-4)
