"""SPS networks: shapes, parameter counts, conv layers vs the torch definitions, prior rollout, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symmetry.losses import reparameterize, teacher_forcing_mask, teacher_forcing_prob
from symmetry.model import (Conv1D, ConvTranspose1D, SPSConfig, SPSModel, audio_config, ball_config,
                            count_params)


def _abstract_counts(cfg):
    m = nnx.eval_shape(lambda: SPSModel(cfg, rngs=nnx.Rngs(0)))
    return count_params(m.encoder), count_params(m.decoder), count_params(m.prior)


def test_param_counts_match_spec():
    assert _abstract_counts(audio_config()) == (137_154, 2_513_057, 66_561)   # spec §4.2
    assert _abstract_counts(ball_config()) == (683_462, 927_587, 67_587)      # spec §4.1


@pytest.mark.parametrize("freq", [33, 64])
def test_audio_shapes_any_freq(freq):
    m = SPSModel(audio_config(freq_bins=freq, latent_dim=3), rngs=nnx.Rngs(0))
    mu, logvar = m.encode(jnp.zeros((2, 4, freq, 5)))
    assert mu.shape == logvar.shape == (2, 4, 3)
    assert m.decode(mu).shape == (2, 4, freq, 5)


def test_ball_shapes():
    m = SPSModel(ball_config(), rngs=nnx.Rngs(0))
    mu, _ = m.encode(jnp.zeros((2, 3, 32, 32, 3)))
    assert mu.shape == (2, 3, 3) and m.decode(mu).shape == (2, 3, 32, 32, 3)


def _torch_conv(x, w, b, s, p):
    """Reference: torch Conv1d semantics, x [N, L, Cin], w [k, Cin, Cout]."""
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (p, p), (0, 0)))
    lout = (xp.shape[1] - k) // s + 1
    return np.stack([np.einsum("nkc,kco->no", xp[:, i * s: i * s + k], w) for i in range(lout)], 1) + b


def _torch_conv_t(x, w, b, s, p):
    """Reference: torch ConvTranspose1d semantics, out[i*s - p + j] += x[i] @ w[j]."""
    n, length, _ = x.shape
    k = w.shape[0]
    full = np.zeros((n, (length - 1) * s + k, w.shape[-1]))
    for i in range(length):
        for j in range(k):
            full[:, i * s + j] += x[:, i] @ w[j]
    return full[:, p: full.shape[1] - p] + b


@pytest.mark.parametrize("k,s,p", [(5, 2, 1), (8, 4, 2), (4, 2, 1)])
@pytest.mark.parametrize("impl", ["matmul", "lax"])
def test_conv_layers_match_torch_definition(k, s, p, impl):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 17, 3)).astype(np.float32)
    conv = Conv1D(3, 4, k, s, p, impl, rngs=nnx.Rngs(0))
    conv.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    ref = _torch_conv(x, np.asarray(conv.kernel[...]), np.asarray(conv.bias[...]), s, p)
    np.testing.assert_allclose(conv(jnp.asarray(x)), ref, rtol=1e-4, atol=1e-4)
    convt = ConvTranspose1D(3, 4, k, s, p, impl, rngs=nnx.Rngs(1))
    convt.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    ref = _torch_conv_t(x, np.asarray(convt.kernel[...]), np.asarray(convt.bias[...]), s, p)
    np.testing.assert_allclose(convt(jnp.asarray(x)), ref, rtol=1e-4, atol=1e-4)


def test_conv_impls_agree_on_full_model():
    x = jax.random.uniform(jax.random.key(0), (2, 3, 65, 5))
    outs = []
    for impl in ("matmul", "lax"):
        m = SPSModel(audio_config(freq_bins=65, conv_impl=impl), rngs=nnx.Rngs(0))
        mu, _ = m.encode(x)
        outs.append((mu, m.decode(mu)))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rnn_type,layers", [("rnn", 1), ("gru", 2)])
def test_rollout_matches_python_loop(rnn_type, layers):
    cfg = audio_config(rnn_type=rnn_type, rnn_layers=layers, rnn_hidden=8)
    prior = SPSModel(cfg, rngs=nnx.Rngs(0)).prior
    z = jax.random.normal(jax.random.key(1), (3, 6, 1))
    mask = jnp.array([True, True, False, True, False, False])
    out = prior.rollout(z, jnp.broadcast_to(mask[:, None], (6, 3)))
    hs, prev, ref = [jnp.zeros((3, 8))] * layers, None, []
    for t in range(6):
        x = z[:, t] if mask[t] else prev
        for i, layer in enumerate(prior.layers):
            hs[i] = x = layer(hs[i], x)
        prev = prior.readout(x)
        ref.append(prev)
    assert out.shape == (3, 5, 1)
    np.testing.assert_allclose(out, jnp.stack(ref[:-1], 1), rtol=1e-5, atol=1e-6)


def test_teacher_forcing_prob_matches_spec_table():
    got = [float(teacher_forcing_prob(i, 2200.0, 8000.0)) for i in (0, 8000, 15000)]
    np.testing.assert_allclose(got, [0.983, 0.604, 0.060], atol=2e-3)
    assert float(teacher_forcing_prob(10_000, 2200.0, 6000.0)) == pytest.approx(0.604, abs=2e-3)


def test_teacher_forcing_mask():
    cfg = audio_config(base_len=3)
    keys = jax.random.split(jax.random.key(0), 2000)
    late = jax.vmap(lambda k: teacher_forcing_mask(k, 8000, 15, cfg))(keys)
    assert late.shape == (2000, 15) and bool(late[:, :3].all())
    assert float(late[:, 3:].mean()) == pytest.approx(0.604, abs=0.02)
    never = jax.vmap(lambda k: teacher_forcing_mask(k, 10**6, 15, cfg))(keys)
    assert not bool(never[:, 3:].any())
    off = teacher_forcing_mask(keys[0], 10**6, 15, SPSConfig(scheduled_sampling=False))
    assert bool(off.all())


def test_reparam_switch():
    mu, logvar = jnp.zeros((10000,)), jnp.full((10000,), np.log(4.0))
    official = reparameterize(jax.random.key(0), mu, logvar, "official")
    standard = reparameterize(jax.random.key(0), mu, logvar, "standard")
    assert float(jnp.std(official)) == pytest.approx(2.0, rel=0.05)   # 0.5 * exp(logvar) = 2
    np.testing.assert_allclose(official, standard, rtol=1e-5)   # var 4: both scales are 2
    logvar = jnp.zeros((10000,))
    assert float(jnp.std(reparameterize(jax.random.key(0), mu, logvar, "official"))) == pytest.approx(0.5, rel=0.05)
    assert float(jnp.std(reparameterize(jax.random.key(0), mu, logvar, "standard"))) == pytest.approx(1.0, rel=0.05)


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown key"):
        SPSConfig.from_mapping({"kk": 4})
    with pytest.raises(ValueError, match="reparam"):
        audio_config(reparam="weird")


@pytest.mark.parametrize("make", [audio_config, ball_config])
def test_torch_init_is_uniform_in_fan_in_bounds(make):
    """init='torch': every kernel and bias ~ U(+-1/sqrt(fan_in)) with torch's fan_in (ConvTranspose: cout*k*w)."""
    m = SPSModel(make(init="torch"), rngs=nnx.Rngs(0))
    if make is audio_config:
        fan_ins = {m.encoder.convs[0]: 5 * 5, m.encoder.convs[1]: 64 * 8, m.decoder.convs[0]: 128 * 4,
                   m.decoder.convs[3]: 1 * 5 * 5, m.decoder.mlp[4]: 1024, m.prior.readout: 256}
    else:
        fan_ins = {m.encoder.convs[0]: 3 * 16, m.decoder.convs[0]: 128 * 16, m.decoder.convs[2]: 3 * 16,
                   m.decoder.mlp[0]: 3}
    for layer, fan_in in fan_ins.items():
        bound = 1.0 / np.sqrt(fan_in)
        for name in ("kernel", "bias"):
            v = np.asarray(getattr(layer, name)[...])
            assert np.abs(v).max() <= bound + 1e-7, (layer, name)
            if v.size >= 64:   # uniform, not a point mass or a narrower law
                assert np.abs(v).max() > 0.9 * bound and abs(v.std() - bound / np.sqrt(3)) < 0.2 * bound, (layer, name)
    flax_default = SPSModel(make(), rngs=nnx.Rngs(0))
    assert float(np.abs(np.asarray(flax_default.decoder.mlp[0].bias[...])).max()) == 0.0   # flax: zero biases
