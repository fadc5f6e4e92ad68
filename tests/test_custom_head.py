"""Bring your own head: the example head of docs/bring_your_own_head.md, imported by its dotted path, trains with STD
and AMAT through the unchanged trainer and is evaluated on its test split."""

import json
import sys

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import jax
import numpy as np
import pytest

from robust_med import checkpointing, evaluate, train
from robust_med.errors import ConfigError, UserError
from robust_med.tasks import get_task_class
from readme_head import readme_head_code, write_readme_head
from tiny import tiny_config


@pytest.fixture
def head(tmp_path, monkeypatch):
  """The docs' example head as the module my_heads.blobs in a temporary folder on sys.path."""
  monkeypatch.syspath_prepend(str(tmp_path / 'heads_src'))
  yield write_readme_head(tmp_path / 'heads_src')
  for name in ('my_heads.blobs', 'my_heads'):
    sys.modules.pop(name, None)


def test_readme_head_is_short():
  assert len(readme_head_code().splitlines()) <= 80


@pytest.mark.slow
def test_readme_head_trains_with_std_and_amat_and_evaluates(head, tmp_path):
  for method in ('std', 'amat'):
    config = tiny_config(method, task=head)
    workdir = tmp_path / method
    report = train.train_and_evaluate(config, str(workdir))
    assert report['task'] == 'blobs' and report['metric'] == 'accuracy'
    assert report['higher_is_better'] and report['num_samples'] == config.data.num_val
    assert all(0 <= r['accuracy'] <= 1 for rows in report['curves'].values() for r in rows)
    assert (workdir / 'examples.png').stat().st_size > 1000
    records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
    assert all(np.isfinite(r['loss']) for r in records if r['type'] == 'train')

  # AMAT measured ξ for the head's one loss term and moved the margins away from Δε.
  records = [json.loads(l) for l in (tmp_path / 'amat' / 'metrics.jsonl').read_text().splitlines()]
  xi = [r for r in records if r['type'] == 'xi']
  assert len(xi) == 1 and set(k for k in xi[0] if k.startswith('xi/')) == {'xi/ce'}
  mngr = checkpointing.reader(str(tmp_path / 'amat'))
  margins = checkpointing.restore_items(
      mngr, mngr.latest_step(), {'margins': jax.ShapeDtypeStruct(
          (config.data.num_train,), np.float32,
          sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})['margins']
  assert np.asarray(margins).shape == (config.data.num_train,)
  assert not np.allclose(np.asarray(margins), config.method.delta_eps)
  meta = checkpointing.read_meta(mngr, mngr.latest_step())
  assert meta['task'] == 'blobs' and meta['data'] == {'channels': 1}

  # Evaluated on its test split without touching the training run's report.
  before = (tmp_path / 'amat' / 'robustness.json').read_bytes()
  report = evaluate.evaluate_checkpoint(config, str(tmp_path / 'amat'), split='test')
  assert report['split'] == 'test' and report['data']['split_size'] == config.data.num_val
  assert (tmp_path / 'amat' / 'eval' / 'test' / 'examples.png').is_file()
  assert (tmp_path / 'amat' / 'robustness.json').read_bytes() == before


def test_a_segmentation_checkpoint_is_refused_by_another_head(head, tmp_path):
  workdir = tmp_path / 'seg'
  seg = tiny_config('std', num_epochs=1)
  train.Trainer(seg, str(workdir)).train()
  with pytest.raises(UserError, match="belongs to the 'segmentation' head"):
    evaluate.evaluate_checkpoint(tiny_config('std', task=head), str(workdir))


def test_dotted_task_paths_that_do_not_work_are_one_line(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match='Cannot import the task module'):
    get_task_class('no_such_package.heads')
  monkeypatch.syspath_prepend(str(tmp_path))
  (tmp_path / 'pkg_head').mkdir()
  (tmp_path / 'pkg_head' / '__init__.py').write_text('')
  (tmp_path / 'pkg_head' / 'empty.py').write_text('Task = 3\n')
  with pytest.raises(ConfigError, match='defines no class Task'):
    get_task_class('pkg_head.empty')
  sys.modules.pop('pkg_head.empty', None)
  sys.modules.pop('pkg_head', None)


def test_readme_head_trains_with_rtda_and_augmentation_unchanged(head, tmp_path):
  """RTDA's adversarial and gradient-penalty parts and augmentation need nothing from a head;
  consistency needs its divergence, and a head without one is refused in one line."""
  config = tiny_config('rtda', task=head, num_epochs=1, **{
      'method.grad_penalty': 0.1, 'method.augment': True, 'augment.noise': 0.05,
      'augment.rotation': 10.0, 'eval.masking_checks': False})
  state = train.Trainer(config, str(tmp_path / 'rtda')).train()
  assert int(state.step) == config.data.num_train // config.batch_size
  records = [json.loads(l) for l in (tmp_path / 'rtda' / 'metrics.jsonl').read_text().splitlines()]
  train_records = [r for r in records if r['type'] == 'train']
  assert all(np.isfinite(r['loss']) and r['grad_penalty'] > 0 for r in train_records)
  config = tiny_config('rtda', task=head, num_epochs=1, **{
      'method.consistency_views': 1.0, 'method.augment': True, 'augment.noise': 0.05})
  with pytest.raises(ConfigError, match="'blobs' head defines no divergence"):
    train.Trainer(config, str(tmp_path / 'views')).train()
