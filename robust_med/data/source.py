"""In-memory random-access data source and deterministic batching.

A split is a dict of equal-length numpy arrays (one row per record) that always holds an int
``'id'`` column. Every task head reads its data through `ArraySource` and `batches`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from robust_med.errors import ConfigError, DataError


class ArraySource:
  """Random-access records backed by numpy arrays (the TFDS ``as_data_source`` protocol)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    _check_arrays(arrays)
    self.arrays: dict[str, np.ndarray] = arrays

  def __len__(self) -> int:
    return len(self.arrays['id'])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {key: value[index] for key, value in self.arrays.items()}

  def read(self, index: np.ndarray) -> dict[str, np.ndarray]:
    """The records at positions `index`, stacked into columns."""
    return {key: value[index] for key, value in self.arrays.items()}

  def __repr__(self) -> str:
    columns = ', '.join(f'{k}: {v.dtype}{list(v.shape[1:])}' for k, v in self.arrays.items())
    return f'ArraySource(len={len(self)}, {columns})'


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
  """Raises DataError unless the columns have one length and an integer 'id' column."""
  if 'id' not in arrays:
    raise DataError(f"data split has no 'id' column (columns: {sorted(arrays)}): "
                    "add 'id' = np.arange(N, dtype=np.int32) to the split's arrays")
  if not np.issubdtype(arrays['id'].dtype, np.integer) or arrays['id'].ndim != 1:
    raise DataError(f"data split 'id' column is {arrays['id'].dtype} with shape "
                    f"{arrays['id'].shape}: it must be a 1-D integer array (np.arange(N))")
  lengths = {key: (value.shape[0] if value.ndim else None) for key, value in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise DataError(f'data split columns have different lengths {lengths}: '
                    'every column needs one row per record')


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
  """Number of batches `batches` yields for `n` records."""
  _check_batch_size(batch_size)
  return n // batch_size if drop_remainder else -(-n // batch_size)


def check_training_size(n: int, batch_size: int, split: str = 'train') -> None:
  """DataError for an empty training split, ConfigError for one smaller than a batch: each with
  its own fix."""
  if n == 0:
    raise DataError(f'the training split {split!r} is empty: put examples in it, or train on '
                    'another split with --config.data.train_split=NAME')
  if n < batch_size:
    raise ConfigError(f'the training split {split!r} has {n} examples, fewer than '
                      f'config.batch_size = {batch_size}: lower the batch size to at most {n}.')


def _check_batch_size(batch_size: int) -> None:
  if int(batch_size) != batch_size or batch_size < 1:
    raise ConfigError(f'batch size {batch_size!r} is not a positive integer: set it to 1 or more')


def epoch_order(n: int, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> np.ndarray:
  """Record order for one epoch: a deterministic function of (seed, epoch)."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed, epoch]).permutation(n)


def batches(source: ArraySource, batch_size: int, *, shuffle: bool, seed: int = 0,
            epoch: int = 0, drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Yields one epoch of batches (dicts of stacked arrays) from `source`.

  The order depends only on (seed, epoch), so a resumed run sees the same batches. With
  ``drop_remainder=False`` the last batch may be smaller than `batch_size` (callers pad it).
  """
  _check_batch_size(batch_size)
  order = epoch_order(len(source), shuffle=shuffle, seed=seed, epoch=epoch)
  arrays = source.arrays
  for b in range(num_batches(len(order), batch_size, drop_remainder)):
    index = order[b * batch_size:(b + 1) * batch_size]
    yield {key: value[index] for key, value in arrays.items()}


def in_order(source, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every record of `source` in order, in batches of `batch_size` (the last one smaller): the
  same batches as ``batches(source, batch_size, shuffle=False, drop_remainder=False)``. `source`
  is anything with ``len()`` and ``read(positions) -> columns`` (an `ArraySource`, or a split's
  records read from disk, `robust_med.data.pipeline.records_source`)."""
  _check_batch_size(batch_size)
  n = len(source)
  for start in range(0, n, batch_size):
    yield source.read(np.arange(start, min(n, start + batch_size)))


def evaluation_subset(arrays: dict, max_samples: int) -> dict:
  """At most `max_samples` records spread evenly over the split (all when 0), so a capped
  evaluation still covers every volume rather than the first few."""
  n = len(arrays['id'])
  if not max_samples or max_samples >= n:
    return arrays
  index = np.linspace(0, n - 1, max_samples).round().astype(int)
  return {k: v[index] for k, v in arrays.items()}
