"""experiments.symmetry.audit: each check must catch the defect it exists for. Expected values are written here by
hand (frame ranges from spec §4.4 / §5, the camera geometry of test_sps_video), not taken from the code under test."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.symmetry import audit
from sps_fixtures import numpy_model
from symmetry import ball, step as step_lib
from symmetry.model import Prior, ball_config

TINY = dict(image_size=8, image_channels=1, ball_channels=(4, 8, 8), rnn_hidden=8, K=2, batch_size=2)


def test_green_centroid_is_where_the_camera_puts_the_ball():
    """Ball at (0, 1, 0) projects to row 26.0, column 16.0 of 32 (by hand in test_sps_video); the empty scene has
    no ball weight."""
    frames = ball.render(np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 40.0]]))             # the second beyond the far plane
    cen, weight = audit.green_centroid(frames)
    np.testing.assert_allclose(cen[0], [26.0, 16.0], atol=0.5)
    assert weight[0] > 100 and weight[1] == 0


def test_data_round_trip_catches_misaligned_positions_and_broken_batches(monkeypatch):
    pos = ball.make_trajectories(4, 0)
    x = ball.render(pos)
    good = audit.data_round_trip(x, pos, batch_size=2, draws=4)
    assert good["batch_rows_that_are_whole_trajectories"] == "8/8" and good["batches_of_distinct_rows"] == "4/4"
    assert good["centroid_px_err"] < 0.5
    assert min(good["centroid_px_err_shift_+1"], good["centroid_px_err_shift_-1"]) > 2 * good["centroid_px_err"]
    late = audit.data_round_trip(x, np.roll(pos, 1, axis=1), batch_size=2, draws=1)   # positions one frame late
    assert late["centroid_px_err"] > 2 * good["centroid_px_err"]
    # a loader that reversed each trajectory's frames would hand the step no whole trajectory
    monkeypatch.setattr(step_lib, "sample_batch", lambda d, k, b: d[:b, ::-1])
    assert audit.data_round_trip(x, pos, batch_size=2, draws=2)["batch_rows_that_are_whole_trajectories"] == "0/4"


def test_loss_positions_are_the_spec_ranges():
    """L_self scores frames 1..T, L_prior,x and each L_sym,x frames 2..T (pred_loss_from=3: 4..T); the KL and the
    z-space terms score no frame."""
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 6, 8, 8, 1)), jnp.float32)
    for f0, scored in ((1, [2, 3, 4, 5, 6]), (3, [4, 5, 6])):
        cfg = ball_config(**TINY, pred_loss_from=f0)
        got = audit.loss_positions(numpy_model(cfg), x, 10_000, cfg)
        assert {k: v[0] for k, v in got.items()} == {
            "kl": [], "prior_z": [], "sym_z/translate": [], "sym_z/rotate_y": [], "srs/translate": [],
            "srs/rotate_y": [], "self_x": [1, 2, 3, 4, 5, 6], "prior_x": scored, "sym_x/translate": scored,
            "sym_x/rotate_y": scored}
        assert all(hit == want for hit, want in got.values())


def test_rollout_reads_teacher_forced_and_free_running():
    """base_len 3, T 7: teacher-forced, the prediction of frame t+1 reads frames 1..t; free-running 1..min(t, 3)."""
    cfg = ball_config(**TINY, base_len=3)
    prior = numpy_model(cfg, module=Prior)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 3)), jnp.float32)
    got = audit.rollout_reads(prior, z, 3)
    last = {m: [int(np.flatnonzero(r).max()) + 1 for r in reads] for m, (reads, _) in got.items()}
    assert last == {"teacher-forced": [1, 2, 3, 4, 5, 6], "free-running": [1, 2, 3, 3, 3, 3]}
    for reads, want in got.values():
        np.testing.assert_array_equal(reads, want)
        assert reads[:, 0].all()                                                        # every prediction reads frame 1


class _LatentModel:
    """An encoder that returns given latents (the baselines' arithmetic is then known by hand)."""

    def __init__(self, model, z):
        self.model, self.z, self.prior = model, z, model.prior

    def encode(self, x):
        return self.z, jnp.zeros_like(self.z)

    def decode(self, z):
        return self.model.decode(z)


def test_prediction_baselines_by_hand():
    """Latents moving at constant velocity: the constant-velocity baselines are exact (0) teacher-forced and free,
    copy-last is off by one step teacher-forced and by 1..T-base_len steps free-running."""
    cfg = ball_config(**TINY, base_len=3)
    n, T = 4, 6
    v = np.array([1.0, 0.0, 0.5])
    z = np.random.default_rng(2).normal(size=(n, 1, 3)) + np.arange(T)[None, :, None] * v        # [n, T, 3]
    rep = audit.prediction_report(_LatentModel(numpy_model(cfg), jnp.asarray(z, jnp.float32)), cfg,
                                  np.full((n, T, 8, 8, 1), 0.5, np.float32), np.random.default_rng(3).normal(size=(n, T, 3)),
                                  np.zeros((8, 8, 1), np.float32))
    var = z[..., :3].reshape(-1, 3).var(0)
    one_step = np.sum(v**2 / var)                                                     # squared error of one step
    err = rep["latent_err"]
    assert err["constant velocity (tf)"] < 1e-9 and err["constant velocity (free)"] < 1e-9
    np.testing.assert_allclose(err["copy last (tf)"], one_step, rtol=1e-6)
    np.testing.assert_allclose(err["copy last (free)"], one_step * np.mean(np.arange(1, T - 2) ** 2), rtol=1e-6)
    np.testing.assert_allclose(rep["ball_nats"]["mean frame (no position)"], 0.0, atol=1e-6)   # logit 0 = the 0.5 targets


def test_parse_sets_reads_literals_and_keeps_names():
    from symmetry.config import parse_sets
    assert parse_sets(["w_srs=20.0", "translate_dims=(0, 2)", "z_norm=batch_var", "prior=False"]) == {
        "w_srs": 20.0, "translate_dims": (0, 2), "z_norm": "batch_var", "prior": False}


def _probe_case(seed: int):
    """A tiny ball config (batch 4, lr 1e-2), random frames [4, 6, 8, 8, 1] and positions, one fresh seed's state."""
    cfg = ball_config(**dict(TINY, batch_size=4), learning_rate=1e-2)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.integers(0, 256, (4, 6, 8, 8, 1)), jnp.uint8)
    pos = jnp.asarray(rng.normal(size=(4, 6, 3)), jnp.float32)
    return cfg, x, pos, step_lib.init_state(cfg, 1, jax.random.key(0))


def test_stability_probe_anchor_pulls_the_latent_to_the_position():
    """experiments.symmetry.stability_probe.make_step: with the anchor on, the encoder means approach the given
    positions; with it off (the same steps), they do not."""
    from experiments.symmetry.stability_probe import make_step

    cfg, x, pos, state = _probe_case(4)
    dist = {}
    step = make_step(cfg, state.graphdef)
    for anchor in (0.0, 100.0):
        params, opt = state.params, state.opt_state
        for i in range(40):
            params, opt, _ = step(params, opt, state.seed_ids, x, pos, jnp.int32(0), jax.random.key(i),
                                     jnp.float32(anchor))
        mu = nnx.merge(state.graphdef, jax.tree.map(lambda a: a[0], params)).encode(x.astype(jnp.float32) / 255.0)[0]
        dist[anchor] = float(jnp.mean(jnp.sum((mu - pos) ** 2, -1)))
    assert dist[100.0] < 0.4 * dist[0.0], dist                                        # ignored anchor: ~1


def test_stability_probe_true_latent_feeds_the_position_not_the_encoder():
    """With true_latent and the anchor off, the SPS loss is taken on the positions: the encoder's mean head gets no
    gradient (it would if the loss read the encoder's means), while the decoder still learns."""
    from experiments.symmetry.stability_probe import make_step

    cfg, x, pos, state = _probe_case(5)
    moved = {}
    for true_latent in (True, False):
        params, opt, _ = make_step(cfg, state.graphdef, true_latent)(
            state.params, state.opt_state, state.seed_ids, x, pos, jnp.int32(0), jax.random.key(1), jnp.float32(0.0))
        delta = lambda get: float(jnp.abs(get(params) - get(state.params)).max())  # noqa: E731
        moved[true_latent] = (delta(lambda p: p["encoder"]["mu"]["kernel"][...]),
                              delta(lambda p: p["decoder"]["mlp"][0]["kernel"][...]))
    assert moved[True][0] == 0.0 and moved[True][1] > 0, moved
    assert moved[False][0] > 0, moved


def test_stability_probe_phases_resume_where_they_stopped(tmp_path):
    """_train: one step counter over the phases, reports at every N steps and each phase's end; a second call with a
    longer phase list resumes from the saved step (only the new steps run) and ends where one long call ends."""
    from experiments.symmetry.stability_probe import _train

    _, params = nnx.split(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Param)
    opt = {"count": jnp.zeros((), jnp.int32)}
    calls, tags = [], []

    def step(p, o, s):
        calls.append(s)
        return jax.tree.map(lambda a: a * 2.0 + s, p), {"count": o["count"] + 1}

    report = lambda tag, p: tags.append(tag)  # noqa: E731
    short = [("s", 3, step), ("a", 2, step)]
    _train(str(tmp_path / "run"), short, params, opt, 2, report)
    assert calls == [0, 1, 2, 3, 4] and tags == ["s 2", "s 3", "a 2"]
    calls.clear(), tags.clear()
    resumed = _train(str(tmp_path / "run"), short + [("b", 3, step)], params, opt, 2, report)
    assert calls == [5, 6, 7] and tags == ["b 2", "b 3"]
    whole = _train(None, short + [("b", 3, step)], params, opt, 2, report)
    for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(got, want)
    assert int(resumed[1]["count"]) == 8


def test_non_affine_part_of_a_push():
    """rms_and_non_affine: a push affine in the position has no non-affine part; adding a push orthogonal to every
    affine function of the positions (built here by hand) leaves exactly that push's RMS."""
    from experiments.symmetry.stability_probe import rms_and_non_affine

    pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], float)
    affine = pos @ np.array([[1.0, 2, 0], [0, 1, 0], [3, 0, 1]]) + np.array([0.5, -1, 2])
    rms, twist = rms_and_non_affine(affine, pos)
    np.testing.assert_allclose(rms, np.sqrt(np.mean(np.sum(affine ** 2, -1))))
    assert twist < 1e-9
    # e = (2, -1, -1, -1, 1): sums to 0 and is orthogonal to each position column (by hand; asserted below)
    e = np.array([2.0, -1, -1, -1, 1])
    assert abs(e.sum()) < 1e-12 and np.allclose(pos.T @ e, 0)
    push = np.stack([e, 0 * e, 2 * e], 1)
    _, twist = rms_and_non_affine(affine + push, pos)
    np.testing.assert_allclose(twist, np.sqrt(np.mean(np.sum(push ** 2, -1))))


def test_stability_probe_reinit_resets_only_the_named_nets():
    from experiments.symmetry.stability_probe import reinit_parts

    cfg = ball_config(**TINY)
    fresh = step_lib.init_state(cfg, 1, jax.random.key(0)).params
    trained = jax.tree.map(lambda a: a + 1.0, fresh)
    out = reinit_parts(trained, fresh, ("encoder",))
    np.testing.assert_array_equal(out["encoder"]["mu"]["kernel"][...], fresh["encoder"]["mu"]["kernel"][...])
    np.testing.assert_array_equal(out["decoder"]["mlp"][0]["kernel"][...], trained["decoder"]["mlp"][0]["kernel"][...])
    np.testing.assert_array_equal(out["prior"]["readout"]["kernel"][...], trained["prior"]["readout"]["kernel"][...])
