"""SPS losses per variant and the seed-vmapped train step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m4mjax.run.mesh import make_mesh
from sps_fixtures import numpy_model
from symmetry.losses import sps_loss
from symmetry.model import SPSModel, audio_config, ball_config
from symmetry.step import init_state, make_train_step, select_seeds

F = 33  # tiny feature size: the audio nets with last_h = 1


def _terms(cfg, x):
    fn = lambda x: sps_loss(SPSModel(cfg, rngs=nnx.Rngs(0)), x, jnp.int32(0), jax.random.key(0), cfg)  # noqa: E731
    _, terms = jax.eval_shape(fn, x)
    return set(terms)


AUDIO_X = jax.ShapeDtypeStruct((2, 6, F, 5), jnp.float32)
BASE = {"self_x", "kl", "loss", "p_tf"}


@pytest.mark.parametrize("over,expected", [
    ({}, BASE | {"prior_x", "prior_z", "sym_z/translate", "sym_x/translate"}),
    ({"variant": "ae"}, BASE | {"prior_x", "prior_z", "sym_z/translate", "sym_x/translate"}),
    ({"K": 0}, BASE | {"prior_x", "prior_z"}),
    ({"prior": False}, BASE),
])
def test_audio_variant_terms(over, expected):
    assert _terms(audio_config(freq_bins=F, **over), AUDIO_X) == expected


def test_ball_terms_two_paths_with_srs():
    got = _terms(ball_config(), jax.ShapeDtypeStruct((2, 6, 32, 32, 3), jnp.float32))
    assert got == BASE | {"prior_x", "prior_z"} | {f"{t}/{g}" for t in ("sym_z", "sym_x", "srs")
                                                   for g in ("translate", "rotate_y")}


def test_loss_values_ae_kl_zero_and_weights():
    x = jax.random.uniform(jax.random.key(0), (2, 5, F, 5))
    cfg = audio_config(freq_bins=F, variant="ae", K=2)
    graphdef, params = nnx.split(numpy_model(cfg))
    loss = jax.jit(lambda p, key: sps_loss(nnx.merge(graphdef, p), x, jnp.int32(0), key, cfg))  # one program, 2 keys
    total, t = loss(params, jax.random.key(1))
    assert float(t["kl"]) == 0.0
    parts = sum(float(v) for k, v in t.items() if k not in ("loss", "p_tf"))
    assert float(total) == pytest.approx(parts, rel=1e-5)
    # AE is deterministic except for group/mask draws: the self-recon term ignores the key
    _, t2 = loss(params, jax.random.key(2))
    assert float(t2["self_x"]) == pytest.approx(float(t["self_x"]), rel=1e-6)


@pytest.mark.integration  # trains several steps
def test_seed_axis_equals_independent_seeds_and_loss_decreases():
    cfg = audio_config(freq_bins=F, batch_size=3, K=2)
    data = jax.random.uniform(jax.random.key(1), (4, 6, F, 5))
    # one fake device per seed: the seed axis is sharded (2 seeds on all 8 fake devices would replicate it, shard
    # each seed's parameters 8 ways over the machine's cores, step ~7x slower and compile the lone-seed step twice)
    mesh = make_mesh(dict(data=1, fsdp=2, tensor=1))
    both = init_state(cfg, 2, jax.random.key(0), mesh)
    assert both.params["decoder"]["mlp"][4]["kernel"][...].sharding.spec[0] in (("data", "fsdp"), "fsdp")
    singles = [select_seeds(both, slice(i, i + 1)) for i in range(2)]
    assert int(singles[1].seed_ids[0]) == 1
    step2, step1 = make_train_step(cfg, both), make_train_step(cfg)
    losses = []
    for it in range(6):
        key = jax.random.fold_in(jax.random.key(7), it)
        both, m2 = step2(both, data, it, key)
        if it < 2:
            for i in range(2):
                singles[i], m1 = step1(singles[i], data, it, key)
                np.testing.assert_allclose(m1["loss"][0], m2["loss"][i], rtol=1e-5)
        if it == 1:  # parameters after two steps: seed i of the stack == the lone seed i
            for i in range(2):
                for a, b in zip(jax.tree.leaves(singles[i].params), jax.tree.leaves(both.params)):
                    a, b = np.asarray(a), np.asarray(b)  # index in numpy: no eager XLA slice program per leaf shape
                    np.testing.assert_allclose(a[0], b[i], rtol=2e-4, atol=2e-6)
        losses.append(np.asarray(m2["loss"]))
    assert (losses[-1] < losses[0]).all(), losses
    assert losses[0][0] != losses[0][1]  # seeds are independent


def test_seed_axis_is_sharded_when_divisible():
    mesh = make_mesh(dict(data=1, fsdp=-1, tensor=1))
    state = init_state(audio_config(freq_bins=F, rnn_hidden=8), 8, jax.random.key(0), mesh)
    leaf = state.params["decoder"]["mlp"][4]["kernel"][...]
    assert leaf.shape[0] == 8 and leaf.sharding.spec[0] in (("data", "fsdp"), "fsdp")
