"""Per-class loss weights of label rows (``link.loss_weights``, issue 23): which token weighs what, by hand."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from m4mjax import linked
from m4mjax import tokenizer as tok
from m4mjax.model import lm_loss

W = dict(open=5.0, chord=3.0, beat=0.5, eos=0.25)


def test_each_token_of_a_label_row_gets_its_class_weight():
    d = lambda p, c: p + (c + 1) * 128  # noqa: E731  pitch-duration token
    # frame 0: C major row then a downbeat and an eighth marker, EOS; frame 1: beats only; frame 2: empty (EOS)
    rows = [[0, d(36, 7), 0, d(48, 7), 0, d(52, 7), 0, d(55, 7), tok.DRUM, d(35, 0), tok.DRUM, d(42, 0), tok.EOS],
            [tok.DRUM, d(42, 0), tok.EOS],
            [tok.EOS]]
    L = 15
    targets = np.full((3, L), tok.PAD, np.int32)
    for i, r in enumerate(rows):
        targets[i, :len(r)] = r
    want = np.ones((3, L), np.float32)
    want[0, :13] = [5, 3, 3, 3, 3, 3, 3, 3, .5, .5, .5, .5, .25]  # first token = 'open' whatever it is
    want[1, :3] = [5, .5, .25]
    want[2, :1] = [5]
    # PAD slots keep 1 (lm_loss ignores them anyway): their pair's "instrument" is PAD or EOS, neither class
    got = np.asarray(linked.label_token_weights(jnp.asarray(targets), W, eos=tok.EOS))
    np.testing.assert_array_equal(got, want)


def test_weighted_loss_is_the_weighted_mean_of_token_cross_entropies():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(1, 2, 4, 6)), jnp.float32)
    targets = jnp.asarray([[[1, 2, 5, 5], [3, 0, 4, 5]]])  # 5 = PAD
    w = jnp.asarray([[[2.0, 1.0, 9.0, 9.0], [0.5, 1.0, 3.0, 9.0]]])
    lp = np.asarray(jax_log_softmax(logits))
    ce = -np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]
    keep = np.asarray(targets) != 5
    want = (ce * np.asarray(w) * keep).sum() / (np.asarray(w) * keep).sum()
    got, aux = lm_loss(logits, targets, 5, w)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def jax_log_softmax(x):
    import jax

    return jax.nn.log_softmax(x, -1)
