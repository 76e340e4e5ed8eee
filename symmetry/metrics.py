"""SPS evaluation metrics (spec §7.1 audio linearity, §7.2 ball linear projection), numpy only.

All functions take numpy arrays; leading axes (e.g. a seed axis) are batch axes, so a caller that
vmaps its model over seeds can score every seed in one call.
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from symmetry import audio

YIN_FMIN, YIN_FMAX, YIN_THRESHOLD = 65.0, 1600.0, 0.1  # the official YIN call's defaults
YIN_WIN = audio.NOTE_SAMPLES // 2                      # 1 024-sample integration window in a 2 048 page


def _r2_1d(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Pearson r of one pair of vectors (scipy linregress); NaN when undefined."""
    from scipy.stats import linregress

    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(linregress(x, y).rvalue ** 2)


def embedding_r2(pitch: np.ndarray, z: np.ndarray) -> np.ndarray:
    """R² of the line z ~ a * pitch + b (§7.1.1): pitch [N], z [..., N] (first-note z_pitch) -> [...]."""
    pitch = np.asarray(pitch, np.float64)
    z = np.asarray(z, np.float64)
    if z.shape[-1] != pitch.shape[-1]:
        raise ValueError(f"embedding_r2: z has {z.shape[-1]} items on its last axis, pitch has {pitch.shape[-1]}")
    flat = z.reshape(-1, z.shape[-1])
    return np.array([_r2_1d(pitch, row) for row in flat]).reshape(z.shape[:-1])


def z_sweep(z_mean: np.ndarray | float, z_std: np.ndarray | float, n: int = 30, n_std: float = 2.0) -> np.ndarray:
    """n evenly spaced z in [m - n_std*s, m + n_std*s] (§7.1.2): [...] stats -> [..., n].

    The official code takes m, s (torch .std, i.e. ddof=1) of z_pitch over every encoded test sequence.
    """
    m, s = np.asarray(z_mean, np.float64), np.asarray(z_std, np.float64)
    t = np.linspace(-n_std, n_std, n)
    return m[..., None] + s[..., None] * t


def griffin_lim(mag: np.ndarray, n_iter: int = 32, power_input: bool = True, seed: int = 0) -> np.ndarray:
    """STFT magnitude [..., F<=513, 5] (x1024 scale) -> waveform [..., 2 048] with librosa Griffin-Lim.

    Missing high bins (a reduced `n_bins` front-end) are zero-filled. `power_input=True` reproduces the
    official torchaudio quirk (its GriffinLim defaults to power=2, so the magnitude is square-rooted).
    """
    import librosa

    mag = np.asarray(mag, np.float32)
    if mag.shape[-2] < audio.STFT_BINS:
        pad = [(0, 0)] * (mag.ndim - 2) + [(0, audio.STFT_BINS - mag.shape[-2]), (0, 0)]
        mag = np.pad(mag, pad)
    if power_input:
        mag = np.sqrt(np.maximum(mag, 0.0))
    return librosa.griffinlim(mag, n_iter=n_iter, hop_length=audio.HOP, win_length=audio.WIN, n_fft=audio.WIN,
                              window="hann", center=True, momentum=0.99, init="random", random_state=seed,
                              length=(mag.shape[-1] - 1) * audio.HOP)


def yin(wav: np.ndarray, sample_rate: int = audio.SAMPLE_RATE, fmin: float = YIN_FMIN, fmax: float = YIN_FMAX,
        threshold: float = YIN_THRESHOLD, win: int = YIN_WIN) -> np.ndarray:
    """One YIN f0 (Hz) per page [..., L] (de Cheveigné & Kawahara 2002, windowed difference function).

    Matches the official evaluation's YIN (one 2 048 page, 1 024 window, fmin 65, fmax 1 600, threshold
    0.1, parabolic refinement, global minimum when no trough is below threshold); silent pages -> NaN.
    """
    wav = np.asarray(wav, np.float64)
    min_p = max(int(np.floor(sample_rate / fmax)), 1)
    max_p = min(int(np.ceil(sample_rate / fmin)), wav.shape[-1] - win - 1)
    frames = np.lib.stride_tricks.sliding_window_view(wav, win, axis=-1)[..., : max_p + 1, :]
    diff = np.sum((frames[..., :1, :] - frames) ** 2, axis=-1)              # d(tau), tau = 0..max_p
    cum = np.cumsum(diff[..., 1:], axis=-1) / np.arange(1, max_p + 1)       # mean of d(1..tau)
    cmnd = diff[..., min_p:] / (cum[..., min_p - 1:] + np.finfo(np.float64).tiny)
    # parabolic refinement offsets (ignored when larger than one lag)
    a = (cmnd[..., :-2] + cmnd[..., 2:] - 2 * cmnd[..., 1:-1]) / 2
    b = (cmnd[..., 2:] - cmnd[..., :-2]) / 2
    shift = np.zeros_like(cmnd)
    shift[..., 1:-1] = -b / (2 * a + np.finfo(np.float64).tiny)
    shift[np.abs(shift) > 1] = 0
    # troughs: local minima (first lag compared with its right neighbour only)
    trough = np.zeros(cmnd.shape, bool)
    trough[..., 1:-1] = (cmnd[..., 1:-1] < cmnd[..., :-2]) & (cmnd[..., 1:-1] <= cmnd[..., 2:])
    trough[..., 0] = cmnd[..., 0] < cmnd[..., 1]
    below = trough & (cmnd < threshold)
    idx = np.where(below.any(-1), np.argmax(below, -1), np.argmin(cmnd, -1))
    period = min_p + idx + np.take_along_axis(shift, idx[..., None], -1)[..., 0]
    f0 = sample_rate / period
    return np.where(np.sum(wav**2, axis=-1) > 0, f0, np.nan)


def detect_pitch(wav: np.ndarray, method: str = "yin", sample_rate: int = audio.SAMPLE_RATE) -> np.ndarray:
    """MIDI pitch (69 + 12 log2(f/440)) of each page [..., L]; NaN = unvoiced/undetectable.

    'yin': the official-style YIN above; 'pyin': librosa.pyin (median of voiced frames).
    """
    if method == "yin":
        f0 = yin(wav, sample_rate)
    elif method == "pyin":
        import librosa

        f0s, _, _ = librosa.pyin(np.asarray(wav, np.float32), fmin=YIN_FMIN, fmax=YIN_FMAX, sr=sample_rate,
                                 frame_length=audio.NOTE_SAMPLES // 2, center=True)
        with warnings.catch_warnings():  # all-unvoiced pages -> NaN without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            f0 = np.nanmedian(f0s, axis=-1)
    else:
        raise ValueError(f"pitch method {method!r} must be 'yin' or 'pyin'")
    with np.errstate(divide="ignore", invalid="ignore"):
        return 69.0 + 12.0 * np.log2(f0 / 440.0)


def features_to_pitch(y: np.ndarray, power_input: bool = True, method: str = "yin", n_iter: int = 32,
                      seed: int = 0) -> np.ndarray:
    """Normalised STFT features [..., F, 5] -> detected MIDI pitch [...] (inverse log, Griffin-Lim, f0)."""
    wav = griffin_lim(audio.features_to_magnitude(y), n_iter=n_iter, power_input=power_input, seed=seed)
    return detect_pitch(wav, method)


def r2_with_nans(z: np.ndarray, pitch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R² over the finite pitches, number of non-finite pitches), each [...] for z, pitch [..., n]."""
    z, pitch = np.broadcast_arrays(np.asarray(z, np.float64), np.asarray(pitch, np.float64))
    zf, pf = z.reshape(-1, z.shape[-1]), pitch.reshape(-1, z.shape[-1])
    ok = np.isfinite(pf)
    r2 = np.array([_r2_1d(zr[m], pr[m]) for zr, pr, m in zip(zf, pf, ok)])
    return r2.reshape(z.shape[:-1]), (~ok).sum(-1).reshape(z.shape[:-1])


def synthesis_r2(decode_fn: Callable[[np.ndarray], np.ndarray], z_mean: np.ndarray | float,
                 z_std: np.ndarray | float, n: int = 30, n_std: float = 2.0, power_input: bool = True,
                 method: str = "yin", seed: int = 0) -> dict[str, np.ndarray]:
    """Decoder linearity (§7.1.2): sweep z, decode, invert, Griffin-Lim, f0 -> R²(z, detected pitch).

    decode_fn maps z [..., n] (the pitch latent) to normalised features [..., n, F, 5]; stats [...] give a
    batch of sweeps (e.g. one per seed). Returns dict(r2 [...], n_unvoiced [...], z [..., n], pitch [..., n]).
    """
    z = z_sweep(z_mean, z_std, n, n_std)
    y = np.asarray(decode_fn(z))
    if y.shape[: z.ndim] != z.shape:
        raise ValueError(f"decode_fn returned shape {y.shape}; expected {z.shape} + (F, 5)")
    pitch = features_to_pitch(y, power_input=power_input, method=method, seed=seed)
    r2, n_unvoiced = r2_with_nans(z, pitch)
    return dict(r2=r2, n_unvoiced=n_unvoiced, z=z, pitch=pitch)


def linear_projection_mse(z: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """§7.2: Y / std(Y) per column, affine least squares z -> Y, per-axis residual MSE (≈ 1 - R²).

    z [..., N, dz], positions [..., N, 3] -> dict(per_axis [..., 3], mean [...]) (lower is better).
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(positions, np.float64)
    if z.shape[-2] != y.shape[-2]:
        raise ValueError(f"linear_projection_mse: z has {z.shape[-2]} rows, positions has {y.shape[-2]}")
    y = y / y.std(axis=-2, keepdims=True)
    x = np.concatenate([z, np.ones(z.shape[:-1] + (1,))], axis=-1)
    coef = np.linalg.pinv(x) @ y
    per_axis = np.mean((x @ coef - y) ** 2, axis=-2)
    return dict(per_axis=per_axis, mean=per_axis.mean(-1))


def knn_mse(z: np.ndarray, positions: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Whether position is in the latent at all, linear or not (issue 22's probes): Y / std(Y) per column, each
    row predicted by the mean Y of its k nearest other rows in z (z / std(z) per dim, Euclidean, leave-one-out),
    per-axis MSE (1 + 1/k for a latent that holds nothing, 0 for one that determines position).

    z [..., N, dz], positions [..., N, 3] -> dict(per_axis [..., 3], mean [...]) (lower is better).
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(positions, np.float64)
    if z.shape[-2] != y.shape[-2] or z.shape[-2] <= k:
        raise ValueError(f"knn_mse: z has {z.shape[-2]} rows, positions {y.shape[-2]}, k = {k}")
    y = np.broadcast_to(y / y.std(axis=-2, keepdims=True), z.shape[:-1] + y.shape[-1:])
    z = z / np.maximum(z.std(axis=-2, keepdims=True), 1e-12)
    sq = np.sum(z * z, -1)
    d2 = sq[..., :, None] + sq[..., None, :] - 2.0 * z @ np.swapaxes(z, -1, -2)
    n = z.shape[-2]
    d2[..., np.arange(n), np.arange(n)] = np.inf                        # leave one out
    near = np.argpartition(d2, k, axis=-1)[..., :k]                      # [..., N, k]
    pred = np.take_along_axis(y[..., None, :, :], near[..., None], axis=-2).mean(-2)  # [..., N, 3]
    per_axis = np.mean((pred - y) ** 2, axis=-2)
    return dict(per_axis=per_axis, mean=per_axis.mean(-1))


def _whiten(a: np.ndarray) -> np.ndarray:
    """a [..., M, d] -> centred and multiplied by the inverse square root of its covariance over M (eigenvalues
    floored at 1e-12 of the largest: a dead latent dimension stays finite)."""
    a = a - a.mean(-2, keepdims=True)
    w, v = np.linalg.eigh(np.swapaxes(a, -1, -2) @ a / a.shape[-2])
    w = np.maximum(w, 1e-12 * w[..., -1:] + 1e-300)
    return a @ (v / np.sqrt(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def depth_exponent(z: np.ndarray, positions: np.ndarray, depth: np.ndarray, min_step: float = 0.05) -> np.ndarray:
    """How the latent's local scale changes with the ball's distance from the camera (issue 22's geometry check).

    z [..., N, T, dz] (latents of N trajectories), positions [N, T, 3], depth [N, T] (e.g. ball.camera_depth).
    Both z and positions are whitened (full covariance over all N*T frames), so an affine latent's steps have the
    same lengths as the positions' steps; for each consecutive pair of frames the ratio |step in z| / |step in
    position| is regressed in log-log on the pair's mean depth. Returns the slope [...]: 0 for any affine (linear)
    latent (of the positions' dimension, full rank); -k where the latent shrinks like depth^-k (the ball's image area
    falls like depth^-2). Whitening weighs every latent dimension alike, so a nearly dead dimension's noise is
    amplified and scores far from 0 (a seed that holds no position: -5 to -14 in issue 22's runs). Pairs whose
    whitened position step is below min_step (a ball at rest) are left out; latent steps are floored at 1e-3 of
    their median (a latent frozen over some frames scores a large negative number, not -inf).
    """
    z = np.asarray(z, np.float64)
    y = np.asarray(positions, np.float64)
    d = np.asarray(depth, np.float64)
    if z.shape[-3:-1] != y.shape[:2] or d.shape != y.shape[:2]:
        raise ValueError(f"depth_exponent: z {z.shape}, positions {y.shape} and depth {d.shape} disagree on [N, T]")
    n, t = y.shape[:2]
    zw = _whiten(z.reshape(z.shape[:-3] + (n * t, z.shape[-1]))).reshape(z.shape)
    yw = _whiten(y.reshape(n * t, 3)).reshape(y.shape)
    dy = np.linalg.norm(np.diff(yw, axis=-2), axis=-1)                      # [N, T-1]
    dz = np.linalg.norm(np.diff(zw, axis=-2), axis=-1)                      # [..., N, T-1]
    keep = dy > min_step
    logd = np.log(0.5 * (d[:, 1:] + d[:, :-1]))[keep]
    dz = dz[..., keep]
    dz = np.maximum(dz, 1e-3 * np.median(dz, -1, keepdims=True))           # a frozen latent: bounded, not -inf
    ratio = np.log(dz / dy[keep])                                           # [..., pairs]
    x = logd - logd.mean()
    return (ratio - ratio.mean(-1, keepdims=True)) @ x / (x @ x)
