"""Device mesh and the ONE logical-axis rules table.

Every parameter and activation is named with logical axes (the vocabulary below); this file alone
decides which mesh axes they map to. FSDP by default; tensor parallel via ``mesh.tensor > 1``.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axes (tuple) or None (replicated). The whole vocabulary lives here.
RULES: dict[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "seed": ("data", "fsdp"),  # SPS: independent seeds are data-parallel replicas of the whole model
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "vocab": ("tensor",),
    "seq": None,
    "head_dim": None,
    "layers": None,
    "rank": None,
    "latent": None,
    "channels": None,
}


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a ('data','fsdp','tensor') mesh; one entry may be -1 (= all remaining devices)."""
    configure_flax()
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 not in sizes and known < len(devices):
        devices = devices[:known]  # an explicit smaller mesh uses the first devices
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int] | None = None, mesh=None) -> P:
    """PartitionSpec for logical axis names. With ``shape`` and ``mesh``, mesh axes that do not
    divide a dimension (or are already used) are dropped, so odd sizes fall back to replication."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        if name is not None and name not in RULES:
            raise KeyError(f"unknown logical axis {name!r}; known: {sorted(RULES)}")
        axes = [a for a in (RULES.get(name) or ()) if a not in used]
        if shape is not None and mesh is not None:
            kept, size = [], 1
            for a in axes:
                if mesh.shape[a] > 1 and shape[i] % (size * mesh.shape[a]) == 0:
                    kept.append(a)
                    size *= mesh.shape[a]
            axes = kept
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """with_sharding_constraint by logical names; a no-op when no mesh (or a 1-device mesh) is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))


def use_mesh(mesh: Mesh):
    """Context manager that makes ``mesh`` current (jit shardings, ``constrain``)."""
    return jax.set_mesh(mesh)


# --- Flax NNX sharding metadata (churns between Flax releases: read it here only) -------------
import flax  # noqa: E402

_flax_configured = False


def configure_flax() -> None:
    """Set Flax up for our sharding (idempotent; model constructors call it before creating variables).

    Variables carry logical names only and we place them ourselves (jit out_shardings), so Flax must not
    shard eagerly at construction time; and Flax reads our RULES table when it materialises abstract
    variables under a set mesh (nnx.eval_shape)."""
    global _flax_configured
    if not _flax_configured:
        flax.config.update("flax_always_shard_variable", False)
        flax.core.spmd.set_logical_axis_rules(tuple((k, v) for k, v in RULES.items()))
        _flax_configured = True

_NAME_KEYS = ("out_sharding", "sharding_names", "sharding")


def variable_names(var) -> tuple[str | None, ...] | None:
    """Logical axis names stored on an nnx.Variable by nnx.with_partitioning (or None)."""
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for k in _NAME_KEYS:
        if meta.get(k):
            return tuple(meta[k])
    return None


def state_shardings(state, mesh: Mesh, prefix: Sequence[str] = ()):
    """NamedSharding pytree matching an (abstract) nnx.State, from each variable's logical names.

    ``prefix`` prepends logical axes (e.g. ('seed',) for a vmapped stack of independent models)."""
    from flax import nnx

    def one(v):
        value = v.get_value() if isinstance(v, nnx.Variable) else v
        names = variable_names(v) if isinstance(v, nnx.Variable) else None
        ndim = len(value.shape)
        names = tuple(prefix) + (names if names is not None else (None,) * (ndim - len(prefix)))
        if len(names) != ndim:
            raise ValueError(f"logical names {names} do not match shape {value.shape}")
        return named_sharding(mesh, names, value.shape)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded (abstract) arrays (the --dry_run memory report)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total
