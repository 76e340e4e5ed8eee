"""Symmetry groups: inverses, what they act on, and the equivariance the symmetry loss assumes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symmetry.groups import make_group

NAMES = ["translate", "rotate_y", "T1", "T2", "T3", "R2", "R3", "T1R2", "T3R2", "T2R3"]


@pytest.mark.parametrize("name", NAMES)
def test_apply_inverse_is_identity(name):
    g = make_group(name, 3, translate_dims=(0, 2), t_range=1.0)
    z = jax.random.normal(jax.random.key(0), (5, 7, 3))
    p = g.sample(jax.random.key(1), 5)
    np.testing.assert_allclose(g.inverse(p, g.apply(p, z)), z, atol=1e-5)
    np.testing.assert_allclose(g.apply(p, g.inverse(p, z)), z, atol=1e-5)


def test_translation_acts_on_chosen_dims_same_over_time():
    g = make_group("translate", 3, translate_dims=(0, 2), t_range=1.0)
    p = g.sample(jax.random.key(0), 1000)
    assert float(jnp.abs(p).max()) <= 1.0 and float(jnp.abs(p[:, 1]).max()) == 0.0
    z = jnp.zeros((1000, 4, 3))
    d = g.apply(p, z)
    np.testing.assert_allclose(d, jnp.broadcast_to(p[:, None], d.shape))
    audio = make_group("translate", 1, translate_dims=(0,), t_range=4.0).sample(jax.random.key(0), 4000)
    assert -4.0 <= float(audio.min()) < -3.9 and 3.9 < float(audio.max()) <= 4.0


def test_rotation_keeps_height_and_norm():
    g = make_group("rotate_y", 3)
    z = jax.random.normal(jax.random.key(0), (6, 5, 3))
    r = g.apply(g.sample(jax.random.key(1), 6), z)
    np.testing.assert_allclose(r[..., 1], z[..., 1])
    np.testing.assert_allclose(jnp.linalg.norm(r, axis=-1), jnp.linalg.norm(z, axis=-1), rtol=1e-5)


def _linear_extrapolation(z):
    """Equivariant prior (translations and rotations): z_{t+1} = 2 z_t - z_{t-1}."""
    return 2 * z[:, 1:-1] - z[:, :-2]


def _shrink(z):
    """Non-equivariant prior: z_{t+1} = 0.5 z_t + 1."""
    return 0.5 * z[:, 1:-1] + 1.0


@pytest.mark.parametrize("name", ["translate", "rotate_y", "T1R2"])
def test_equivariant_prior_has_zero_symmetry_loss(name):
    g = make_group(name, 3, translate_dims=(0, 2), t_range=1.0)
    z = jax.random.normal(jax.random.key(0), (8, 6, 3))
    p = g.sample(jax.random.key(1), 8)
    for prior, zero in ((_linear_extrapolation, True), (_shrink, False)):
        z_tilde = g.inverse(p, prior(g.apply(p, z)))
        loss = float(jnp.sum((z_tilde - prior(z)) ** 2))
        assert (loss < 1e-8) == zero, (prior.__name__, loss)


def test_bad_group_names():
    with pytest.raises(ValueError, match="unknown group"):
        make_group("scale", 3)
    with pytest.raises(ValueError, match="prior latent dims"):
        make_group("T3", 1)
