"""Symmetry groups acting on the prior latent dims (spec §1, §5.3, §5.6): pure functions.

A ``Group`` has ``sample(key, n) -> params`` (one element per sequence copy, leading axis n),
``apply(params, z)`` and ``inverse(params, z)`` for z [n, ..., p] (same element for every time step).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Group:
    """A sampled group acting on latent vectors; params are any pytree with leading axis n."""

    name: str
    sample: Callable[[jax.Array, int], object]
    apply: Callable[[object, jax.Array], jax.Array]
    inverse: Callable[[object, jax.Array], jax.Array]


def _per_sequence(fn: Callable) -> Callable:
    """Lift fn(one_param, z[..., p]) to params with leading axis n and z [n, ..., p]."""
    return jax.vmap(fn)


def translation(dims: Sequence[int], t_range: float, latent: int) -> Group:
    """(R^k, +) on the given latent dims, t ~ U(-t_range, t_range) per dim (audio: pitch, ball: z0, z2)."""
    if not dims or any(not 0 <= d < latent for d in dims):
        raise ValueError(f"symmetry config: translation dims {tuple(dims)} must index the {latent} prior latent dims")
    sel = jnp.zeros((latent,), jnp.float32).at[jnp.asarray(dims)].set(1.0)

    def sample(key: jax.Array, n: int) -> jax.Array:
        return jax.random.uniform(key, (n, latent), jnp.float32, -t_range, t_range) * sel

    return Group(f"translate{tuple(dims)}", sample,
                 _per_sequence(lambda t, z: z + t), _per_sequence(lambda t, z: z - t))


def _rot_y(theta: jax.Array, z: jax.Array) -> jax.Array:
    """z0' = cos z0 + sin z2, z2' = -sin z0 + cos z2, z1 unchanged (row vector times a Y rotation)."""
    c, s = jnp.cos(theta), jnp.sin(theta)
    z0, z2 = z[..., 0], z[..., 2]
    return z.at[..., 0].set(c * z0 + s * z2).at[..., 2].set(-s * z0 + c * z2)


def rotation_y(angle_range: float = jnp.pi) -> Group:
    """SO(2) about latent dim 1 (the ball's height axis), theta ~ U(-angle_range, angle_range)."""

    def sample(key: jax.Array, n: int) -> jax.Array:
        return jax.random.uniform(key, (n,), jnp.float32, -angle_range, angle_range)

    return Group("rotate_y", sample, _per_sequence(_rot_y), _per_sequence(lambda th, z: _rot_y(-th, z)))


def orthogonal(dims: int, latent: int) -> Group:
    """R3-style random orthogonal matrix (QR of a Gaussian, may be a reflection) on the first ``dims`` dims."""

    def sample(key: jax.Array, n: int) -> jax.Array:
        q, _ = jnp.linalg.qr(jax.random.normal(key, (n, dims, dims)))
        return q

    def act(m: jax.Array, z: jax.Array) -> jax.Array:
        return jnp.concatenate([z[..., :dims] @ m, z[..., dims:]], axis=-1)

    return Group(f"orthogonal{dims}", sample, _per_sequence(act), _per_sequence(lambda m, z: act(m.T, z)))


def compose(*groups: Group) -> Group:
    """Product group element g = g_last o ... o g_first (applied in order; inverted in reverse order)."""

    def sample(key: jax.Array, n: int) -> tuple:
        return tuple(g.sample(k, n) for g, k in zip(groups, jax.random.split(key, len(groups))))

    def apply(ps: tuple, z: jax.Array) -> jax.Array:
        for g, p in zip(groups, ps):
            z = g.apply(p, z)
        return z

    def inverse(ps: tuple, z: jax.Array) -> jax.Array:
        for g, p in reversed(list(zip(groups, ps))):
            z = g.inverse(p, z)
        return z

    return Group("x".join(g.name for g in groups), sample, apply, inverse)


def make_group(name: str, latent: int, translate_dims: Sequence[int] = (0,), t_range: float = 1.0) -> Group:
    """Group by config name: 'translate' (cfg dims/range), 'rotate_y', or the wrong-group study's
    'T1','T2','T3' (dims 0..n-1, U(-t_range, t_range)), 'R2' (rotate (z0,z2)), 'R3' (orthogonal),
    and products such as 'T1R2', 'T3R2', 'T2R3' (spec §5.6, §7.4)."""
    if name == "translate":
        return translation(translate_dims, t_range, latent)
    if name == "rotate_y":
        return rotation_y()
    parts, i = [], 0
    while i < len(name):
        kind, num = name[i], name[i + 1: i + 2]
        if kind not in "TR" or not num.isdigit():
            raise ValueError(f"symmetry config 'groups': unknown group {name!r}; use 'translate', 'rotate_y', "
                             f"or T<n>/R2/R3 products like 'T1R2'")
        n = int(num)
        if kind == "T":
            parts.append(translation(tuple(range(n)), t_range, latent))
        elif n == 2:
            parts.append(rotation_y())
        elif n == 3:
            parts.append(orthogonal(3, latent))
        else:
            raise ValueError(f"symmetry config 'groups': rotation R{n} in {name!r} is not supported (R2 or R3)")
        i += 2
    if max([3 if p.name.startswith(("rotate", "orthogonal")) else 0 for p in parts] + [0]) > latent:
        raise ValueError(f"symmetry config 'groups': {name!r} needs >= 3 prior latent dims, have {latent}")
    return parts[0] if len(parts) == 1 else compose(*parts)
