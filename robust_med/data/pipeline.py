"""Training batches from memory or from TFDS records through grain: one entry point, one order.

``config.data.pipeline`` picks the path:

* ``'memory'`` (default): the split's arrays (`Task.load_split`) in memory, batched by
  `robust_med.data.batches` as always.
* ``'grain'``: the records `python -m robust_med.data.records` prepared into
  ``config.data.records_dir``, read through a grain `MapDataset` that visits them in exactly the
  in-memory order (`EpochOrderDataset`), batched by grain, decoded in
  ``config.data.worker_count`` worker processes (0 = in the training process).

Both yield the same batches for the same seed: global step s is batch s % S of epoch s // S
(S = N // batch_size steps per epoch, the last partial batch dropped), epoch e visits the records
in `epoch_order(N, shuffle=True, seed=seed, epoch=e)`. In a run of several processes each process
gets only its `rows` of every global batch (default: the contiguous block
[p·B/P, (p+1)·B/P) of process p of P), and reads only those records.

`train_stream` gives the batches of a whole run (or from a resumed step on); `train_batches` those
of one epoch. Both return a `BatchStream`, a grain `DatasetIterator`: `get_state`/`set_state`, and
`grain.checkpoint.CheckpointSave(stream)` / `CheckpointRestore(stream)` put its position into an
Orbax checkpoint. The order is a function of (seed, step) alone, so the training step a checkpoint
already stores is enough to resume: ``train_stream(config, ..., start_step=step)``.

A `transform(batch, rng)` (the trainer passes the head's `Task.training_batch`, e.g. random
patches of volumes) runs on each batch where it is read: in grain's reading threads or
``worker_count`` worker processes, or in the training process for the memory path. Its `rng` is
drawn from (seed, global step), so both paths, and a resumed run, cut the same patches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from robust_med.data.source import ArraySource, check_training_size, epoch_order
from robust_med.errors import ConfigError, DataError

PIPELINES = ('memory', 'grain')
# Reading threads and buffered batches per process (elements here are whole batches).
READ_THREADS = 2
PREFETCH_BATCHES = 4


def process_rows(batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> np.ndarray:
  """Positions in each global batch that process `process_index` of `process_count` reads: the
  contiguous block [p·B/P, (p+1)·B/P). Defaults: this JAX process of all of them."""
  if process_index is None or process_count is None:
    import jax  # Local import: only needed for the defaults.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ConfigError(f'config.batch_size = {batch_size} is not divisible by the '
                      f'{process_count} processes: use a multiple of {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, {process_count})')
  local = batch_size // process_count
  return np.arange(process_index * local, (process_index + 1) * local)


def steps_per_epoch(num_records: int, batch_size: int) -> int:
  """Full batches per epoch (the last partial batch is dropped, as the trainer does)."""
  return num_records // batch_size


class EpochOrder:
  """Which record each of this process's positions reads: position j of the run is row
  ``rows[j % R]`` of global step ``j // R`` (R = len(rows)), and global step s is batch s % S of
  epoch s // S in `epoch_order`. Picklable (grain's worker processes get a copy)."""

  def __init__(self, num_records: int, batch_size: int, rows: Sequence[int], *, seed: int,
               shuffle: bool = True):
    self.num_records, self.batch_size = int(num_records), int(batch_size)
    self.rows = np.asarray(rows, np.int64)
    self.seed, self.shuffle = int(seed), bool(shuffle)
    self.steps_per_epoch = steps_per_epoch(self.num_records, self.batch_size)
    check_training_size(self.num_records, self.batch_size)
    if len(self.rows) == 0 or self.rows.min() < 0 or self.rows.max() >= self.batch_size:
      raise ValueError(f'rows {self.rows} are not positions in a batch of {self.batch_size}')
    self._cache: dict[int, np.ndarray] = {}

  def order(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = epoch_order(self.num_records, shuffle=self.shuffle, seed=self.seed,
                                       epoch=epoch)
    return self._cache[epoch]

  def step_records(self, step: int) -> np.ndarray:
    """Record positions of this process's rows of global step `step`."""
    epoch, b = divmod(int(step), self.steps_per_epoch)
    return self.order(epoch)[b * self.batch_size + self.rows]

  def record(self, position: int) -> int:
    step, r = divmod(int(position), len(self.rows))
    return int(self.step_records(step)[r])

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != '_cache'}

  def __setstate__(self, state):
    self.__dict__.update(state, _cache={})


class EpochOrderDataset(grain.MapDataset):
  """The records of `parent` (a grain MapDataset over the split) in the order of `order`, for
  `num_steps` global steps: element j is this process's j-th record of the run. Batched by
  ``len(order.rows)`` it gives this process's part of each global batch, element s = step s."""

  def __init__(self, parent: grain.MapDataset, order: EpochOrder, num_steps: int):
    super().__init__(parent)
    self._order = order
    self._length = int(num_steps) * len(order.rows)

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._order.record(index % self._length)]

  def _getitems(self, indices):
    return self._parent._getitems([self._order.record(i % self._length) for i in indices])  # pylint: disable=protected-access

  def __str__(self) -> str:
    o = self._order
    return (f'EpochOrderDataset(records={o.num_records}, batch_size={o.batch_size}, '
            f'rows={o.rows[0]}..{o.rows[-1]}, seed={o.seed}, shuffle={o.shuffle})')


class _RecordsSource:
  """A split's records as dicts of numpy arrays; reads with the tfds data source in each
  process that uses it (opened lazily, so that pickling it to a worker pickles no open file)."""

  def __init__(self, config, split: str, records_dir: str):
    from robust_med.data import records as records_lib  # Local import: needs tfds.
    source = records_lib.open_split(config, split, records_dir)  # Checks settings and split.
    self._builder_dir = records_lib.records_path(records_dir)
    self._split = split
    self._len = len(source)
    self._source = source

  @property
  def source(self):
    if self._source is None:
      import tensorflow_datasets as tfds
      self._source = tfds.builder_from_directory(self._builder_dir).as_data_source(self._split)
    return self._source

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.source[index]

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    return list(self.source.__getitems__(list(indices)))

  def read(self, index: Sequence[int]) -> dict[str, np.ndarray]:
    """The records at positions `index`, stacked into columns (`data.source.in_order`)."""
    rows = self.__getitems__([int(i) for i in index])
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]} if rows else {}

  def __getstate__(self):
    return {k: (None if k == '_source' else v) for k, v in self.__dict__.items()}

  def __repr__(self) -> str:
    return f'_RecordsSource({self._builder_dir}, split={self._split!r}, len={self._len})'


def records_source(config, split: str, records_dir: str | None = None) -> _RecordsSource:
  """Random access to the prepared records of `split` (``len``, ``read(positions)``), read from
  disk as asked: what a run iterates instead of holding the split in memory."""
  records_dir = config.data.get('records_dir', '') if records_dir is None else records_dir
  return _RecordsSource(config, split, records_dir)


Transform = Callable[[dict, np.random.Generator], dict]


def step_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of global step `step`'s transform (patches): a function of (seed, step)."""
  return np.random.default_rng(np.random.SeedSequence([int(seed), int(step)]))


class StepTransform:
  """grain's `map_with_index` of a stream's batches: element s (global step s) becomes
  `transform(batch, step_rng(seed, s))`. Picklable, for grain's worker processes."""

  def __init__(self, transform: Transform, seed: int):
    self.transform, self.seed = transform, int(seed)

  def __call__(self, step: int, batch: dict) -> dict:
    return self.transform(batch, step_rng(self.seed, step))


class BatchStream(grain.DatasetIterator):
  """Batches of global steps [start_step, stop_step) of a run, this process's rows of each, from
  memory or from records through grain. A grain `DatasetIterator`: `get_state()` is a JSON-able
  dict {'step': next global step, ...} and `set_state` continues from one; pass the stream to
  `grain.checkpoint.CheckpointSave` / `CheckpointRestore` to keep it in an Orbax checkpoint.
  Close it (or use it as a context manager) to stop grain's worker processes. `transform`: see
  the module's docstring (default: batches as read)."""

  def __init__(self, config, *, arrays: Mapping[str, np.ndarray] | None = None,
               split: str | None = None, start_step: int = 0, stop_step: int | None = None,
               num_epochs: int | None = None, batch_size: int | None = None,
               seed: int | None = None, rows: Sequence[int] | None = None,
               process_index: int | None = None, process_count: int | None = None,
               pipeline: str | None = None, records_dir: str | None = None,
               worker_count: int | None = None, shuffle: bool = True,
               transform: Transform | None = None):
    super().__init__()
    self.transform = transform
    self._grain_iter = None  # Set first: close() runs even when the checks below raise.
    data = config.data
    self.pipeline = data.get('pipeline', 'memory') if pipeline is None else pipeline
    if self.pipeline not in PIPELINES:
      raise ConfigError(f'config.data.pipeline = {self.pipeline!r}: use one of {PIPELINES}.')
    self.split = data.train_split if split is None else split
    self.batch_size = int(config.batch_size if batch_size is None else batch_size)
    self.seed = int(config.seed if seed is None else seed)
    self.records_dir = data.get('records_dir', '') if records_dir is None else records_dir
    self.worker_count = int(data.get('worker_count', 0) if worker_count is None else worker_count)
    if self.worker_count < 0:
      raise ConfigError(f'config.data.worker_count = {self.worker_count} is negative: use 0 or '
                        'a number of worker processes.')
    self.rows = (process_rows(self.batch_size, process_index, process_count) if rows is None
                 else np.asarray(rows, np.int64))
    if self.pipeline == 'grain':
      self._records = _RecordsSource(config, self.split, self.records_dir)
      self.num_records = len(self._records)
      if arrays is not None and len(arrays['id']) != self.num_records:
        raise DataError(f'the records of split {self.split!r} in {self.records_dir} hold '
                        f'{self.num_records} examples but the split has {len(arrays["id"])}: '
                        'prepare them again (python -m robust_med.data.records ... --overwrite).')
    else:
      if arrays is None:
        from robust_med.tasks import get_task_class  # Local import keeps this module light.
        arrays, _ = get_task_class(config.task)(config).load_split(self.split)
      self._arrays = ArraySource(arrays).arrays
      self.num_records = len(self._arrays['id'])
    self.order = EpochOrder(self.num_records, self.batch_size, self.rows, seed=self.seed,
                            shuffle=shuffle)
    self.steps_per_epoch = self.order.steps_per_epoch
    epochs = int(config.num_epochs if num_epochs is None else num_epochs)
    self.stop_step = self.steps_per_epoch * epochs if stop_step is None else int(stop_step)
    self.start_step = int(start_step)
    if not 0 <= self.start_step <= self.stop_step:
      raise ValueError(f'start_step {start_step} is not in [0, {self.stop_step}]')
    self._grain_start = self.start_step
    self.step = self.start_step

  # --- Reading ----------------------------------------------------------------------------------

  def _memory_batch(self, step: int) -> dict[str, np.ndarray]:
    index = self.order.step_records(step)
    return {key: value[index] for key, value in self._arrays.items()}

  def dataset(self) -> grain.MapDataset:
    """The grain MapDataset of this process's batches of the whole run (element s = step s)."""
    records = grain.MapDataset.source(self._records)
    ordered = EpochOrderDataset(records, self.order, self.stop_step)
    batched = ordered.batch(len(self.rows), drop_remainder=True)
    if self.transform is None:
      return batched
    return batched.map_with_index(StepTransform(self.transform, self.seed))

  def _start_grain(self, start: int, state: dict | None = None) -> None:
    self._close_grain()
    ds = self.dataset()[start:self.stop_step]
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                 prefetch_buffer_size=PREFETCH_BATCHES))
    if self.worker_count:
      _absl_flags_for_grain_workers()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
    self._grain_iter = iter(it_ds)
    self._grain_start = start
    if state is not None:
      self._grain_iter.set_state(state)

  def __next__(self) -> dict[str, np.ndarray]:
    if self.step >= self.stop_step:
      raise StopIteration
    if self.pipeline == 'memory':
      batch = self._memory_batch(self.step)
      if self.transform is not None:
        batch = self.transform(batch, step_rng(self.seed, self.step))
    else:
      if self._grain_iter is None:
        self._start_grain(self.step)
      batch = next(self._grain_iter)
    self.step += 1
    return batch

  def __len__(self) -> int:
    """Batches left."""
    return self.stop_step - self.step

  # --- State ------------------------------------------------------------------------------------

  def get_state(self) -> dict[str, Any]:
    state = {'step': int(self.step), 'pipeline': self.pipeline, 'seed': self.seed,
             'batch_size': self.batch_size, 'num_records': self.num_records}
    if self._grain_iter is not None:
      state['grain'] = {'start': int(self._grain_start), 'worker_count': self.worker_count,
                        'state': self._grain_iter.get_state()}
    return state

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues from `state` (from `get_state` of a stream over the same data, seed and batch
    size, of either pipeline)."""
    for key in ('seed', 'batch_size', 'num_records'):
      if key in state and state[key] != getattr(self, key):
        raise DataError(f'the saved data-iterator state has {key} = {state[key]} but this run '
                        f'has {getattr(self, key)}: resume with the settings of the saved run.')
    step = int(state['step'])
    if not self.start_step <= step <= self.stop_step:
      raise ValueError(f'saved step {step} is outside this stream\'s steps [{self.start_step}, '
                       f'{self.stop_step}]')
    self.step = step
    saved = state.get('grain')
    if self.pipeline == 'grain':
      if (saved is not None and step < self.stop_step and saved.get('worker_count') ==
          self.worker_count and self.start_step <= int(saved['start']) <= step):
        # grain's own checkpointing: the iterator over the same slice, moved to the saved spot.
        self._start_grain(int(saved['start']), saved['state'])
      else:  # Another pipeline or worker count wrote it: the step alone says where to go on.
        self._close_grain()  # Restarts at `step` on the next batch.

  # --- Clean-up ---------------------------------------------------------------------------------

  def _close_grain(self) -> None:
    if self._grain_iter is not None:
      close = getattr(self._grain_iter, 'close', None)
      if close:
        close()
      self._grain_iter = None

  def close(self) -> None:
    self._close_grain()
    super().close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __str__(self) -> str:
    return (f'BatchStream({self.pipeline}, split={self.split!r}, steps {self.step}..'
            f'{self.stop_step}, batch {self.batch_size}, rows {len(self.rows)})')


def _absl_flags_for_grain_workers() -> None:
  """grain 0.2.x reads an absl flag when it starts worker processes, which fails unless absl has
  parsed the flags (google/grain issue 1355, fixed after 0.2.18). The command-line entry points
  parse them (absl.app); a library caller or a test has not, and gets the flags' defaults."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_stream(config, *, arrays: Mapping[str, np.ndarray] | None = None,
                 split: str | None = None, start_step: int = 0, **kwargs) -> BatchStream:
  """The training batches of a whole run from global step `start_step` on (a resumed run passes
  its checkpoint's step), in config.data.pipeline's way. `arrays`: the split's arrays when the
  caller has them (the memory path uses them; the grain path checks the record count against
  them); default split: config.data.train_split. Keyword arguments: see `BatchStream`."""
  return BatchStream(config, arrays=arrays, split=split, start_step=start_step, **kwargs)


def train_batches(config, *, epoch: int, skip: int = 0,
                  arrays: Mapping[str, np.ndarray] | None = None, split: str | None = None,
                  **kwargs) -> BatchStream:
  """The batches of one epoch after the first `skip` (for the in-memory path and one process,
  exactly `data.batches(ArraySource(arrays), batch_size, shuffle=True, seed, epoch)` less the
  first `skip`). Keyword arguments: see `BatchStream`."""
  stream = BatchStream(config, arrays=arrays, split=split, num_epochs=0, **kwargs)
  spe = stream.steps_per_epoch
  if not 0 <= skip <= spe:
    raise ValueError(f'skip {skip} is not in [0, {spe}]')
  stream.start_step = stream.step = epoch * spe + int(skip)
  stream.stop_step = (epoch + 1) * spe
  return stream

