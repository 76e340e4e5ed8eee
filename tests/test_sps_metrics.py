"""SPS evaluation metrics (§7.1 audio R², §7.2 linear projection MSE)."""
import numpy as np
import pytest
from scipy.stats import linregress

from symmetry import audio, metrics


def test_embedding_r2():
    rng = np.random.default_rng(0)
    p = rng.uniform(60, 84, 200)
    z = np.stack([-0.3 * p + 2, rng.normal(size=200), 0.1 * p + rng.normal(scale=0.1, size=200)])
    r2 = metrics.embedding_r2(p, z)
    assert r2.shape == (3,)
    assert r2[0] == pytest.approx(1.0) and r2[1] < 0.05
    assert r2[2] == pytest.approx(linregress(p, z[2]).rvalue ** 2)
    assert metrics.embedding_r2(p, z[None]).shape == (1, 3)
    with pytest.raises(ValueError):
        metrics.embedding_r2(p, z[:, :10])


def test_r2_with_nans():
    z = np.linspace(0, 1, 10)
    pitch = 3 * z + 1
    pitch[[2, 5]] = np.nan
    r2, n_bad = metrics.r2_with_nans(z, pitch)
    assert r2 == pytest.approx(1.0) and n_bad == 2


def test_yin_sine():
    t = np.arange(2048) / 16000
    f = np.array([220.0, 440.0, 1000.0])
    wav = np.sin(2 * np.pi * f[:, None] * t)
    np.testing.assert_allclose(metrics.detect_pitch(wav), 69 + 12 * np.log2(f / 440), atol=0.05)
    assert np.isnan(metrics.detect_pitch(np.zeros(2048)))


def test_linear_projection_mse():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 3))
    pos = z @ rng.normal(size=(3, 3)) + 5
    out = metrics.linear_projection_mse(z, pos)
    assert out["per_axis"].shape == (3,) and out["mean"] < 1e-12
    noise = metrics.linear_projection_mse(rng.normal(size=(2, 300, 3)), pos)
    assert noise["per_axis"].shape == (2, 3) and np.all(noise["mean"] > 0.9)


@pytest.mark.skipif(not __import__("os").path.isfile(audio.FLUID_R3), reason="FluidR3_GM not installed")
@pytest.mark.integration  # runs an external program (mma / fluidsynth / the compiler)
def test_synthesis_r2_true_features():
    renderer = audio.NoteRenderer()

    def decode(z):  # the "perfect decoder": true STFT features of the note at pitch z
        flat = np.asarray(z).reshape(-1)
        y = np.stack([audio.note_features(renderer.render(audio.FLUID_R3, 21, float(p))) for p in flat])
        return y.reshape(np.shape(z) + y.shape[1:])

    out = metrics.synthesis_r2(decode, np.array([68.0, 66.0]), np.array([4.0, 4.0]), power_input=False)
    assert out["z"].shape == out["pitch"].shape == (2, 30)
    assert np.all(out["r2"] > 0.95) and out["n_unvoiced"].tolist() == [0, 0]
    quirk = metrics.synthesis_r2(decode, 66.0, 4.0, power_input=True)  # the official torchaudio power quirk
    assert quirk["r2"] > 0.95

    def half_silent(z):
        y = decode(z)
        y[..., :5, :, :] = 0
        return y

    out = metrics.synthesis_r2(half_silent, 66.0, 4.0, power_input=False)
    assert out["n_unvoiced"] == 5 and out["r2"] > 0.95


def test_knn_mse_by_hand_and_at_its_two_ends():
    """k = 1 by hand: z = 0, 1, 3, 7 -> nearest other rows 1, 0, 1, 3 -> predictions 2, 0, 2, 4 of y = 0, 2, 4, 8:
    squared errors 4, 4, 4, 16 (mean 7) over var(y) = 8.75 -> 0.8 on every axis. A latent equal to position (up
    to scale) is near 0, one of noise near 1 + 1/k."""
    z = np.array([[0.0], [1.0], [3.0], [7.0]])
    y = np.repeat(np.array([[0.0], [2.0], [4.0], [8.0]]), 3, axis=1)
    out = metrics.knn_mse(z, y, k=1)
    np.testing.assert_allclose(out["per_axis"], [0.8, 0.8, 0.8])
    rng = np.random.default_rng(0)
    pos = rng.uniform(size=(2000, 3))
    both = metrics.knn_mse(np.stack([5.0 * pos, rng.normal(size=(2000, 3))]), pos, k=10)  # [seed, N, dz]
    assert both["mean"].shape == (2,)
    assert both["mean"][0] < 0.05
    assert abs(both["mean"][1] - 1.1) < 0.1


def test_depth_exponent_is_zero_for_any_affine_latent_and_recovers_a_built_in_power_of_depth():
    """Issue 22's geometry check. An anisotropic, mixing affine map of the positions must score 0 (whitening makes
    its steps as long as the positions'; without it the anisotropy leaks in); a latent whose every step is the
    position step times depth^-2 (step directions independent of depth) must score about -2, and depth^+1 about +1
    (a wrong sign or a depth taken from the wrong frame fails)."""
    rng = np.random.default_rng(0)
    n, t = 200, 20
    pos = np.cumsum(rng.normal(size=(n, t, 3)), axis=1)
    depth = np.exp(rng.uniform(np.log(3.0), np.log(15.0), size=(n, t)))
    a = np.array([[3.0, 0.5, 0.0], [0.0, 0.2, -1.0], [1.0, 0.0, 7.0]])
    affine = pos @ a.T + np.array([1.0, -2.0, 5.0])
    assert abs(float(metrics.depth_exponent(affine, pos, depth))) < 1e-8
    mid = 0.5 * (depth[:, 1:] + depth[:, :-1])
    for k in (-2.0, 1.0):
        steps = np.diff(pos, axis=1) * mid[..., None] ** k
        z = np.concatenate([np.zeros((n, 1, 3)), np.cumsum(steps, axis=1)], axis=1)
        both = metrics.depth_exponent(np.stack([z, affine]), pos, depth)   # a leading seed axis
        assert both.shape == (2,)
        assert abs(both[0] - k) < 0.1 and abs(both[1]) < 1e-8
    with pytest.raises(ValueError):
        metrics.depth_exponent(affine[:, :5], pos, depth)
