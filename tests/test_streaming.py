"""Training from records without holding a split in memory (issue 32's streamed data): the
split's header (count, shapes, the head's info) is read alone, a training split larger than a
memory cap set for the test trains under it, and streamed 3-D volumes resume mid-epoch to the
same batches and the same patches."""

import tracemalloc

import numpy as np
import pytest

from robust_med import config_base, train
from robust_med.data import pipeline, records
from robust_med.errors import DataError
from robust_med.tasks import get_task_class, segmentation

from tiny import set_keys

MB = 2 ** 20


def volume_config(records_dir, num_train, **overrides):
  c = config_base.task_config('segmentation')
  set_keys(c, {'data.name': 'synthetic', 'data.ndim': 3, 'data.volume_shape': (32, 32, 32),
               'data.patch_size': (16, 16, 16), 'data.num_train': num_train, 'data.num_val': 8,
               'model.base_width': 4, 'model.depth': 2, 'batch_size': 8, 'num_epochs': 2,
               'method.name': 'std', 'progress_bar': False, 'eval.every_epochs': 0,
               'data.pipeline': 'grain', 'data.records_dir': str(records_dir), **overrides})
  return c


def test_the_header_is_the_loaders_count_columns_and_info(tmp_path):
  config = volume_config(tmp_path, 16)
  records.prepare(config, str(tmp_path))
  task = get_task_class('segmentation')(config)
  for split in ('train', 'val'):
    arrays, info = task.load_split(split)
    head = records.header(config, split)
    assert head.num_records == len(arrays['id'])
    assert head.columns == {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()}
    assert head.info == info and isinstance(head.info.spacing, tuple)
  # Records prepared before the header file existed get it on the next prepare, without a rewrite.
  path = records.records_path(str(tmp_path))
  (tmp_path / 'robust_med_records' / '1.0.0' / records.SPLITS_FILE).unlink()
  with pytest.raises(DataError, match='no splits.json entry'):
    records.header(config, 'train')
  records.prepare(config, str(tmp_path))
  assert records.header(config, 'train').num_records == 16
  with pytest.raises(DataError, match='cannot rebuild'):  # e.g. a head's info class renamed
    records.decode_info({'class': 'robust_med.data.msd:NoSuchInfo', 'fields': {}})
  assert path.endswith('1.0.0')


def test_a_split_larger_than_the_memory_cap_trains_from_records(tmp_path, monkeypatch):
  """256 volumes of 32³ voxels (image, label and mask: 9 bytes a voxel, 72 MB) train under a cap
  of 48 MB on what Python and numpy allocate; the trainer never asks the loader for the split."""
  cap, num_train = 48 * MB, 256
  config = volume_config(tmp_path / 'records', num_train)
  records.prepare(config, str(tmp_path / 'records'))
  head = records.header(config, 'train')
  split_bytes = head.num_records * sum(np.dtype(d).itemsize * int(np.prod(s))
                                       for d, s in head.columns.values())
  assert split_bytes > 1.4 * cap

  load = segmentation.Task.load_split

  def no_training_split(self, split):
    assert split != 'train', 'the trainer read the whole training split'
    return load(self, split)

  monkeypatch.setattr(segmentation.Task, 'load_split', no_training_split)
  tracemalloc.start()
  try:
    trainer = train.Trainer(config, str(tmp_path / 'run'))
    assert trainer.num_train == num_train and trainer.train_data is None
    trainer.total_steps = 4  # The memory at stake is the data's, not the number of steps.
    state = trainer.train()
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert int(state.step) == 4 and np.isfinite(trainer.last_loss)
  assert peak < cap, f'{peak / MB:.1f} MB traced at the peak, over the {cap / MB:.0f} MB cap'


def test_streamed_volumes_resume_mid_epoch_to_the_same_batches_and_patches(tmp_path):
  """The head's patches are cut where grain reads (here in a worker process too), from
  (seed, step): the memory path, a worker and a resumed stream give the same patches."""
  config = volume_config(tmp_path, 24, **{'data.num_val': 8})
  records.prepare(config, str(tmp_path))
  task = get_task_class('segmentation')(config)
  arrays, _ = task.load_split('train')
  kw = dict(process_index=0, process_count=1, transform=task.training_batch)

  whole = list(pipeline.train_stream(config, **kw))
  memory = list(pipeline.train_stream(config, pipeline='memory', arrays=arrays, **kw))
  with pipeline.train_stream(config, worker_count=1, **kw) as stream:
    worker = list(stream)
  assert len(whole) == 6  # 3 batches of 8 per epoch, 2 epochs.
  stream = pipeline.train_stream(config, **kw)
  for _ in range(4):  # Into the middle of the second epoch.
    next(stream)
  state = stream.get_state()
  resumed = pipeline.train_stream(config, **kw)
  resumed.set_state(state)
  rest = list(resumed)
  for got, want, mem, work in zip(whole[4:] + whole, rest + whole, memory[4:] + memory,
                                  worker[4:] + worker):
    assert sorted(got) == sorted(want) == sorted(mem) == sorted(work)
    for key in want:
      assert all(np.array_equal(x[key], want[key]) for x in (got, mem, work)), key
  assert whole[0]['image'].shape == (8, 16, 16, 16, 1)  # Patches of the 32³ volumes.
  assert whole[0]['in_image'].all()
  raw = next(pipeline.train_stream(config, process_index=0, process_count=1))
  assert raw['image'].shape == (8, 32, 32, 32, 1)  # Without a transform: the volumes.
