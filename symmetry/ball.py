"""SPS video data (spec §3): closed-form bouncing-ball physics and a ray-cast renderer of the paper's scene.

Physics (§3.1): x, z horizontal at constant velocity, y vertical under g = 10; the ball's centre bounces at
y = 0 and each bounce keeps sqrt(1 - 0.19) = 0.9 of the vertical speed. Positions at t = 0, 0.2, ... 3.8 s are
computed in closed form (bounce times form a geometric series), so every trajectory is exact and vectorised.
The authors' stepper rounds intermediate heights/times/speeds to 3-4 decimals; we do not (differences < 1e-3).

Renderer (§3.2), written against the paper's OpenGL settings (no OpenGL here): a perspective frustum
(+-0.8 at near 1, far 15), eye (0, 4, 2) looking at (0, 0, -5), background grey 0.4, black 3-pixel grid lines
every 2 units on y = -0.5 drawn at 320x320 and box-filtered to 32x32 (= INTER_AREA), a green sphere of radius
0.5 at (x, y, -z) lit by one directional light (0, 1, 4) given in eye space plus the 0.2 global ambient
(fixed-function colour-material: colour * (0.2 + max(0, n.l)), clipped to 1). The ball is ray-cast with
``supersample`` x ``supersample`` rays per output pixel (jax.jit, chunked), composited over the static grid.
"""
from __future__ import annotations

import functools
from typing import Iterable

import numpy as np

GRAVITY = 10.0
RESTITUTION = float(np.sqrt(1.0 - 0.19))   # 19 % energy loss per bounce -> 0.9 of the speed
DT, FRAMES = 0.2, 20
Y0 = 1.0
RADIUS = 0.5
EYE = np.array([0.0, 4.0, 2.0])
LOOK_AT = np.array([0.0, 0.0, -5.0])
UP = np.array([0.0, 1.0, 0.0])
FRUSTUM, NEAR, FAR = 0.8, 1.0, 15.0
LIGHT_EYE = np.array([0.0, 1.0, 4.0])      # GL_POSITION (0,1,4,0) set under an identity modelview: eye space
GLOBAL_AMBIENT = 0.2
BACKGROUND = 0.4
GREEN = (0.05, 0.9, 0.05)
GL_SIZE, LINE_WIDTH, GRID_STEP, GRID_EXTENT = 320, 3.0, 2.0, 100.0
MAX_BOUNCES = 64

# (x0, z0, vx, vy, vz) ranges of the three enabled start regions (spec §3.1); y0 = 1.
REGIONS = (
    ((-3.0, -1.5), (0.0, 3.0), (0.2, 2.0), (-8.0, 8.0), (0.2, 3.0)),
    ((-1.5, 1.5), (0.0, 2.0), (-1.0, 1.0), (-8.0, 8.0), (0.0, 3.0)),
    ((1.5, 3.0), (0.0, 3.0), (-2.0, -0.2), (-8.0, 8.0), (0.2, 3.0)),
)


# ----------------------------------------------------------------------------------------------
# Physics

def initial_states(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(position [n, 3], velocity [n, 3]): a region drawn uniformly, then each quantity uniform in its range."""
    lo = np.array([[r[0][0], r[1][0], r[2][0], r[3][0], r[4][0]] for r in REGIONS])
    hi = np.array([[r[0][1], r[1][1], r[2][1], r[3][1], r[4][1]] for r in REGIONS])
    region = rng.integers(0, len(REGIONS), n)
    u = rng.random((n, 5))
    x0, z0, vx, vy, vz = (lo[region] + u * (hi[region] - lo[region])).T
    return np.stack([x0, np.full(n, Y0), z0], -1), np.stack([vx, vy, vz], -1)


def height(y0: np.ndarray, vy0: np.ndarray, t: np.ndarray, g: float = GRAVITY, e: float = RESTITUTION) -> np.ndarray:
    """Height of the bouncing centre at times t [..., T] for y0, vy0 [...] (> 0 start height), closed form.

    First contact at t1 = (vy0 + v1)/g with v1 = sqrt(vy0^2 + 2 g y0); rebound speeds u_k = e^k v1; contact k+1
    at t1 + (2 e v1 / g)(1 - e^k)/(1 - e); between contacts a ballistic arc from 0 at speed u_k."""
    y0, vy0 = np.asarray(y0, np.float64)[..., None], np.asarray(vy0, np.float64)[..., None]
    t = np.asarray(t, np.float64)
    v1 = np.sqrt(vy0**2 + 2 * g * y0)
    t1 = (vy0 + v1) / g
    k = np.arange(MAX_BOUNCES)
    contacts = t1[..., None] + 2 * e * v1[..., None] / g * (1 - e**k) / (1 - e)          # [..., 1, K]
    n = np.sum(contacts <= t[..., None], axis=-1)                                       # bounces so far
    tk = np.take_along_axis(np.broadcast_to(contacts, n.shape + (MAX_BOUNCES,)), np.maximum(n - 1, 0)[..., None],
                            -1)[..., 0]
    tau = t - tk
    after = v1 * e**np.maximum(n, 1) * tau - 0.5 * g * tau**2
    before = y0 + vy0 * t - 0.5 * g * t**2
    return np.maximum(np.where(n == 0, before, after), 0.0)


def trajectories(pos0: np.ndarray, vel0: np.ndarray, frames: int = FRAMES, dt: float = DT) -> np.ndarray:
    """Ball centres (x, y, z) at t = 0, dt, ... -> [n, frames, 3] (z grows away from the camera)."""
    t = np.arange(frames) * dt
    xz = pos0[:, None, [0, 2]] + vel0[:, None, [0, 2]] * t[:, None]
    y = height(pos0[:, 1], vel0[:, 1], t)
    return np.stack([xz[..., 0], y, xz[..., 1]], -1)


# ----------------------------------------------------------------------------------------------
# Camera

def camera_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gluLookAt's (side, up, forward) unit vectors in world coordinates."""
    f = LOOK_AT - EYE
    f = f / np.linalg.norm(f)
    s = np.cross(f, UP)
    s = s / np.linalg.norm(s)
    return s, np.cross(s, f), f


def ray_dirs(size: int, sub: int = 1) -> np.ndarray:
    """World ray directions [size, size, sub*sub, 3] through sub x sub points of each pixel (row 0 = top).

    Scaled so that the forward component is 1: the ray parameter t is the eye-space depth (near/far planes)."""
    s, u, f = camera_basis()
    off = (np.arange(sub) + 0.5) / sub
    c = (np.arange(size)[:, None] + off[None]).reshape(-1) / size * 2 - 1            # [size*sub] in (-1, 1)
    xe, ye = np.meshgrid(c * FRUSTUM, -c * FRUSTUM)                                    # [rows, cols]
    d = xe[..., None] * s + ye[..., None] * u + f                                      # [size*sub, size*sub, 3]
    d = d.reshape(size, sub, size, sub, 3).transpose(0, 2, 1, 3, 4)
    return d.reshape(size, size, sub * sub, 3)


def light_dir() -> np.ndarray:
    """The light's unit direction in world coordinates (given in eye space: x = side, y = up, z = -forward)."""
    s, u, f = camera_basis()
    l = LIGHT_EYE[0] * s + LIGHT_EYE[1] * u - LIGHT_EYE[2] * f
    return l / np.linalg.norm(l)


def project(points: np.ndarray, size: int = 32) -> np.ndarray:
    """World points [..., 3] (GL coordinates) -> (row, col) [..., 2] in pixels of a size x size image."""
    s, u, f = camera_basis()
    p = np.asarray(points, np.float64) - EYE
    depth = p @ f
    col = ((p @ s) / depth / FRUSTUM + 1) / 2 * size
    row = (1 - (p @ u) / depth / FRUSTUM) / 2 * size
    return np.stack([row, col], -1)


def camera_depth(positions: np.ndarray) -> np.ndarray:
    """Physics positions [..., 3] -> their eye-space depth [...] (distance along the camera's forward axis)."""
    _, _, f = camera_basis()
    return (to_gl(positions) - EYE) @ f


def to_gl(positions: np.ndarray) -> np.ndarray:
    """Physics (x, y, z) -> GL world coordinates (x, y, -z): the authors draw the ball at (x, y, -z)."""
    return np.asarray(positions) * np.array([1.0, 1.0, -1.0])


@functools.lru_cache(maxsize=4)
def background(size: int = 32) -> np.ndarray:
    """The static scene [size, size, 3] float: grey with the black grid lines, drawn at 320x320 and box-filtered."""
    d = ray_dirs(GL_SIZE)[:, :, 0]                                                     # pixel centres
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-RADIUS - EYE[1]) / d[..., 1]                                             # hits y = -0.5
    ground = EYE + t[..., None] * d
    ok = (d[..., 1] < 0) & (t >= NEAR) & (t <= FAR)
    ok &= (np.abs(ground[..., 0]) <= GRID_EXTENT) & (np.abs(ground[..., 2]) <= GRID_EXTENT)
    line = np.zeros(ok.shape, bool)
    for axis in (0, 2):                                                                # lines x = 2k and z = 2k
        g = np.where(ok, ground[..., axis], 0.0)
        gi, gj = np.gradient(g)                                                        # world units per pixel
        minor = np.maximum(np.abs(gi), np.abs(gj))                                     # GL wide lines: minor axis
        dist = np.abs(g - GRID_STEP * np.round(g / GRID_STEP)) / np.maximum(minor, 1e-12)
        line |= ok & (dist < LINE_WIDTH / 2)
    img = np.where(line, 0.0, BACKGROUND)
    k = GL_SIZE // size
    img = img.reshape(size, k, size, k).mean((1, 3))
    return np.repeat(img[..., None], 3, -1).astype(np.float32)


def _window(size: int, pos_gl: np.ndarray) -> int:
    """Side (pixels) of a square window around the projected centre that holds every ball's silhouette."""
    s, u, f = camera_basis()
    depth = np.maximum((pos_gl - EYE) @ f, NEAR)
    radius_px = RADIUS / np.sqrt(np.maximum(depth**2 - RADIUS**2, 1e-6)) / FRUSTUM * size / 2
    side = 2 * int(np.ceil(radius_px.max(initial=0.0) * 1.1 + 2))
    return min(size, -(-side // 4) * 4)


@functools.lru_cache(maxsize=16)
def _render_fn(size: int, sub: int, color: tuple[float, float, float], win: int):
    """A jitted ([C, 3] GL centres, [C, 2] window corners) -> [C, size, size, 3] float frames in [0, 1]."""
    import jax
    import jax.numpy as jnp

    dirs = jnp.asarray(ray_dirs(size, sub), jnp.float32)                               # [H, W, S, 3]
    bg = jnp.asarray(background(size))
    light, eye, col = (jnp.asarray(v, jnp.float32) for v in (light_dir(), EYE, color))

    def one(center, corner):
        d = jax.lax.dynamic_slice(dirs, (corner[0], corner[1], 0, 0), (win, win) + dirs.shape[2:])
        under = jax.lax.dynamic_slice(bg, (corner[0], corner[1], 0), (win, win, 3))
        oc = center - eye
        a, b = jnp.sum(d**2, -1), d @ oc
        disc = b**2 - a * (oc @ oc - RADIUS**2)
        t = (b - jnp.sqrt(jnp.maximum(disc, 0.0))) / a
        hit = (disc >= 0) & (t >= NEAR) & (t <= FAR)                                  # [win, win, S]
        normal = (t[..., None] * d - oc) / RADIUS
        shade = GLOBAL_AMBIENT + jnp.maximum(normal @ light, 0.0)
        ball = jnp.minimum(shade[..., None] * col, 1.0)                                # [win, win, S, 3]
        cover = hit.mean(-1)[..., None]
        patch = under * (1 - cover) + jnp.sum(jnp.where(hit[..., None], ball, 0.0), -2) / hit.shape[-1]
        return jax.lax.dynamic_update_slice(bg, patch, (corner[0], corner[1], 0))

    return jax.jit(jax.vmap(one))


def render(positions: np.ndarray, size: int = 32, supersample: int = 4, color: Iterable[float] = GREEN,
           chunk: int = 2048, progress: str = "", window: int = 0) -> np.ndarray:
    """Physics positions [..., 3] -> uint8 RGB frames [..., size, size, 3] (PNG-like, as the paper stored them).

    Rays are cast only in a window around each projected centre (``window`` pixels; 0 = just large enough for
    the nearest ball of this call, ``size`` = the whole frame). ``progress``: a progress-bar description (ETA)."""
    if GL_SIZE % size:
        raise ValueError(f"ball image_size {size} must divide {GL_SIZE}")
    pos = to_gl(np.asarray(positions, np.float64)).reshape(-1, 3)
    win = min(window, size) if window else _window(size, pos)
    corner = np.clip(np.round(project(pos, size)).astype(np.int64) - win // 2, 0, size - win).astype(np.int32)
    fn = _render_fn(size, supersample, tuple(float(c) for c in color), win)
    pos = pos.astype(np.float32)
    out = np.empty((pos.shape[0], size, size, 3), np.uint8)
    chunk = min(chunk, max(pos.shape[0], 1))
    starts = range(0, pos.shape[0], chunk)
    if progress:
        from m4mjax.run.metrics import progress_bar

        starts = progress_bar(starts, len(starts), progress)
    for i in starts:
        block, cb = pos[i: i + chunk], corner[i: i + chunk]
        n = block.shape[0]
        if n < chunk:  # pad the last chunk: one compiled shape
            block = np.concatenate([block, np.repeat(block[-1:], chunk - n, 0)])
            cb = np.concatenate([cb, np.repeat(cb[-1:], chunk - n, 0)])
        out[i: i + n] = np.round(np.asarray(fn(block, cb))[:n] * 255).astype(np.uint8)
    return out.reshape(np.shape(positions)[:-1] + (size, size, 3))


def visible(frames: np.ndarray) -> np.ndarray:
    """Per trajectory [N, T, H, W, 3] uint8: every frame has a pixel with a channel > 0.5 (the authors' filter)."""
    return (frames > 127).any(axis=(-1, -2, -3)).all(axis=-1)


def make_trajectories(n: int, seed: int, frames: int = FRAMES, dt: float = DT) -> np.ndarray:
    """n trajectories [n, frames, 3] from the §3.1 start distribution, reproducible from ``seed``."""
    pos0, vel0 = initial_states(np.random.default_rng(seed), n)
    return trajectories(pos0, vel0, frames, dt)


def write_strip(frames: np.ndarray, path: str, scale: int = 3, gap: int = 2) -> None:
    """A PNG of trajectories [N, T, H, W, 3] uint8: one row per trajectory, frames left to right, magnified
    ``scale`` x (nearest neighbour), written atomically (docs/ball_strip.png)."""
    from PIL import Image

    from m4mjax.run import io

    n, t, h, w, _ = frames.shape
    out = np.full((n * (h + gap) - gap, t * (w + gap) - gap, 3), 255, np.uint8)
    for i in range(n):
        for j in range(t):
            out[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = frames[i, j]
    img = Image.fromarray(out).resize((out.shape[1] * scale, out.shape[0] * scale), Image.NEAREST)
    with io.atomic_path(path) as tmp:
        img.save(tmp, format="png")
