"""Generic grain helpers: per-process record sharding, a resumable shuffled/repeating iterator, global batches.

Each JAX process reads a disjoint contiguous slice of the record indices (grain ShardOptions by
jax.process_index()/process_count()), shuffles and repeats it, and yields process-local batches; the
iterator's position is a small JSON dict saved with checkpoints. ``global_batch`` stitches the local batches
of all processes into one jax.Array sharded over the logical 'batch' axis.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np

from m4mjax.run import mesh as mesh_lib


def process_shard_options(drop_remainder: bool = True) -> grain.sharding.ShardOptions:
    """ShardOptions of this JAX process (index, count)."""
    return grain.sharding.ShardOptions(jax.process_index(), jax.process_count(), drop_remainder=drop_remainder)


def shard_indices(n: int, options: grain.sharding.ShardOptions) -> np.ndarray:
    """The contiguous record indices [start, end) that shard ``options.shard_index`` of n records reads."""
    k, count = options.shard_index, options.shard_count
    if not 0 <= k < count:
        raise ValueError(f"shard index {k} outside 0..{count - 1}")
    if options.drop_remainder:
        per = n // count
        return np.arange(k * per, (k + 1) * per)
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return np.arange(bounds[k], bounds[k + 1])


def sharded_dataset(indices: Sequence[int] | np.ndarray, options: grain.sharding.ShardOptions | None = None
                    ) -> grain.MapDataset:
    """MapDataset over this process's share of ``indices`` (the record ids of a split)."""
    indices = np.asarray(indices, np.int64)
    options = options or process_shard_options()
    mine = indices[shard_indices(len(indices), options)]
    if len(mine) == 0:
        raise ValueError(f"process {options.shard_index}/{options.shard_count} got no records "
                         f"({len(indices)} in the split)")
    return grain.MapDataset.source(mine)


def batched_iterator(ds: grain.MapDataset, batch_size: int, seed: int, *, shuffle: bool = True, repeat: bool = True,
                     random_map: Callable[[Any, np.random.Generator], Any] | None = None,
                     map_fn: Callable[[Any], Any] | None = None, drop_remainder: bool = True,
                     num_threads: int = 2) -> grain.DatasetIterator:
    """Shuffle (per epoch) -> repeat -> seeded random_map / map -> batch -> iterator with JSON-able state.

    ``random_map`` gets a generator derived from (seed, element position), so a restored iterator produces the
    same windows and augmentations as the original run.
    """
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if repeat:
        ds = ds.repeat(None)
    if random_map is not None:
        ds = ds.random_map(random_map, seed=seed)
    if map_fn is not None:
        ds = ds.map(map_fn)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * num_threads, 1))
    return iter(ds.to_iter_dataset(read))


def get_state(it: grain.DatasetIterator) -> str:
    """The iterator position as a JSON string (store it next to the checkpoint)."""
    return json.dumps(it.get_state())


def set_state(it: grain.DatasetIterator, state: str | Mapping[str, Any]) -> grain.DatasetIterator:
    """Restore a position saved by ``get_state``; returns the iterator for chaining."""
    it.set_state(json.loads(state) if isinstance(state, str) else dict(state))
    return it


def global_batch(mesh: jax.sharding.Mesh, local_batch: Mapping[str, np.ndarray],
                 names: Sequence[str | None] = ("batch",)) -> dict[str, jax.Array]:
    """Assemble process-local numpy batches into global jax.Arrays sharded by logical ``names`` (leading dims)."""
    out = {}
    for key, x in local_batch.items():
        x = np.asarray(x)
        axes = tuple(names) + (None,) * (x.ndim - len(names))
        shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        sharding = mesh_lib.named_sharding(mesh, axes[:x.ndim], shape)
        out[key] = jax.make_array_from_process_local_data(sharding, x, shape)
    return out
