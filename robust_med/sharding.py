"""The device mesh and how arrays are laid out on it.

One mesh axis, 'data'. Batches and the per-sample margins are split along it; parameters, optimizer
state, step, RNG and ξ are replicated. The axis is `AxisType.Auto` on purpose: the train step gathers
`margins[batch['id']]` and scatters the updated margins back, and the ids of one batch shard live
on other devices' margin shards, so the compiler must insert the communication; with Explicit axes
every such gather/scatter would need hand-written sharding annotations.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from robust_med.errors import ConfigError

DATA_AXIS = 'data'


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over the first `num_devices` local devices (0 = all)."""
  available = jax.local_devices()
  n = num_devices or len(available)
  if n > len(available):
    raise ConfigError(f'config.mesh.num_devices = {n} but only {len(available)} devices are '
                      'visible: lower it, or 0 to use all.')
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=available[:n])


def data_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def put_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, split along the data axis."""
  return jax.device_put(batch, data_sharding(mesh))


def pad_batch(batch: dict[str, np.ndarray], size: int) -> tuple[dict[str, np.ndarray], int]:
  """Pads a partial batch to `size` records by repeating its first record; returns the valid count."""
  n = len(batch['id'])
  if n == size:
    return batch, n
  idx = np.concatenate([np.arange(n), np.zeros(size - n, dtype=np.int64)])
  return {k: v[idx] for k, v in batch.items()}, n
