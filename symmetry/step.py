"""N independent SPS seeds trained in parallel: a leading seed axis on every parameter and optimizer leaf.

    state = init_state(cfg, seeds=10, key=jax.random.key(0), mesh=mesh)
    train_step = make_train_step(cfg, state)
    for it in range(cfg_iters):
        state, metrics = train_step(state, data, it, jax.random.fold_in(key, it))   # metrics[name]: [seeds]

Seed s owns id ``state.seed_ids[s]``; its init key, batch indices and noise are all derived from
``fold_in(key, seed_id)``, so a seed's trajectory does not depend on how many seeds run beside it.
The 'seed' logical axis maps to the mesh's (data, fsdp) axes and falls back to replication when the
seed count does not divide them.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from m4mjax.run.mesh import state_shardings
from symmetry.losses import sps_loss
from symmetry.model import SPSConfig, SPSModel, frame_shape


@struct.dataclass
class SPSState:
    """Stacked parameters / Adam state of N models (leading axis = seed) and each seed's id."""

    graphdef: Any = struct.field(pytree_node=False)
    params: Any
    opt_state: Any
    seed_ids: jax.Array  # int32 [N]

    @property
    def num_seeds(self) -> int:
        return int(self.seed_ids.shape[0])


def make_optimizer(cfg: SPSConfig) -> optax.GradientTransformation:
    """Adam at a constant learning rate (the official decay never takes effect, spec §5.6)."""
    return optax.adam(cfg.learning_rate)


def mean_frame_logit(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """logit of the mean frame of a training set x [N, T, *frame] (uint8 in [0, 255] or float in [0, 1]), the mean
    clipped to [eps, 1 - eps] (finite logits where a pixel is always 0 or 1): the decoder's output offset."""
    x = np.asarray(x)
    m = x.reshape((-1,) + x.shape[2:]).mean(0, dtype=np.float64)
    m = np.clip(m / 255.0 if x.dtype == np.uint8 else m, eps, 1.0 - eps)
    return np.log(m / (1.0 - m)).astype(np.float32)


def _init_one(cfg: SPSConfig, key: jax.Array, seed_id: jax.Array, dec_offset=None):
    model = SPSModel(cfg, rngs=nnx.Rngs(params=jax.random.fold_in(key, seed_id)))
    if dec_offset is not None:
        model.dec_offset[...] = jnp.asarray(dec_offset, jnp.float32)
    graphdef, params = nnx.split(model, nnx.Param)
    return params, make_optimizer(cfg).init(params)


def init_state(cfg: SPSConfig, seeds: int, key: jax.Array, mesh: Mesh | None = None, first_seed: int = 0,
               dec_offset: np.ndarray | None = None) -> SPSState:
    """Independently initialise ``seeds`` models (ids first_seed..first_seed+seeds-1) plus their Adam state.

    dec_offset: the decoder output offset's initial value when cfg.dec_offset != 'none' (mean_frame_logit of the
    training set; zeros when None, e.g. a shape to restore a checkpoint into)."""
    if seeds < 1:
        raise ValueError(f"symmetry config 'seeds' must be >= 1, got {seeds}")
    cfg.validate()
    if cfg.dec_offset == "none":
        dec_offset = None
    elif dec_offset is not None and np.shape(dec_offset) != frame_shape(cfg):
        raise ValueError(f"dec_offset of shape {np.shape(dec_offset)}, but the decoder's frames are {frame_shape(cfg)}")
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: SPSModel(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    seed_ids = jnp.arange(first_seed, first_seed + seeds, dtype=jnp.int32)
    init = jax.vmap(lambda s: _init_one(cfg, key, s, dec_offset))
    out_shardings = None
    if mesh is not None:
        abstract = jax.eval_shape(init, seed_ids)
        out_shardings = state_shardings(abstract, mesh, prefix=("seed",))
        seed_ids = jax.device_put(seed_ids, _seed_sharding(mesh, seeds))
    params, opt_state = jax.jit(init, out_shardings=out_shardings)(seed_ids)
    return SPSState(graphdef=graphdef, params=params, opt_state=opt_state, seed_ids=seed_ids)


def _seed_sharding(mesh: Mesh, seeds: int) -> NamedSharding:
    from m4mjax.run.mesh import named_sharding
    return named_sharding(mesh, ("seed",), (seeds,))


def sample_batch(data: jax.Array, key: jax.Array, batch_size: int) -> jax.Array:
    """batch_size distinct sequences of the in-memory dataset (like a shuffled DataLoader's first batch)."""
    idx = jax.random.choice(key, data.shape[0], (batch_size,), replace=False)
    return data[idx]


def _seed_step(cfg: SPSConfig, tx: optax.GradientTransformation, graphdef, params, opt_state, seed_id,
               data, iteration, key):
    k_batch, k_loss = jax.random.split(jax.random.fold_in(key, seed_id))
    x = sample_batch(data, k_batch, cfg.batch_size)
    if x.dtype == jnp.uint8:  # ball frames are stored as 8-bit RGB (the paper's PNGs): [0, 255] -> [0, 1]
        x = x.astype(jnp.float32) / 255.0

    def loss_fn(p):
        return sps_loss(nnx.merge(graphdef, p), x, iteration, k_loss, cfg)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics


def make_train_step(cfg: SPSConfig, state: SPSState | None = None) -> Callable:
    """Jitted ``train_step(state, data, iteration, key) -> (state, metrics)`` over all seeds.

    data: the whole dataset [N, T, *frame] (float32 in [0,1], or uint8 in [0,255]); each seed samples cfg.batch_size.
    iteration: int scalar (drives scheduled sampling; traced, no recompiles). key: one PRNG key per step.
    With ``state`` given, outputs keep its shardings. The input state is donated."""
    cfg.validate()
    tx = make_optimizer(cfg)

    def train_step(state: SPSState, data: jax.Array, iteration: jax.Array, key: jax.Array):
        if data.shape[0] < cfg.batch_size:
            raise ValueError(f"symmetry config 'batch_size'={cfg.batch_size} exceeds the dataset size {data.shape[0]}")
        one = lambda p, o, s: _seed_step(cfg, tx, state.graphdef, p, o, s, data, iteration, key)  # noqa: E731
        params, opt_state, metrics = jax.vmap(one)(state.params, state.opt_state, state.seed_ids)
        return state.replace(params=params, opt_state=opt_state), metrics

    out_shardings = None
    if state is not None:
        state_sh = jax.tree.map(lambda a: a.sharding, state)
        out_shardings = (state_sh, None)
    return jax.jit(train_step, donate_argnums=0, out_shardings=out_shardings)


def select_seeds(state: SPSState, index) -> SPSState:
    """Sub-state of some seeds (int array / slice along the seed axis), ids preserved."""
    return jax.tree.map(lambda a: a[index], state)


def replicated(mesh: Mesh) -> NamedSharding:
    """Replicated sharding (for the dataset array and keys)."""
    return NamedSharding(mesh, P())
