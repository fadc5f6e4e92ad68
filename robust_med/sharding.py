"""The device mesh, how arrays are laid out on it, and multi-process (multi-host) start-up.

One mesh axis, 'data'. Batches and the per-sample margins are split along it; parameters, optimizer
state, step, RNG and ξ are replicated. The axis is `AxisType.Auto` on purpose: the train step gathers
`margins[batch['id']]` and scatters the updated margins back, and the ids of one batch shard live
on other devices' margin shards, so the compiler must insert the communication; with Explicit axes
every such gather/scatter would need hand-written sharding annotations.

Multi-process runs (several hosts, or one process per GPU): `initialize_distributed` starts JAX's
distributed runtime before anything touches a device; the mesh then spans every process's devices
(`jax.devices()`), each process feeds only the rows of each global batch that its own devices hold
(`local_rows`, `put_batch(..., global_size=...)`), and `host_value` gathers a sharded array back to
every host. In a single process every function here does exactly what it did before.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from robust_med.errors import ConfigError, UserError

DATA_AXIS = 'data'


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           initialization_timeout: int = 300) -> None:
  """Starts JAX's multi-process runtime (call once, before any JAX computation).

  Arguments left None are auto-detected by `jax.distributed.initialize` (SLURM, Open MPI, Cloud
  TPU pods, Kubernetes; `JAX_COORDINATOR_ADDRESS` is read from the environment). On CPU the
  processes' collectives run over gloo (TCP). UserError (one line) when it cannot start.
  """
  # JAX's default since 0.4.3x; set explicitly so that CPU processes never fall back to none.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout)
  except (RuntimeError, ValueError, TypeError) as e:
    detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    raise UserError(
        f'Could not start the multi-process run ({detail}): pass --coordinator_address=HOST:PORT '
        '(reachable from every process), --num_processes and a distinct --process_id to each '
        'process, or start the processes under SLURM / Open MPI / a TPU pod with --distributed '
        'alone, so that JAX detects them.') from None


def available_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def configure_host_devices(n: int, batch_size: int = 0) -> int | None:
  """Runs the CPU as `n` devices (0 = one per available core, lowered to a divisor of
  `batch_size` when given), so that the data-parallel mesh uses every core: XLA:CPU runs one
  device's convolutions on about one core. Must run before JAX's first operation. Does nothing
  (returns None) when XLA_FLAGS already sets the host device count, when n is 1, or when the
  backends were already started with another count (a library caller's choice stands)."""
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '') or n == 1:
    return None
  if n == 0:
    n = available_cores()
    while batch_size and batch_size % n:
      n -= 1
  from jax._src import xla_bridge  # The only way to ask whether backends are running.
  if xla_bridge.backends_are_initialized():
    return None
  jax.config.update('jax_num_cpu_devices', n)
  return n


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over the first `num_devices` local devices (0 = all); in a
  multi-process run over every process's devices (`num_devices` must then be 0 or all)."""
  if is_multiprocess():
    available = jax.devices()
    if num_devices not in (0, len(available)):
      raise ConfigError(f'config.mesh.num_devices = {num_devices} in a run of '
                        f'{jax.process_count()} processes with {len(available)} devices in all: '
                        'a multi-process run uses every device; set it to 0.')
    # Sorted by (process, id), so each process's devices hold one contiguous block of a batch.
    available = sorted(available, key=lambda d: (d.process_index, d.id))
    return jax.sharding.Mesh(np.asarray(available), (DATA_AXIS,), axis_types=(AxisType.Auto,))
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


def local_rows(mesh, global_size: int) -> np.ndarray:
  """The positions (sorted) in a global batch of `global_size` records that this process's
  devices hold; `arange(global_size)` in a single process."""
  index = data_sharding(mesh).addressable_devices_indices_map((global_size,))
  rows = np.unique(np.concatenate([np.arange(global_size)[i[0]] for i in index.values()]))
  return rows.astype(np.int64)


def _assemble(local: np.ndarray, rows: np.ndarray, global_size: int, target) -> jax.Array:
  """A global array of `global_size` records sharded by `target` from this process's `rows`."""
  position = np.full(global_size, -1, np.int64)
  position[rows] = np.arange(len(rows))

  def shard(index):
    wanted = position[np.arange(global_size)[index[0]]]
    assert (wanted >= 0).all(), 'a device asked for a row this process did not load'
    return local[(wanted, *index[1:])]

  return jax.make_array_from_callback((global_size, *local.shape[1:]), target, shard)


def put_batch(batch: dict[str, np.ndarray], mesh, *, global_size: int | None = None
              ) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, split along the data axis.

  Without `global_size`, `batch` is the whole batch (the same on every process). With it, `batch`
  holds only this process's rows of a global batch of `global_size` records (`local_rows` order)
  and the global array is assembled from every process's part. In a single process this is
  `jax.device_put` of the batch, as it always was."""
  target = data_sharding(mesh)
  if target.is_fully_addressable:
    return jax.device_put(batch, target)
  if global_size is None:
    global_size = len(batch['id'])
    rows = np.arange(global_size)
  else:
    rows = local_rows(mesh, global_size)
    if len(batch['id']) != len(rows):
      raise ValueError(f'this process holds {len(rows)} rows of a global batch of {global_size} '
                       f'but was given {len(batch["id"])}')
  return {k: _assemble(np.asarray(v), rows, global_size, target) for k, v in batch.items()}


def put_global(tree: Any, shardings: Any) -> Any:
  """Places a pytree whose value is the same on every process onto `shardings` (a matching
  pytree). In a single process `jax.device_put`; across processes each process copies its own
  shards from its host copy, with no communication (the values must agree: they come from the
  same seed and code on every process)."""
  if not is_multiprocess():
    return jax.device_put(tree, shardings)
  host = jax.device_get(tree)
  return jax.tree.map(lambda v, s: jax.make_array_from_callback(
      np.shape(v), s, lambda index, v=np.asarray(v): np.asarray(v[index])), host,
      shardings)


def host_value(x: jax.Array) -> np.ndarray:
  """The whole value of `x` on this host: `device_get` when this process holds all of it, else
  gathered from every process (a collective: every process must call it at the same point)."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def pad_batch(batch: dict[str, np.ndarray], size: int) -> tuple[dict[str, np.ndarray], int]:
  """Pads a partial batch to `size` records by repeating its first record; returns the valid count."""
  n = len(batch['id'])
  if n == size:
    return batch, n
  idx = np.concatenate([np.arange(n), np.zeros(size - n, dtype=np.int64)])
  return {k: v[idx] for k, v in batch.items()}, n
