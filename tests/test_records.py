"""TFDS array_record records of a head's splits, read through grain: the stored records equal the
loader's arrays, the grain batches equal the in-memory ones for the same seed (also with a worker
process and split across processes), the iterator state resumes mid-epoch, and bad folders or
splits end in one-line errors."""

import json
import sys

import numpy as np
import pytest

from robust_med import config_base
from robust_med import data as data_lib
from robust_med.data import pipeline, records
from robust_med.errors import ConfigError, DataError, UserError
from robust_med.tasks import get_task_class

from cli_helpers import REPO, error_line, run
from msd_fixture import make_msd
from tiny import set_keys, tiny_config

EPOCHS, BATCH = 2, 8


def segmentation_config(records_dir='', **overrides):
  # 24 training records of 16×16 phantoms: 3 batches of 8 per epoch.
  return tiny_config('std', **{'data.num_train': 24, 'data.num_val': 6, 'batch_size': BATCH,
                               'num_epochs': EPOCHS, 'data.pipeline': 'grain',
                               'data.records_dir': str(records_dir), **overrides})


def classification_config(records_dir=''):
  # 20 training records: 2 batches of 8 per epoch, the last 4 records of each epoch dropped.
  c = config_base.task_config('classification')
  set_keys(c, {'data.name': 'synthetic', 'data.image_size': 16, 'data.num_train': 20,
               'data.num_val': 4, 'batch_size': BATCH, 'num_epochs': EPOCHS, 'seed': 3,
               'data.pipeline': 'grain', 'data.records_dir': str(records_dir)})
  c.lock()
  return c


def loader_arrays(config, split):
  return get_task_class(config.task)(config).load_split(split)[0]


def memory_batches(arrays, config):
  source = data_lib.ArraySource(arrays)
  return [b for epoch in range(config.num_epochs)
          for b in data_lib.batches(source, config.batch_size, shuffle=True, seed=config.seed,
                                    epoch=epoch)]


def assert_same_batches(got, want):
  assert len(got) == len(want)
  for a, b in zip(got, want):
    assert sorted(a) == sorted(b)
    for key in b:
      assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """Records of the segmentation and classification synthetic sets, and their configs."""
  out = {}
  for name, make in (('segmentation', segmentation_config),
                     ('classification', classification_config)):
    folder = tmp_path_factory.mktemp(name)
    config = make(folder)
    counts = records.prepare(config, str(folder))
    assert counts == {s: len(loader_arrays(config, s)['id']) for s in ('train', 'val', 'test')}
    out[name] = config
  return out


@pytest.mark.parametrize('head', ['segmentation', 'classification'])
def test_records_equal_the_loader_arrays(prepared, head):
  config = prepared[head]
  for split in ('train', 'val'):
    want = loader_arrays(config, split)
    got = records.read_arrays(config, split)
    assert sorted(got) == sorted(want)  # Every column, 'id' included.
    for key in want:
      assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key
    np.testing.assert_array_equal(got['id'], np.arange(len(want['id'])))
  assert 'tensorflow' not in sys.modules  # Written and read without TensorFlow.


@pytest.mark.parametrize('head', ['segmentation', 'classification'])
def test_grain_batches_equal_the_in_memory_batches(prepared, head):
  config = prepared[head]
  arrays = loader_arrays(config, 'train')
  want = memory_batches(arrays, config)
  with pipeline.train_stream(config, process_index=0, process_count=1) as stream:
    assert_same_batches(list(stream), want)
  # The same switch with pipeline=memory gives the same batches, and so does one epoch at a time.
  memory = pipeline.train_stream(config, pipeline='memory', arrays=arrays, process_count=1,
                                 process_index=0)
  assert_same_batches(list(memory), want)
  per_epoch = [b for epoch in range(EPOCHS)
               for b in pipeline.train_batches(config, epoch=epoch, process_index=0,
                                               process_count=1)]
  assert_same_batches(per_epoch, want)


def test_grain_batches_with_a_worker_process(prepared):
  config = prepared['segmentation']
  want = memory_batches(loader_arrays(config, 'train'), config)
  with pipeline.train_stream(config, worker_count=1, process_index=0,
                             process_count=1) as stream:
    assert_same_batches(list(stream), want)


def test_process_slices_concatenate_to_the_global_batch(prepared):
  config = prepared['segmentation']
  want = memory_batches(loader_arrays(config, 'train'), config)
  for source in ('grain', 'memory'):
    parts = [list(pipeline.train_stream(config, pipeline=source, process_index=p,
                                        process_count=4)) for p in range(4)]
    assert all(len(b['id']) == BATCH // 4 for part in parts for b in part)
    joined = [{k: np.concatenate([part[s][k] for part in parts]) for k in want[0]}
              for s in range(len(want))]
    assert_same_batches(joined, want)
  # Process 1 of 2 reads rows 4..7 of each global batch and nothing else.
  np.testing.assert_array_equal(pipeline.process_rows(BATCH, 1, 2), np.arange(4, 8))
  with pytest.raises(ConfigError, match='not divisible'):
    pipeline.process_rows(BATCH, 0, 3)


def test_restored_state_continues_with_the_next_batch(prepared, tmp_path):
  config = prepared['segmentation']
  want = memory_batches(loader_arrays(config, 'train'), config)
  stream = pipeline.train_stream(config, process_index=0, process_count=1)
  for _ in range(4):  # Mid-epoch 1 (3 batches per epoch).
    next(stream)
  state = json.loads(json.dumps(stream.get_state()))  # JSON-able, as a checkpoint keeps it.
  assert state['step'] == 4 and 'grain' in state
  rest = list(stream)
  assert_same_batches(rest, want[4:])
  for kind in ('grain', 'memory'):  # grain's own iterator state, or the step alone.
    restored = pipeline.train_stream(config, pipeline=kind, process_index=0, process_count=1)
    restored.set_state(state)
    assert_same_batches(list(restored), want[4:])
  # A run resumed from its checkpoint's step alone reads the same batches.
  assert_same_batches(list(pipeline.train_stream(config, start_step=4, process_index=0,
                                                 process_count=1)), want[4:])
  # Through grain's Orbax checkpoint handler.
  import grain
  from etils import epath
  handler = grain.checkpoint.CheckpointHandler()
  saver = pipeline.train_stream(config, process_index=0, process_count=1)
  for _ in range(5):
    next(saver)
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(saver))
  restored = pipeline.train_stream(config, process_index=0, process_count=1)
  handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(restored))
  assert_same_batches(list(restored), want[5:])
  with pytest.raises(DataError, match='seed'):
    pipeline.train_stream(config, seed=1, process_index=0, process_count=1).set_state(state)


def test_missing_records_and_unknown_splits_are_one_line_errors(prepared, tmp_path):
  config = prepared['segmentation']
  with pytest.raises(DataError, match='does not exist.*python -m robust_med.data.records'):
    pipeline.train_stream(segmentation_config(tmp_path / 'nowhere'))
  with pytest.raises(DataError, match='holds no robust_med records'):
    pipeline.train_stream(segmentation_config(tmp_path))
  with pytest.raises(DataError, match=r"unknown split 'nope'.*\['train', 'val', 'test'\]"):
    pipeline.train_stream(config, split='nope')
  # Records prepared with other data settings are refused, naming the keys.
  other = segmentation_config(config.data.records_dir, **{'data.seed': 5})
  with pytest.raises(DataError, match='data.seed'):
    records.open_split(other, 'train')
  with pytest.raises(DataError, match='--overwrite'):
    records.prepare(other, config.data.records_dir)
  for bad, match in (({'data.pipeline': 'tfds'}, 'data.pipeline'),
                     ({'data.records_dir': ''}, 'records_dir is empty'),
                     ({'data.worker_count': -1}, 'worker_count')):
    with pytest.raises(ConfigError, match=match):
      config_base.validate(segmentation_config(tmp_path, **bad))
  config_base.validate(config)
  assert all(issubclass(e, UserError) for e in (DataError, ConfigError))


def test_every_declared_split_is_prepared(tmp_path):
  """An MSD folder whose splits.json declares its own splits: each becomes a records split (the
  folder is the builder's manual_dir)."""
  root = make_msd(tmp_path / 'msd', cases=('a', 'b', 'c', 'd'), image_shape=(16, 16, 4),
                  splits={'train': ['a', 'b'], 'val': ['c'], 'external': ['d']})
  config = segmentation_config(tmp_path / 'records', **{
      'data.name': 'msd', 'data.root': str(root), 'data.patch_size': (16, 16),
      'data.foreground_only': False})
  declared = get_task_class('segmentation')(config).splits()
  assert set(declared) == {'train', 'val', 'external'}
  counts = records.prepare(config, config.data.records_dir)
  assert set(counts) == set(declared)
  for split in declared:
    want = loader_arrays(config, split)
    got = records.read_arrays(config, split)
    assert counts[split] == len(want['id'])
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_prepare_command(tmp_path):
  out = tmp_path / 'records'
  config = str(REPO / 'configs' / 'prostate_amat.py') + ':synthetic'
  tiny = ['--config.data.num_train=16', '--config.data.num_val=4',
          '--config.data.patch_size=(16,16)', '--config.model.depth=2']
  proc = run('robust_med.data.records', f'--config={config}', f'--records_dir={out}', *tiny)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train: 16 records' in proc.stdout and (out / records.NAME / records.VERSION).is_dir()
  line = error_line(run('robust_med.data.records', f'--config={config}', '--splits=nope',
                        f'--records_dir={tmp_path / "other"}', *tiny))
  assert "unknown split 'nope'" in line


def test_grain_path_trains_to_the_same_parameters_as_the_memory_path(prepared, tmp_path):
  import jax
  from robust_med import train
  folder = prepared['segmentation'].data.records_dir
  states = {}
  for pipe in ('memory', 'grain'):
    # AMAT (ξ after a 1-epoch STD warm-up), 3 epochs of 3 steps, resumed from a checkpoint at
    # step 4 in the middle of epoch 2 (the skip of a resumed epoch) on the grain path.
    config = tiny_config('amat', **{'data.num_train': 24, 'data.num_val': 6,
                                    'batch_size': BATCH, 'num_epochs': 3,
                                    'data.pipeline': pipe, 'data.records_dir': folder})
    workdir = str(tmp_path / pipe)
    if pipe == 'grain':
      partial = tiny_config('amat', **{'data.num_train': 24, 'data.num_val': 6,
                                       'batch_size': BATCH, 'num_epochs': 3,
                                       'data.pipeline': pipe, 'data.records_dir': folder})
      trainer = train.Trainer(partial, workdir)
      trainer.total_steps = 4  # Stop after step 4 (a checkpoint is written there).
      trainer.train()
    states[pipe] = train.Trainer(config, workdir).train()
  a, b = states['memory'], states['grain']
  assert int(a.step) == int(b.step) == 9
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  assert np.array_equal(np.asarray(a.margins), np.asarray(b.margins))
  assert not np.all(np.asarray(a.margins) == np.asarray(a.margins)[0])  # The margins moved.
