"""Issue 22's training recipe for the ball video (switches; all off = the paper): the decoder output offset
(logit of the mean training frame; 'fixed' or 'learnable'), the z-space loss ramp, and sps_video.py:cpu_recipe.
Expected numbers are computed here by hand / numpy, not through the code under test."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sps_fixtures import numpy_model
from symmetry.losses import sps_loss, z_ramp_weight
from symmetry.model import ball_config
from symmetry.step import init_state, make_train_step, mean_frame_logit

REPO = pathlib.Path(__file__).resolve().parents[1]
VIDEO = str(REPO / "experiments/symmetry/sps_video.py")
TINY = dict(image_size=8, image_channels=1, ball_channels=(4, 8, 8), rnn_hidden=8, K=2, batch_size=2)
L = np.log(1e-3 / (1 - 1e-3))  # logit of the clip bound: -6.906...


def _hand_set() -> np.ndarray:
    """uint8 [N=2, T=3, 8, 8, 1]: pixel (0,0) always 0, (0,1) always 255, (0,2) 51 in every frame, (0,3) 255 in 3
    of the 6 frames, (0,4) 102 in 2 of 6; every other pixel 0."""
    x = np.zeros((2, 3, 8, 8, 1), np.uint8)
    x[:, :, 0, 1] = 255
    x[:, :, 0, 2] = 51
    x[0, :, 0, 3] = 255
    x[1, :2, 0, 4] = 102
    return x


def _hand_offset() -> np.ndarray:
    want = np.full((8, 8, 1), L)
    want[0, 1] = -L                              # mean 1 -> clipped to 0.999
    want[0, 2] = np.log(0.2 / 0.8)               # 51/255 = 0.2
    want[0, 3] = 0.0                             # mean 0.5
    want[0, 4] = np.log((0.4 / 3) / (1 - 0.4 / 3))  # 102/255 = 0.4 in 2 of 6 frames
    return want


def test_offset_is_logit_of_the_mean_training_frame():
    x = _hand_set()
    np.testing.assert_allclose(mean_frame_logit(x), _hand_offset(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mean_frame_logit(x.astype(np.float32) / 255), _hand_offset(), rtol=1e-5, atol=1e-5)
    assert np.isfinite(mean_frame_logit(x)).all()
    for mode in ("fixed", "learnable"):  # init_state puts it in every seed's parameters
        state = init_state(ball_config(dec_offset=mode, **TINY), 2, jax.random.key(0), dec_offset=mean_frame_logit(x))
        got = np.asarray(state.params["dec_offset"][...])
        assert got.shape == (2, 8, 8, 1)
        np.testing.assert_allclose(got, np.stack([_hand_offset()] * 2), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="dec_offset of shape"):
        init_state(ball_config(dec_offset="fixed", **TINY), 1, jax.random.key(0), dec_offset=np.zeros((4, 4, 1)))


def test_offset_adds_to_the_decoder_logits():
    cfg = ball_config(dec_offset="fixed", **TINY)
    m = numpy_model(cfg)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)), jnp.float32)
    b = np.asarray(m.dec_offset[...])
    assert np.abs(b).max() > 0   # numpy_model drew a non-zero offset
    np.testing.assert_allclose(np.asarray(m.decode(z)), np.asarray(m.decoder(z)) + b, rtol=1e-6, atol=1e-6)


def test_ramp_weight_at_given_steps():
    got = [float(z_ramp_weight(jnp.int32(i), 150, 450)) for i in (0, 100, 150, 225, 300, 450, 451, 10_000)]
    assert got == [0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert [float(z_ramp_weight(jnp.int32(i), 40, 40)) for i in (39, 40, 41)] == [0.0, 1.0, 1.0]


Z = ("prior_z", "sym_z/translate", "sym_z/rotate_y", "srs/translate", "srs/rotate_y")


_LOSS_FNS: dict = {}


def _loss(cfg, params_from, it, x):
    """sps_loss at iteration ``it``, jitted once per config (the iteration is an argument, not a constant)."""
    graphdef, params = nnx.split(params_from)
    key = (id(cfg), graphdef)
    if key not in _LOSS_FNS:
        _LOSS_FNS[key] = (cfg, jax.jit(lambda p, i, xx: sps_loss(nnx.merge(graphdef, p), xx, i, jax.random.key(3),
                                                                   cfg)))
    return _LOSS_FNS[key][1](params, jnp.int32(it), x)


def test_total_loss_uses_the_ramp():
    x = jax.random.uniform(jax.random.key(1), (2, 7, 8, 8, 1))
    paper = ball_config(**TINY)
    ramp = ball_config(z_ramp_start=150, z_ramp_end=450, **TINY)
    no_z = ball_config(w_prior_z=0.0, w_sym_z=0.0, w_srs=0.0, **TINY)
    m = numpy_model(paper)  # one set of parameters (the ramp adds none)
    for it, w in ((0, 0.0), (150, 0.0), (300, 0.5), (450, 1.0), (900, 1.0)):
        tot_p, tp = _loss(paper, m, it, x)
        tot_r, tr = _loss(ramp, m, it, x)
        tot_0, _ = _loss(no_z, m, it, x)
        assert float(tr["z_ramp"]) == w
        zsum = sum(float(tp[k]) for k in Z)
        assert zsum > 0
        for k in Z:
            assert float(tr[k]) == pytest.approx(w * float(tp[k]), rel=1e-6)
        if w == 0.0:    # at the ramp's start the loss is the loss with the z-terms' weights zeroed
            assert float(tot_r) == pytest.approx(float(tot_0), rel=1e-6)
        if w == 1.0:    # after its end, the paper's loss
            assert float(tot_r) == pytest.approx(float(tot_p), rel=1e-6)
        assert float(tot_r) == pytest.approx(float(tot_0) + w * zsum, rel=1e-5)


def test_switches_off_reproduce_the_paper_loss():
    from experiments.sweep import load_experiment
    paper = ball_config(**TINY)
    assert (paper.dec_offset, paper.z_ramp_start, paper.z_ramp_end) == ("none", 0, 0)
    p = load_experiment(VIDEO).get_config("paper").model
    assert (p.dec_offset, p.z_ramp_start, p.z_ramp_end, p.ss_iter_scale) == ("none", 0, 0, 1.0)
    x = jax.random.uniform(jax.random.key(1), (2, 7, 8, 8, 1))
    m = numpy_model(paper)
    assert "dec_offset" not in nnx.state(m, nnx.Param)      # the paper's parameter tree: no offset leaf
    tot, t = _loss(paper, m, 300, x)
    assert set(t) == {"self_x", "kl", "loss", "p_tf", "prior_x"} | set(Z) | {"sym_x/translate", "sym_x/rotate_y"}
    assert float(tot) == pytest.approx(sum(float(v) for k, v in t.items() if k not in ("loss", "p_tf")), rel=1e-6)
    # an offset of zeros leaves every term as the paper's, bit for bit
    for mode in ("fixed", "learnable"):
        cfg = ball_config(dec_offset=mode, **TINY)
        mo = numpy_model(cfg)
        nnx.update(mo, nnx.state(m, nnx.Param))
        mo.dec_offset[...] = jnp.zeros((8, 8, 1))
        tot_o, to = _loss(cfg, mo, 300, x)
        assert {k: float(v) for k, v in to.items()} == {k: float(v) for k, v in t.items()}


def test_learnable_offset_is_trained_and_fixed_is_not():
    x = np.random.default_rng(0).integers(0, 256, (4, 7, 8, 8, 1), dtype=np.uint8)
    off = mean_frame_logit(x)
    for mode in ("fixed", "learnable"):
        cfg = ball_config(dec_offset=mode, **TINY)
        state = init_state(cfg, 1, jax.random.key(0), dec_offset=off)
        # gradient of the loss w.r.t. the offset
        params = jax.tree.map(lambda a: a[0], state.params)
        g = jax.jit(jax.grad(lambda p: sps_loss(nnx.merge(state.graphdef, p), jnp.asarray(x[:2]) / 255.0,
                                                jnp.int32(0), jax.random.key(1), cfg)[0]))(params)  # one compile
        gnorm = float(jnp.abs(g["dec_offset"][...]).max())
        before = {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
        state, _ = make_train_step(cfg)(state, jnp.asarray(x), jnp.int32(0), jax.random.key(2))
        after = dict(jax.tree_util.tree_leaves_with_path(state.params))
        moved = {jax.tree_util.keystr(k) for k in before if not np.array_equal(before[k], np.asarray(after[k]))}
        offset_moved = any("dec_offset" in k for k in moved)
        assert moved - {k for k in moved if "dec_offset" in k}, "the nets train in both modes"
        if mode == "fixed":
            assert gnorm == 0.0 and not offset_moved
            np.testing.assert_array_equal(np.asarray(state.params["dec_offset"][...])[0], off)
        else:
            assert gnorm > 0.0 and offset_moved


def test_cpu_recipe_variant():
    from experiments.sweep import load_experiment
    exp = load_experiment(VIDEO)
    flat = lambda c: {f"{g}.{k}": v for g in ("data", "model", "train") for k, v in c[g].items()}  # noqa: E731
    cpu, rec = flat(exp.get_config("cpu")), flat(exp.get_config("cpu_recipe"))
    assert {k for k in cpu if cpu[k] != rec[k]} == set(exp.RECIPE)
    assert {k: rec[k] for k in exp.RECIPE} == {"model.dec_offset": "fixed", "model.z_ramp_start": 150,
                                                "model.z_ramp_end": 450, "model.ss_iter_scale": 1.0}
    for k in ("model.dec_offset", "model.z_ramp_start", "model.ss_iter_scale"):   # each switch is a listed deviation
        assert any(d.startswith(k.split("_start")[0]) and "cpu_recipe" in d for d in exp.DEVIATIONS), k
    assert (cpu["model.dec_offset"], cpu["model.z_ramp_end"]) == ("none", 0)
    assert exp.SWEEP_VARIANT == "cpu_recipe"


@pytest.mark.integration  # trains 3 steps of :tiny through the real entry point
def test_train_initialises_the_offset_from_the_training_set(tmp_path):
    from experiments.sweep import load_experiment
    from experiments.symmetry import recipe_probe
    from symmetry import data as data_lib, train
    from symmetry.runs import load_seeds

    cfg = load_experiment(VIDEO).get_config("tiny")
    cfg.data.dir = str(REPO / "data/sps")
    cfg.mesh.fsdp = 2
    cfg.model.update(dec_offset="fixed", z_ramp_start=1, z_ramp_end=3)
    train.train(cfg, str(tmp_path / "w"))
    x = data_lib.build_dataset(cfg.data, "train")["x"]
    m = np.clip(x.reshape((-1,) + x.shape[2:]).astype(np.float64).mean(0) / 255.0, 1e-3, 1 - 1e-3)
    _, _, _, params = load_seeds(str(tmp_path / "w"))
    got = np.asarray(params["dec_offset"][...])
    for s in range(cfg.num_seeds):   # 'fixed': still the initial value after training
        np.testing.assert_allclose(got[s], np.log(m / (1 - m)), rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "w/config.json").read_text())["model"]["dec_offset"] == "fixed"
    rows = recipe_probe.probe(str(tmp_path / "w"), sequences=4)   # per checkpoint: mu spread, linear projection
    assert [r["step"] for r in rows] == [2, 3]
    assert rows[-1]["mu_std"].shape == (2, 3) and rows[-1]["per_axis"].shape == (2, 3)
    assert rows[-1]["knn_per_axis"].shape == (2, 3) and np.all(rows[-1]["knn_mean"] > 0)
    assert rows[-1]["depth_exp"].shape == (2,) and np.all(np.isfinite(rows[-1]["depth_exp"]))
    assert rows[-1]["z_ramp"] == 0.5   # logged at step 3 = iteration 2, halfway from 1 to 3


def test_z_norm_divides_each_dim_by_the_latent_batch_variance():
    """z_norm='batch_var' (issue 22 deliverable 2): hand numbers. Latent dim 0 over (batch, time) = 0, 2, 0, 2
    (variance 1), dim 1 = 0, 0, 0, 4 (mean 1, variance (1 + 1 + 1 + 9) / 4 = 3); errors 1 and 3 -> 1/1 + 9/3."""
    from symmetry.losses import Z_NORM_EPS, z_sq_sum

    z = jnp.array([[[0.0, 0.0], [2.0, 0.0]], [[0.0, 0.0], [2.0, 4.0]]])
    a, b = jnp.array([[1.0, 3.0]]), jnp.zeros((1, 2))
    want = 1.0 / (1.0 + Z_NORM_EPS) + 9.0 / (3.0 + Z_NORM_EPS)
    assert float(z_sq_sum(a, b, z, "batch_var")) == pytest.approx(want, rel=1e-6)
    assert float(z_sq_sum(a, b, z, "none")) == 10.0
    # shrinking the latent and its predictions together buys nothing with batch_var, and c^2 with the paper's
    loss_at = {m: (lambda c, m=m: z_sq_sum(c * a, c * b, c * z, m)) for m in ("none", "batch_var")}
    assert float(jax.grad(loss_at["batch_var"])(1.0)) == pytest.approx(0.0, abs=1e-3)
    assert float(jax.grad(loss_at["none"])(1.0)) == pytest.approx(20.0)
    assert float(loss_at["batch_var"](0.1)) == pytest.approx(want, rel=1e-3)   # latent std 0.1: eps 1e-6 negligible


def test_z_norm_changes_only_the_z_space_terms():
    x = jax.random.uniform(jax.random.key(1), (2, 7, 8, 8, 1))
    paper, norm = ball_config(**TINY), ball_config(z_norm="batch_var", **TINY)
    m = numpy_model(paper)
    _, tp = _loss(paper, m, 300, x)
    _, tn = _loss(norm, m, 300, x)
    for k in tp:
        if k.startswith(("prior_z", "sym_z/", "srs/")):
            assert np.isfinite(float(tn[k])) and float(tn[k]) != pytest.approx(float(tp[k]), rel=1e-3)
        elif k != "loss":
            assert float(tn[k]) == float(tp[k]), k
    with pytest.raises(ValueError, match="z_norm"):
        ball_config(z_norm="layer", **TINY)


def test_pred_loss_from_scores_only_the_later_predictions():
    """pred_loss_from=f (the authors' later ball code scores predictions with >= 5 frames of context): prior_z and
    prior_x are the identity path's errors on frames f..T-1 only. Expected values from the model's parts and numpy
    (AE: z = mu; teacher forcing always on), for f = 1 (the paper: every prediction) and f = 3."""
    x = jax.random.uniform(jax.random.key(1), (2, 7, 8, 8, 1))
    base = dict(TINY, variant="ae", scheduled_sampling=False)
    m = numpy_model(ball_config(**base))
    sym = {}
    for f in (1, 3):
        cfg = ball_config(pred_loss_from=f, **base)
        tot, t = _loss(cfg, m, 300, x)
        mu = np.asarray(m.encode(x)[0], np.float64)
        pred = m.prior.rollout(jnp.asarray(mu, jnp.float32), jnp.ones((7, 2), bool))  # [B, 6, 3]: frames 1..6
        z_err = np.sum((np.asarray(pred, np.float64)[:, f - 1:] - mu[:, f:]) ** 2)
        logits = np.asarray(m.decode(pred[:, f - 1:]), np.float64)
        target = np.asarray(x, np.float64)[:, f:]
        bce = np.sum(np.logaddexp(0.0, logits) - target * logits)
        assert float(t["prior_z"]) == pytest.approx(cfg.w_prior_z * z_err, rel=1e-4)
        assert float(t["prior_x"]) == pytest.approx(cfg.w_prior_x * bce, rel=1e-4)
        assert float(tot) == pytest.approx(sum(float(v) for k, v in t.items() if k not in ("loss", "p_tf")), rel=1e-6)
        sym[f] = {k: float(v) for k, v in t.items() if k.startswith(("sym_", "srs/"))}
    assert all(0 < sym[3][k] < sym[1][k] for k in sym[1])  # the same rollouts, fewer frames scored
    with pytest.raises(ValueError, match="pred_loss_from"):
        _loss(ball_config(pred_loss_from=7, **base), m, 300, x)
    with pytest.raises(ValueError, match="pred_loss_from"):
        ball_config(pred_loss_from=0, **base)


def test_group_scale_acts_in_units_of_the_latent_batch_std(monkeypatch):
    """group_scale='batch_std': the groups act on z / s, s = root of the mean variance of the translate dims (0, 2)
    over batch and time (numpy here). The prior is replaced by "copy the last input" (equivariant under any group in
    any unit), so every symmetry path must give back the identity path's error exactly: that fails if the inverse
    used another unit than the forward. The translate path's inputs minus the latent, / s, are one U(-1, 1) draw per
    copy on dims 0 and 2 (none on dim 1); the rotation leaves dim 1 and the (0, 2) radius unchanged."""
    from symmetry import model as model_lib

    seen = []

    def copy_prior(self, z, mask):
        seen.append(np.asarray(z, np.float64))
        return z[:, :-1]

    monkeypatch.setattr(model_lib.Prior, "rollout", copy_prior)
    x = jax.random.uniform(jax.random.key(1), (2, 7, 8, 8, 1))
    base = dict(TINY, variant="ae", scheduled_sampling=False, groups=("translate", "rotate_y"))
    m = numpy_model(ball_config(**base))
    std = lambda mu: np.sqrt(np.mean(mu.reshape(-1, 3).var(0)[[0, 2]]))  # noqa: E731
    c = 5.0 / std(np.asarray(m.encode(x)[0], np.float64))            # a latent far from unit scale: s = 5
    m.encoder.mu.kernel[...] = m.encoder.mu.kernel[...] * c
    m.encoder.mu.bias[...] = m.encoder.mu.bias[...] * c
    mu = np.asarray(m.encode(x)[0], np.float64)                      # [B, T, 3]
    s = std(mu)
    assert s > 3.0
    B, K = 2, 2
    step_err = np.sum((mu[:, 1:] - mu[:, :-1]) ** 2)
    for mode, unit in (("batch_std", s), ("none", 1.0)):
        cfg = ball_config(group_scale=mode, **base)
        seen.clear()
        _, t = sps_loss(m, x, jnp.int32(300), jax.random.key(3), cfg)
        assert float(t["prior_z"]) == pytest.approx(cfg.w_prior_z * step_err, rel=1e-5)
        for g in ("translate", "rotate_y"):
            assert float(t[f"sym_z/{g}"]) == pytest.approx(cfg.w_sym_z * step_err, rel=1e-4), (mode, g)
        rows, tiled = seen[0], np.tile(mu, (K, 1, 1))
        shift = (rows[B: B + K * B] - tiled) / unit                  # translate path
        np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1], shift.shape), atol=1e-4)  # same every frame
        np.testing.assert_allclose(shift[..., 1], 0.0, atol=1e-5)
        assert np.abs(shift).max() <= 1.0 + 1e-4 and np.abs(shift).max() > 0.5
        rot = rows[B + K * B:]                                       # rotation path: the same in both units
        np.testing.assert_allclose(rot[..., 1], tiled[..., 1], rtol=1e-5)
        np.testing.assert_allclose(np.hypot(rot[..., 0], rot[..., 2]), np.hypot(tiled[..., 0], tiled[..., 2]),
                                   rtol=1e-4)
    with pytest.raises(ValueError, match="group_scale"):
        ball_config(group_scale="std", **TINY)


def test_ss_delay_holds_the_curve_then_follows_it_faster():
    """ss_delay=d, ss_iter_scale=s: p_tf is the paper's curve (alpha 2200, beta 6000) at iteration i up to d and at
    d + (i - d) * s after; hand values from the spec's formula p = a / (a + exp((i + b) / a))."""
    from symmetry.losses import cfg_teacher_forcing_prob, teacher_forcing_mask

    p = lambda i: 2200.0 / (2200.0 + np.exp((i + 6000.0) / 2200.0))  # noqa: E731
    cfg = ball_config(ss_delay=1500, ss_iter_scale=26.7, **TINY)
    for it, want in ((0, p(0)), (1000, p(1000)), (1500, p(1500)), (1800, p(1500 + 300 * 26.7)),
                     (2100, p(1500 + 600 * 26.7))):
        assert float(cfg_teacher_forcing_prob(it, cfg)) == pytest.approx(want, rel=1e-4), it
    assert p(1500 + 600 * 26.7) < 0.05 < 0.98 < p(1500)                  # the fall happens within 600 steps
    plain = ball_config(ss_iter_scale=26.7, **TINY)                      # delay 0: scaled from the start (the :cpu curve)
    assert float(cfg_teacher_forcing_prob(300, plain)) == pytest.approx(p(300 * 26.7), rel=1e-4)
    masks = np.stack([np.asarray(teacher_forcing_mask(jax.random.key(k), jnp.int32(2250), 20, cfg)) for k in range(50)])
    assert masks[:, :5].all() and masks[:, 5:].mean() < 0.05           # base_len 5 teacher-forced, then free-running
    with pytest.raises(ValueError, match="ss_delay"):
        ball_config(ss_delay=-1, **TINY)


def test_objective_probe_trains_a_prior_on_a_fixed_latent():
    """experiments.symmetry.objective_probe.train_prior: on straight-line trajectories (constant velocity, the
    ball's horizontal motion) a trained prior predicts much better than an untrained one, and its symmetry terms
    are reported per group path."""
    from experiments.symmetry.objective_probe import train_prior

    cfg = ball_config(**dict(TINY, rnn_hidden=32, batch_size=8), learning_rate=1e-2)
    rng = np.random.default_rng(0)
    start, vel = rng.normal(0, 2, (48, 1, 3)), rng.normal(0, 0.5, (48, 1, 3))
    z = start + vel * np.arange(10)[None, :, None]
    before = train_prior(cfg, z[:32], z[32:], 0, 0, jax.random.key(0))
    after = train_prior(cfg, z[:32], z[32:], 150, 0, jax.random.key(0))
    assert set(after) == {"prior_z", "sym_z/translate", "sym_z/rotate_y", "srs/translate", "srs/rotate_y"}
    assert after["prior_z"] < 0.3 * before["prior_z"]
