"""The sharded train step, AMAT's margins in the state, checkpoints and resume."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from robust_med import checkpointing, evaluate, train
from robust_med.errors import UserError
from tiny import tiny_config


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _train(config, workdir):
  trainer = train.Trainer(config, str(workdir))
  return trainer, trainer.train()


def test_eight_devices_match_one_device(tmp_path):
  assert len(jax.devices()) == 8, 'conftest should simulate 8 CPU devices'
  _, one = _train(tiny_config('amat', **{'mesh.num_devices': 1}), tmp_path / 'one')
  trainer, eight = _train(tiny_config('amat', **{'mesh.num_devices': 8}), tmp_path / 'eight')
  assert eight.margins.sharding.spec == P('data')
  assert len(eight.margins.sharding.device_set) == 8
  assert int(eight.step) == int(one.step) == trainer.total_steps
  np.testing.assert_allclose(_host(eight.margins), _host(one.margins), rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4),
               _host(eight.params), _host(one.params))
  # The margins moved: some grew by Δε or were refined, so the check above is not trivial.
  margins = _host(eight.margins)[:trainer.num_train]
  assert not np.allclose(margins, 0.5)

  # The documented reader gives the 8-device checkpoint's arrays as numpy, bit for bit.
  arrays = checkpointing.read_arrays(str(tmp_path / 'eight'))
  assert set(arrays) == {'step', 'params', 'opt_state', 'margins', 'xi', 'rng'}
  assert isinstance(arrays['margins'], np.ndarray) and int(arrays['step']) == int(eight.step)
  jax.tree.map(np.testing.assert_array_equal, arrays['params'], _host(eight.params))
  np.testing.assert_array_equal(arrays['margins'], _host(eight.margins))
  assert set(checkpointing.read_arrays(str(tmp_path / 'eight'), items=('margins',))) == {'margins'}
  with pytest.raises(UserError, match="no \\['nope'\\]"):
    checkpointing.read_arrays(str(tmp_path / 'eight'), items=('nope',))
  # The docs' example (docs/outputs.md) runs as written, on this run's folder.
  page = (Path(__file__).resolve().parent.parent / 'docs' / 'outputs.md').read_text()
  example = page.split('## Reading a checkpoint', 1)[1].split('```python\n', 1)[1].split('```')[0]
  namespace = {}
  exec(example.replace("'runs/prostate_amat'", repr(str(tmp_path / 'eight'))), namespace)
  jax.tree.map(np.testing.assert_array_equal, namespace['params'], _host(eight.params))
  np.testing.assert_array_equal(namespace['margins'], _host(eight.margins))


def test_margins_and_xi_are_updated_only_by_amat(tmp_path):
  trainer, state = _train(tiny_config('sat'), tmp_path / 'sat')
  np.testing.assert_array_equal(_host(state.margins), 0.5)
  assert np.isnan(_host(state.xi)).all()
  trainer, state = _train(tiny_config('amat'), tmp_path / 'amat')
  xi = _host(state.xi)
  assert np.isfinite(xi).all() and xi.shape == (2,)
  lines = open(tmp_path / 'amat' / 'metrics.jsonl').read().splitlines()
  assert any('"type": "xi"' in line for line in lines)


def test_resume_restores_everything(tmp_path):
  """A run resumed from a mid-run checkpoint ends exactly where an uninterrupted run ends."""
  config = tiny_config('amat')
  full = tmp_path / 'full'
  trainer, final = _train(config, full)
  steps = sorted(int(d) for d in os.listdir(full / 'checkpoints') if d.isdigit())
  mid = [s for s in steps if trainer.warmup_steps < s < trainer.total_steps][0]
  resumed = tmp_path / 'resumed'
  shutil.copytree(full / 'checkpoints' / str(mid), resumed / 'checkpoints' / str(mid))
  restored = checkpointing.restore(checkpointing.manager(str(resumed)), mid,
                                   train.Trainer(config, str(resumed)).fresh_state())
  assert int(restored.step) == mid
  assert np.isfinite(_host(restored.xi)).all()
  assert restored.margins.sharding.spec == P('data')
  _, again = _train(config, resumed)
  jax.tree.map(np.testing.assert_array_equal, _host(again), _host(final))


def test_resume_on_another_device_count(tmp_path):
  """A run checkpointed on 1 device resumes on 8 (the margins' padding differs: 36 vs 40) and
  ends where the uninterrupted 1-device run ends, to the tolerance between device counts."""
  one = tiny_config('amat', **{'mesh.num_devices': 1, 'data.num_train': 36})
  full = tmp_path / 'full'
  trainer, final = _train(one, full)
  assert final.margins.shape == (36,)
  steps = sorted(int(d) for d in os.listdir(full / 'checkpoints') if d.isdigit())
  mid = [s for s in steps if trainer.warmup_steps < s < trainer.total_steps][0]
  saved = checkpointing.restore(checkpointing.manager(str(full)), mid, trainer.fresh_state())
  resumed = tmp_path / 'resumed'
  shutil.copytree(full / 'checkpoints' / str(mid), resumed / 'checkpoints' / str(mid))
  eight = tiny_config('amat', **{'mesh.num_devices': 8, 'data.num_train': 36})
  trainer8 = train.Trainer(eight, str(resumed))
  restored = trainer8.restore_or_init(checkpointing.manager(str(resumed)))
  assert restored.margins.shape == (40,) and restored.margins.sharding.spec == P('data')
  np.testing.assert_array_equal(_host(restored.margins)[:36], _host(saved.margins))
  jax.tree.map(np.testing.assert_array_equal, _host(restored.params), _host(saved.params))
  assert int(restored.step) == mid
  again = trainer8.train()
  assert int(again.step) == trainer.total_steps
  np.testing.assert_allclose(_host(again.margins)[:36], _host(final.margins), rtol=1e-3,
                             atol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4),
               _host(again.params), _host(final.params))


def test_checkpoint_from_another_head_is_refused(tmp_path):
  config = tiny_config('std')
  trainer = train.Trainer(config, str(tmp_path))
  state = trainer.fresh_state()
  mngr = checkpointing.manager(str(tmp_path))
  checkpointing.save(mngr, 1, state, dict(trainer.meta, task='classification'))
  with pytest.raises(UserError, match="task='classification'.*fresh --workdir"):
    train.Trainer(config, str(tmp_path)).train()


def test_nan_loss_stops_with_one_clear_line(tmp_path, monkeypatch):
  config = tiny_config('std')
  from robust_med.tasks import segmentation
  original = segmentation.Task.load_split

  def poisoned(self, split):
    arrays, info = original(self, split)
    arrays['image'] = arrays['image'].copy()
    arrays['image'][:, 0, 0, 0] = np.nan
    return arrays, info

  monkeypatch.setattr(segmentation.Task, 'load_split', poisoned)
  with pytest.raises(UserError) as e:
    _train(config, tmp_path)
  assert 'nan' in str(e.value).lower() and 'learning_rate' in str(e.value)
  assert '\n' not in str(e.value)
  assert not os.path.exists(tmp_path / 'checkpoints' / '4'), 'a NaN state was checkpointed'


@pytest.fixture(scope='module')
def std_run(tmp_path_factory):
  """A finished tiny STD run: (workdir, final state)."""
  workdir = tmp_path_factory.mktemp('std_run') / 'std'
  return workdir, _train(tiny_config('std'), workdir)[1]


def test_xi_from_a_std_checkpoint(tmp_path, std_run):
  """ξ measured with a finished STD run's parameters on this run's training split."""
  std_dir, std_state = std_run
  config = tiny_config('amat', **{'method.xi_source': 'checkpoint',
                                  'method.xi_checkpoint': str(std_dir),
                                  'method.xi_stat': 'mean+2std', 'num_epochs': 1})
  trainer, state = _train(config, tmp_path / 'amat')
  terms = train.per_sample_clean_terms(trainer.task, trainer.model, std_state.params,
                                       trainer.train_data, trainer.mesh, 8)
  expected = [terms[k].mean() + 2 * terms[k].std() for k in ('ce', 'dice')]
  np.testing.assert_allclose(_host(state.xi), expected, rtol=1e-5)


def test_xi_on_the_sum_and_on_the_dice_score_from_a_std_checkpoint(std_run):
  """'sum': one ξ, the mean summed training loss; 'score': the mean training hard Dice (the best
  foreground class per image, as the AMAT authors' getOnlineDiceMax), computed here by hand."""
  std_dir, std_state = std_run
  def trainer_for(mode):
    return train.Trainer(tiny_config('amat', **{
        'method.xi_source': 'checkpoint', 'method.xi_checkpoint': str(std_dir),
        'method.xi_mode': mode}), '/tmp/unused_xi_mode_workdir')
  trainer = trainer_for('sum')
  params = trainer.fresh_state().params
  terms = train.per_sample_clean_terms(trainer.task, trainer.model, std_state.params,
                                       trainer.train_data, trainer.mesh, 8)
  np.testing.assert_allclose(trainer.measure_xi(params), [np.mean(terms['ce'] + terms['dice'])],
                             rtol=1e-5)
  trainer = trainer_for('score')
  data = trainer.train_data
  pred = np.asarray(trainer.model.apply({'params': _host(std_state.params)},
                                        data['image'])).argmax(-1)
  labels = np.asarray(data['label'])
  dice = []
  for p, g in zip(pred, labels):
    per_class = []
    for c in range(1, 3):
      tp, fp, fn = ((p == c) & (g == c)).sum(), ((p == c) & (g != c)).sum(), ((p != c) & (g == c)).sum()
      per_class.append(2 * tp / (2 * tp + fp + fn + 1e-8))
    dice.append(max(per_class))
  xi = trainer.measure_xi(params)
  assert xi.shape == (1,) and 0 < np.mean(dice) < 1
  np.testing.assert_allclose(-xi, [np.mean(dice)], rtol=1e-5)


def test_offline_fgsm_doubles_the_training_set_with_the_checkpoints_copies(std_run):
  """fgsm_source='offline': the training set followed by the FGSM copy of every sample, made by
  the given checkpoint's model (not the fresh one), targets repeated, and nothing else."""
  from robust_med import attacks, methods
  std_dir, std_state = std_run
  config = tiny_config('fgsm_aug', **{'method.eps': 0.05, 'method.fgsm_source': 'offline',
                                      'method.fgsm_checkpoint': str(std_dir)})
  plain = train.Trainer(tiny_config('std'), '/tmp/unused_offline_workdir')
  trainer = train.Trainer(config, '/tmp/unused_offline_workdir')
  orig, data = plain.train_data, trainer.train_data
  n = len(orig['id'])
  assert trainer.num_train == 2 * n and sorted(data) == sorted(orig)
  np.testing.assert_array_equal(data['id'], np.arange(2 * n))
  np.testing.assert_array_equal(data['image'][:n], orig['image'])
  for k in orig:
    if k not in ('image', 'id'):
      np.testing.assert_array_equal(data[k][:n], orig[k])
      np.testing.assert_array_equal(data[k][n:], orig[k])
  assert isinstance(trainer.method, methods.Std)

  def fgsm_by(params):
    loss = lambda x: methods.total(plain.task.loss_terms(
        plain.model.apply({'params': params}, x), orig))
    return np.asarray(attacks.fgsm(loss, jax.numpy.asarray(orig['image']), 0.05))

  copies = data['image'][n:]
  np.testing.assert_allclose(np.abs(copies - orig['image']).max(), 0.05, rtol=1e-5)
  assert np.isclose(copies, fgsm_by(_host(std_state.params)), atol=1e-6).mean() > 0.99
  assert np.isclose(copies, fgsm_by(_host(plain.fresh_state().params)), atol=1e-6).mean() < 0.9
  record = trainer.offline_record
  assert record['checkpoint'] == str(std_dir) and record['added'] == n


def test_xi_checkpoint_must_be_a_std_run(tmp_path):
  _train(tiny_config('sat'), tmp_path / 'sat')
  config = tiny_config('amat', **{'method.xi_source': 'checkpoint',
                                  'method.xi_checkpoint': str(tmp_path / 'sat')})
  with pytest.raises(UserError, match="method='sat'"):
    _train(config, tmp_path / 'amat')


@pytest.mark.parametrize('method', ['fgsm_aug', 'inverse_fgsm_aug', 'fgsm_both_aug'])
def test_augmentation_methods_train(tmp_path, method):
  config = tiny_config(method, **{'method.eps': 0.05, 'num_epochs': 1, 'mesh.num_devices': 2})
  trainer, state = _train(config, tmp_path)
  assert int(state.step) == trainer.total_steps
  lines = (tmp_path / 'metrics.jsonl').read_text()
  attack = 'inverse_fgsm' if method == 'inverse_fgsm_aug' else 'fgsm'
  assert f'"{attack}/ce"' in lines


def test_learning_curve_records_clean_validation_metrics(tmp_path):
  config = tiny_config('std', **{'eval.every_epochs': 2, 'eval.max_samples': 8})
  trainer, state = _train(config, tmp_path / 'std')
  records = [json.loads(line) for line in open(tmp_path / 'std' / 'metrics.jsonl')]
  curve = [r for r in records if r['type'] == 'val']
  # Every 2nd epoch, and always after the last one.
  assert [r['epoch'] for r in curve] == [1, 2]
  assert curve[-1]['step'] == trainer.total_steps and curve[-1]['split'] == 'val'
  metric = trainer.task.primary_metric
  evaluator = evaluate.make_evaluator(trainer.task, trainer.model, trainer.mesh, config)
  subset = evaluate.evaluation_subset(trainer.eval_data, 8)
  expected = evaluator.clean(state.params, subset)
  assert curve[-1][metric] == pytest.approx(expected[metric], abs=1e-6)
  assert curve[-1]['loss'] == pytest.approx(expected['loss'], rel=1e-5)
  off = [json.loads(line) for line in open(_train(tiny_config('std'), tmp_path / 'off')[0].log.path)]
  assert not any(r['type'] == 'val' for r in off)


FRESH_STATE_CHECK = """
import tempfile
import jax, numpy as np
from robust_med import train
from tiny import tiny_config
host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
trainer = train.Trainer(tiny_config('amat'), tempfile.mkdtemp())
image = trainer.train_data['image']
state = train.init_state(trainer.model, trainer.tx, image, num_train=trainer.num_train,
                         num_xi=2, initial_margin=0.5, seed=3, mesh=trainer.mesh)
init_key, _ = jax.random.split(jax.random.PRNGKey(3))
params = trainer.model.init(init_key, image[:1])['params']
jax.tree.map(np.testing.assert_array_equal, host(state.params), host(params))
jax.tree.map(np.testing.assert_array_equal, host(state.opt_state), host(trainer.tx.init(params)))
assert len(jax.tree.leaves(params)) > 4
print('equal')
"""


def test_fresh_state_is_the_eager_initialisation_bit_for_bit():
  """init_state compiles the initialisation once at XLA optimisation level 1
  (compile_cache.run_once): the parameters and optimizer state are the bits the model's and
  optimizer's own (eager) init give. Checked in a process of its own with XLA's default flags,
  which users run with (the tests' processes compile unoptimised code: conftest.py)."""
  env = dict(os.environ, XLA_FLAGS='',
             PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent),
                                         str(Path(__file__).parent)]))
  proc = subprocess.run([sys.executable, '-c', FRESH_STATE_CHECK], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip() == 'equal', proc.stderr[-3000:]


@pytest.mark.parametrize('method,keys', [
    ('amat', {'method.xi_source': 'checkpoint', 'method.xi_checkpoint': 'missing_std'}),
    ('fgsm_aug', {'method.fgsm_source': 'offline', 'method.fgsm_checkpoint': 'missing_std'})])
def test_a_missing_std_run_is_one_clear_line_before_anything_is_written(tmp_path, method, keys):
  key = next(k for k in keys if k.endswith('checkpoint'))
  with pytest.raises(UserError, match=f'config.{key}') as e:
    train.Trainer(tiny_config(method, **keys), str(tmp_path / 'run'))
  assert 'train the STD model there first' in str(e.value) and '\n' not in str(e.value)
  assert not (tmp_path / 'run').exists()


def test_a_seed_changes_the_initialisation_and_the_data_order_and_nothing_else():
  """Seeds as an axis of comparisons: the same seed gives the same bits; another seed another
  initialisation and batch order, on the same training and evaluation data."""
  def build(seed):
    t = train.Trainer(tiny_config('amat', seed=seed), '/tmp/unused_seed_workdir')
    params = _host(t.fresh_state().params)
    ids = [np.asarray(b['id']).copy() for b in t._epoch_batches(0)]
    return t, params, ids
  a, params_a, ids_a = build(0)
  a2, params_a2, ids_a2 = build(0)
  b, params_b, ids_b = build(1)
  same = lambda x, y: all(np.array_equal(u, v) for u, v in
                          zip(jax.tree.leaves(x), jax.tree.leaves(y)))
  assert same(params_a, params_a2) and all(np.array_equal(u, v) for u, v in zip(ids_a, ids_a2))
  assert not same(params_a, params_b)
  assert not all(np.array_equal(u, v) for u, v in zip(ids_a, ids_b))
  assert sorted(np.concatenate(ids_a).tolist()) == sorted(np.concatenate(ids_b).tolist())
  for data in ('train_data', 'eval_data'):
    x, y = getattr(a, data), getattr(b, data)
    assert all(np.array_equal(x[k], y[k]) for k in x), data
