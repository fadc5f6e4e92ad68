"""The classification head from the command line: bad input is one `error:` line (exit 2) that
names the problem, and a trained checkpoint is evaluated on a split it never saw (`test`), with
its shift report."""

import json

import numpy as np
import pytest
from PIL import Image

from cli_helpers import REPO, error_line, run

CONFIG = str(REPO / 'configs' / 'pneumonia_rtda.py') + ':cpu'
FAST = ['--config.data.image_size=16', '--config.model.base_width=4', '--config.model.stages=2',
        '--config.batch_size=8', '--config.num_epochs=1', '--config.attack.steps=1',
        '--config.eval.steps=2', '--config.eval.apgd_steps=2', '--config.eval.every_epochs=0',
        '--config.eval.noise_levels=(0.0,0.01)', '--config.eval.masking_checks=False',
        "--config.shift.corruptions=('contrast','elastic')", '--config.shift.severities=(1,)',
        '--config.progress_bar=False', '--config.mesh.num_devices=1']


def medmnist(path, splits=('train', 'val', 'test'), n=16, labels=None, **extra):
  rng = np.random.default_rng(0)
  arrays = {}
  for split in splits:
    y = rng.integers(0, 2, n) if labels is None else np.asarray(labels)
    arrays[f'{split}_images'] = (rng.uniform(size=(len(y), 20, 20)) * 80
                                 + 120 * y[:, None, None]).astype(np.uint8)
    arrays[f'{split}_labels'] = y.reshape(-1, 1).astype(np.uint8)
  arrays.update(extra)
  np.savez(path, **arrays)
  return path


def folder(root, classes=('normal', 'pneumonia')):
  for split in ('train', 'val'):
    for c in classes:
      (root / split / c).mkdir(parents=True)
      for i in range(3):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(root / split / c / f'{i}.png')
  return root


def _case(tmp_path, how):
  """(root, extra flags) of one kind of bad input."""
  if how == 'missing_split':
    return medmnist(tmp_path / 'd.npz', splits=('train', 'val')), ['--config.data.eval_split=test']
  if how == 'length_mismatch':
    path = medmnist(tmp_path / 'd.npz')
    arrays = dict(np.load(path))
    arrays['val_labels'] = arrays['val_labels'][:5]
    np.savez(path, **arrays)
    return path, []
  if how == 'label_outside':
    return medmnist(tmp_path / 'd.npz', labels=[0, 1, 2, 1]), []
  if how == 'one_class':
    return folder(tmp_path / 'f', classes=('normal',)), ['--config.data.name=folder']
  if how == 'unreadable':
    root = folder(tmp_path / 'f')
    (root / 'train' / 'normal' / '1.png').write_bytes(b'not a png')
    return root, ['--config.data.name=folder']
  if how == 'bad_corruption':
    return medmnist(tmp_path / 'd.npz'), ["--config.shift.corruptions=('fog',)"]
  if how == 'bad_severity':
    return medmnist(tmp_path / 'd.npz'), ['--config.shift.severities=(1,7)']
  raise ValueError(how)


@pytest.mark.parametrize('how, words', [
    ('missing_split', ["'test'", 'train_images']),
    ('length_mismatch', ['val_images', 'val_labels', '16', '5']),
    ('label_outside', ['2', 'normal', 'pneumonia']),
    ('one_class', ['one class', 'normal']),
    ('unreadable', ['1.png']),
    ('bad_corruption', ['fog', 'gaussian_noise']),
    ('bad_severity', ['7']),
])
def test_bad_classification_input_is_one_error_line(tmp_path, how, words):
  root, extra = _case(tmp_path, how)
  line = error_line(run('robust_med.main', f'--config={CONFIG}', f'--workdir={tmp_path}/run',
                        f'--config.data.root={root}', *FAST, *extra))
  for w in words:
    assert w in line, line
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.slow
def test_train_then_evaluate_the_test_split_with_its_shift_report(tmp_path):
  root = medmnist(tmp_path / 'd.npz')
  work = tmp_path / 'run'
  proc = run('robust_med.main', f'--config={CONFIG}', f'--workdir={work}',
             f'--config.data.root={root}', *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((work / 'robustness.json').read_text())
  assert report['task'] == 'classification' and report['attack']['norm'] == 'linf'
  assert {'accuracy', 'balanced_accuracy', 'auc', 'sensitivity/normal'} <= set(report['results'][0])
  assert (work / 'shift.json').exists()
  proc = run('robust_med.evaluate', f'--workdir={work}', '--split=test')
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = work / 'eval' / 'test'
  report = json.loads((out / 'robustness.json').read_text())
  assert report['split'] == 'test' and report['num_samples'] == 16
  shift = json.loads((out / 'shift.json').read_text())
  assert shift['split'] == 'test' and set(shift['corruptions']) == {'contrast', 'elastic'}
