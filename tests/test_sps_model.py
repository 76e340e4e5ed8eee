"""SPS networks: shapes, parameter counts, conv layers vs the torch definitions, prior rollout, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from symmetry.losses import reparameterize, teacher_forcing_mask, teacher_forcing_prob
from sps_fixtures import numpy_model
from symmetry.layers import Conv1D, ConvTranspose1D, conv2d_k4s2, conv_transpose2d_k4s2
from symmetry.model import Prior, SPSConfig, SPSModel, audio_config, ball_config, count_params


def _abstract_counts(cfg):
    m = nnx.eval_shape(lambda: SPSModel(cfg, rngs=nnx.Rngs(0)))
    return count_params(m.encoder), count_params(m.decoder), count_params(m.prior)


def test_param_counts_match_spec():
    assert _abstract_counts(audio_config()) == (137_154, 2_513_057, 66_561)   # spec §4.2
    assert _abstract_counts(ball_config()) == (683_462, 927_587, 67_587)      # spec §4.1


# Shapes are decided when the model is traced: jax.eval_shape runs the same Python (construction, encode, decode)
# on abstract arrays, so a wrong shape or a shape error shows here without compiling anything (at -O0 the
# eager initialisers and forward passes took 10-25 s per model).
def _abstract_shapes(cfg, x_shape):
    def run(x):
        m = SPSModel(cfg, rngs=nnx.Rngs(0))
        mu, logvar = m.encode(x)
        return mu, logvar, m.decode(mu)
    return [a.shape for a in jax.eval_shape(run, jax.ShapeDtypeStruct(x_shape, jnp.float32))]


@pytest.mark.parametrize("freq", [33, 64])
def test_audio_shapes_any_freq(freq):
    mu, logvar, y = _abstract_shapes(audio_config(freq_bins=freq, latent_dim=3), (2, 4, freq, 5))
    assert mu == logvar == (2, 4, 3)
    assert y == (2, 4, freq, 5)


def test_ball_shapes():
    mu, _, y = _abstract_shapes(ball_config(), (2, 3, 32, 32, 3))
    assert mu == (2, 3, 3) and y == (2, 3, 32, 32, 3)


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
    apply = jax.jit(lambda graphdef, state, x: nnx.merge(graphdef, state)(x), static_argnums=0)  # 1 program, not 1/op
    conv = Conv1D(3, 4, k, s, p, impl, rngs=nnx.Rngs(0))
    conv.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    ref = _torch_conv(x, np.asarray(conv.kernel[...]), np.asarray(conv.bias[...]), s, p)
    np.testing.assert_allclose(apply(*nnx.split(conv), jnp.asarray(x)), ref, rtol=1e-4, atol=1e-4)
    convt = ConvTranspose1D(3, 4, k, s, p, impl, rngs=nnx.Rngs(1))
    convt.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    ref = _torch_conv_t(x, np.asarray(convt.kernel[...]), np.asarray(convt.bias[...]), s, p)
    np.testing.assert_allclose(apply(*nnx.split(convt), jnp.asarray(x)), ref, rtol=1e-4, atol=1e-4)


def test_conv_impls_agree_on_full_model():
    """Same parameters (numpy-drawn, non-zero biases), both conv implementations: the same mu and logits."""
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 3, 65, 5)), jnp.float32)
    graphdef, params = nnx.split(numpy_model(audio_config(freq_bins=65, conv_impl="matmul")))
    lax_graphdef, lax_params = nnx.split(nnx.eval_shape(lambda: SPSModel(audio_config(freq_bins=65, conv_impl="lax"),
                                                                         rngs=nnx.Rngs(0))))
    assert jax.tree.structure(lax_params) == jax.tree.structure(params)
    assert jax.tree.map(jnp.shape, lax_params) == jax.tree.map(jnp.shape, params)

    @jax.jit  # one program for both implementations
    def both(params, x):
        outs = []
        for g in (graphdef, lax_graphdef):
            m = nnx.merge(g, params)
            mu, _ = m.encode(x)
            outs.append((mu, m.decode(mu)))
        return outs

    assert [nnx.merge(g, params).encoder.convs[0].impl for g in (graphdef, lax_graphdef)] == ["matmul", "lax"]
    outs = both(params, x)
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-4)


def _np_conv2d(xp, k, stride):
    """Cross-correlation of an already padded x [N, H, W, I] with k [kh, kw, I, O] (no kernel flip)."""
    kh, kw = k.shape[:2]
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((xp.shape[0], ho, wo, k.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            y[:, i, j] = np.einsum("nuvc,uvco->no", xp[:, i * stride: i * stride + kh, j * stride: j * stride + kw], k)
    return y


def test_ball_conv_matmul_forms_match_the_flax_definitions():
    """conv2d_k4s2 = nnx.Conv(4x4, stride 2, padding 1); conv_transpose2d_k4s2 = nnx.ConvTranspose(4x4, stride 2,
    padding 2), i.e. a correlation over the input dilated by 2 (zeros between rows / columns) and padded by 2, kernel
    as stored. References in numpy, written from those definitions (an odd size and odd channel counts)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 3))
    k = rng.normal(size=(4, 4, 3, 5))
    ref = _np_conv2d(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k, 2)
    np.testing.assert_allclose(conv2d_k4s2(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)), ref,
                               rtol=1e-4, atol=1e-4)
    d = np.zeros((2, 11, 11, 3))
    d[:, ::2, ::2] = x
    ref = _np_conv2d(np.pad(d, ((0, 0), (2, 2), (2, 2), (0, 0))), k, 1)
    assert ref.shape == (2, 12, 12, 5)
    np.testing.assert_allclose(conv_transpose2d_k4s2(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)), ref,
                               rtol=1e-4, atol=1e-4)


def test_ball_conv_impls_agree_on_full_model_and_its_gradient():
    """Same parameters, conv_impl matmul vs lax (nnx.Conv / nnx.ConvTranspose): the same mu, logits and gradients."""
    cfg = ball_config(ball_channels=(4, 8, 8))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 3, 32, 32, 3)), jnp.float32)
    graphdef, params = nnx.split(numpy_model(cfg))
    lax_graphdef, lax_params = nnx.split(nnx.eval_shape(lambda: SPSModel(ball_config(ball_channels=(4, 8, 8),
                                                                                     conv_impl="lax"), rngs=nnx.Rngs(0))))
    assert jax.tree.map(jnp.shape, lax_params) == jax.tree.map(jnp.shape, params)

    @jax.jit
    def both(params, x):
        def loss(p, g):
            m = nnx.merge(g, p)
            mu, _ = m.encode(x)
            return jnp.sum(jnp.sin(m.decode(mu))), mu
        return [jax.value_and_grad(loss, has_aux=True)(params, g) for g in (graphdef, lax_graphdef)]

    assert [nnx.merge(g, params).decoder.impl for g in (graphdef, lax_graphdef)] == ["matmul", "lax"]
    (la, mua), ga = both(params, x)[0]
    (lb, mub), gb = both(params, x)[1]
    np.testing.assert_allclose(mua, mub, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(la, lb, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("rnn_type,layers", [("rnn", 1), ("gru", 2)])
def test_rollout_matches_python_loop(rnn_type, layers):
    cfg = audio_config(rnn_type=rnn_type, rnn_layers=layers, rnn_hidden=8)
    graphdef, state = nnx.split(numpy_model(cfg, module=Prior))  # SPSModel's .prior, without encoder and decoder
    mask = [True, True, False, True, False, False]

    @jax.jit  # one program instead of one per eager op
    def rollout_and_loop(state, z):
        prior = nnx.merge(graphdef, state)
        out = prior.rollout(z, jnp.broadcast_to(jnp.array(mask)[:, None], (6, 3)))
        hs, prev, ref = [jnp.zeros((3, 8))] * layers, None, []
        for t in range(6):
            x = z[:, t] if mask[t] else prev
            for i, layer in enumerate(prior.layers):
                hs[i] = x = layer(hs[i], x)
            prev = prior.readout(x)
            ref.append(prev)
        return out, jnp.stack(ref[:-1], 1)

    out, ref = rollout_and_loop(state, jax.random.normal(jax.random.key(1), (3, 6, 1)))
    assert out.shape == (3, 5, 1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_teacher_forcing_prob_matches_spec_table():
    got = [float(teacher_forcing_prob(i, 2200.0, 8000.0)) for i in (0, 8000, 15000)]
    np.testing.assert_allclose(got, [0.983, 0.604, 0.060], atol=2e-3)
    assert float(teacher_forcing_prob(10_000, 2200.0, 6000.0)) == pytest.approx(0.604, abs=2e-3)


def test_teacher_forcing_mask():
    cfg = audio_config(base_len=3)
    keys = jax.random.split(jax.random.key(0), 2000)
    masks = jax.jit(jax.vmap(lambda k, it: teacher_forcing_mask(k, it, 15, cfg), in_axes=(0, None)))  # 1 program
    late = masks(keys, 8000)
    assert late.shape == (2000, 15) and bool(late[:, :3].all())
    assert float(late[:, 3:].mean()) == pytest.approx(0.604, abs=0.02)
    never = masks(keys, 10**6)
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


def _layer(m, path: str):
    """'decoder.convs.3' -> m.decoder.convs[3]."""
    for p in path.split("."):
        m = m[int(p)] if p.isdigit() else getattr(m, p)
    return m


@pytest.mark.parametrize("make", [audio_config, ball_config])
def test_torch_init_is_uniform_in_fan_in_bounds(make):
    """init='torch': every kernel and bias ~ U(+-1/sqrt(fan_in)) with torch's fan_in (ConvTranspose: cout*k*w)."""
    if make is audio_config:
        fan_ins = {"encoder.convs.0": 5 * 5, "encoder.convs.1": 64 * 8, "decoder.convs.0": 128 * 4,
                   "decoder.convs.3": 1 * 5 * 5, "decoder.mlp.4": 1024, "prior.readout": 256}
    else:
        fan_ins = {"encoder.convs.0": 3 * 16, "decoder.convs.0": 128 * 16, "decoder.convs.2": 3 * 16,
                   "decoder.mlp.0": 3}

    # Built (initialised) inside jit, only the checked layers leave it: XLA drops the other initialisers (each a
    # random program of ~0.5 s to compile at -O0), not the values these layers get.
    def checked():
        m = SPSModel(make(init="torch"), rngs=nnx.Rngs(0))
        return {path: {name: getattr(_layer(m, path), name)[...] for name in ("kernel", "bias")} for path in fan_ins}

    values = jax.jit(checked)()
    for path, fan_in in fan_ins.items():
        bound = 1.0 / np.sqrt(fan_in)
        for name, v in values[path].items():
            v = np.asarray(v)
            assert np.abs(v).max() <= bound + 1e-7, (path, name)
            if v.size >= 64:   # uniform, not a point mass or a narrower law
                assert np.abs(v).max() > 0.9 * bound and abs(v.std() - bound / np.sqrt(3)) < 0.2 * bound, (path, name)
    flax_default = jax.jit(lambda: SPSModel(make(), rngs=nnx.Rngs(0)).decoder.mlp[0].bias[...])()
    assert float(np.abs(np.asarray(flax_default)).max()) == 0.0   # flax: zero biases
