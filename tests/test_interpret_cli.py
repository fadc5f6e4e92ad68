"""`python -m robust_med.interpret` end to end on two tiny synthetic-lesion runs: it writes
interpret.json/md/png whose p-values equal scipy's on its own per-image values, excludes and counts
the images with empty masks, and answers each bad input with one `error:` line (exit 2)."""

import json
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from cli_helpers import REPO, error_line, run

TINY = ['--config.data.image_size=16', '--config.data.num_train=32', '--config.data.num_val=12',
        '--config.model.base_width=4', '--config.model.stages=2', '--config.batch_size=8',
        '--config.num_epochs=1', '--config.attack.steps=1', '--config.eval.steps=2',
        '--config.eval.apgd_steps=2', '--config.eval.every_epochs=0',
        '--config.eval.noise_levels=(0.0,)', '--config.eval.masking_checks=False',
        "--config.shift.corruptions=()", '--config.progress_bar=False',
        '--config.mesh.num_devices=1']
FAST = ['--config.interpret.bootstrap_resamples=200', '--config.eval.steps=2']


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Workdirs of an STD and an AT run on the synthetic lesion set."""
  root = tmp_path_factory.mktemp('interpret')
  for name in ('std', 'at'):
    proc = run('robust_med.main', f'--config={REPO}/configs/busi_{name}.py:synthetic',
               f'--workdir={root}/{name}', *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
  return root


def test_interpret_writes_its_report_with_scipy_p_values(runs, tmp_path):
  out = tmp_path / 'report'
  proc = run('robust_med.interpret', f'--workdirs={runs}/std,{runs}/at', '--method=gradcam',
             f'--out={out}', '--eps=0.03', "--config.interpret.top_k=(10.0,50.0)", *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / 'interpret.json').read_text())
  assert (out / 'interpret.png').stat().st_size > 10_000
  assert '## Paired tests' in (out / 'interpret.md').read_text()
  counts = report['counts']
  assert counts['split_size'] == 12 and counts['excluded_empty_mask'] > 0
  assert counts['used'] == counts['annotated'] == 12 - counts['excluded_empty_mask']
  assert report['metrics'][:2] == ['iou@10', 'iou@50']
  assert report['attack']['eps'] == 0.03 and report['attack']['norm'] == 'linf'
  per = report['per_image']
  assert len(per['id']) == counts['used']
  for t in report['tests']:
    if t['kind'] == 'model':
      a, b = per[t['a']][t['condition']][t['metric']], per[t['b']][t['condition']][t['metric']]
    else:
      a, b = per[t['model']]['clean'][t['metric']], per[t['model']]['attacked'][t['metric']]
    a, b = np.array(a), np.array(b)
    if np.all(a == b):
      assert t['wilcoxon_p'] is None or np.isnan(t['wilcoxon_p'])
      continue
    assert t['wilcoxon_p'] == pytest.approx(scipy_stats.wilcoxon(b, a).pvalue, rel=1e-9)
    assert t['t_p'] == pytest.approx(scipy_stats.ttest_rel(b, a).pvalue, rel=1e-9)
  assert {t['b'] for t in report['tests'] if t['kind'] == 'model'} == {'at'}
  assert report['summary']['std']['layer'] == 'GroupNorm_0'


def test_figure_images_zero_draws_no_figure(runs, tmp_path):
  out = tmp_path / 'report'
  proc = run('robust_med.interpret', f'--workdirs={runs}/std', '--method=gradient', f'--out={out}',
             '--config.interpret.figure_images=0', '--config.interpret.attack=False', *FAST)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (out / 'interpret.json').is_file() and not (out / 'interpret.png').exists()
  assert 'interpret.png' not in proc.stdout.splitlines()[-1]


def _renamed(src, dst, **changes):
  shutil.copytree(src, dst)
  config = json.loads((dst / 'config.json').read_text())
  for key, value in changes.items():
    section, name = key.split('__') if '__' in key else (None, key)
    (config[section] if section else config)[name] = value
  (dst / 'config.json').write_text(json.dumps(config))
  return dst


def medmnist_without_masks(path):
  rng = np.random.default_rng(0)
  arrays = {}
  for split in ('train', 'val'):
    arrays[f'{split}_images'] = rng.integers(0, 255, (9, 16, 16), np.uint8)
    arrays[f'{split}_labels'] = np.repeat([0, 1, 2], 3).reshape(-1, 1).astype(np.uint8)
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize('how, words', [
    ('layer', ["'stage9'", 'GroupNorm_0', 'stage1_block0']),
    ('k_zero', ['top_k', '(0, 100]']),
    ('k_large', ['top_k', '150']),
    ('no_masks', ['no annotation masks', "'mask'"]),
    ('other_head', ["'segmentation'", 'one head']),
    ('other_images', ['different images', 'seed']),
    ('split', ["'test2'", 'val']),
    ('figures', ['config.interpret.figure_images = -1', '0 = no figure']),
])
def test_bad_interpret_input_is_one_error_line(runs, tmp_path, how, words):
  workdirs = f'{runs}/std,{runs}/at'
  extra = []
  if how == 'layer':
    extra = ["--config.interpret.layer=stage9"]
  elif how == 'k_zero':
    extra = ["--config.interpret.top_k=(0.0,10.0)"]
  elif how == 'k_large':
    extra = ["--config.interpret.top_k=(150.0,)"]
  elif how == 'no_masks':
    extra = ['--config.data.name=npz',
             f'--config.data.root={medmnist_without_masks(tmp_path / "d.npz")}']
  elif how == 'other_head':
    workdirs = f'{runs}/std,{_renamed(runs / "at", tmp_path / "seg", task="segmentation")}'
  elif how == 'other_images':
    workdirs = f'{runs}/std,{_renamed(runs / "at", tmp_path / "other", data__seed=7)}'
  elif how == 'split':
    extra = ['--split=test2']
  elif how == 'figures':
    extra = ['--config.interpret.figure_images=-1']
  line = error_line(run('robust_med.interpret', f'--workdirs={workdirs}',
                        f'--out={tmp_path}/out', *FAST, *extra))
  for w in words:
    assert w in line, line
  assert not (tmp_path / 'out' / 'interpret.json').exists()
