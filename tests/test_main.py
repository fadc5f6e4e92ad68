"""The command lines as a user runs them: outputs, one-line errors, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from robust_med import config_base
from robust_med.errors import ConfigError

from cli_helpers import (CONFIG, REPO, TINY, copy_run, env, error_line as _error_line,
                         run as _run)



@pytest.mark.slow
def test_main_writes_outputs_and_evaluate_recomputes_them(segmentation_run, tmp_path):
  # `robust_med.main --config=...:synthetic TINY` (the session's shared run, conftest.py).
  work = copy_run(segmentation_run, tmp_path / 'run')
  report = json.loads((work / 'robustness.json').read_text())
  assert report['attack']['norm'] == 'l2' and report['attack']['steps'] == 3
  assert report['protocol'] == 'paper'  # A config named after the paper's experiment.
  assert [r['eps'] for r in report['results']] == [0.0, 0.5, 1.0]
  assert all(0.0 <= r['adi'] <= 1.0 and 0.0 <= r['tvdi'] <= 1.0 for r in report['results'])
  assert (work / 'robustness.png').stat().st_size > 1000
  # Every curve names its attack in full, and the gradient-masking checks are in the report.
  keys = {'name', 'norm', 'steps', 'step_size', 'restarts', 'random_start', 'data_range'}
  assert [a['name'] for a in report['attacks']] == ['pgd-3', 'apgd-3']
  assert all(set(a) == keys for a in report['attacks'])
  assert set(report['curves']) == {'pgd-3', 'apgd-3', 'worst-case'}
  assert {c['name'] for c in report['checks']} == {
      'monotone_in_eps', 'more_steps_not_weaker', 'random_noise_weaker', 'huge_eps_reaches_floor'}
  assert all(isinstance(c['passed'], bool) and c['figures'] for c in report['checks'])
  assert report['check_attacks']['weak']['steps'] == 1
  assert len(report['warnings']) == sum(not c['passed'] for c in report['checks'])
  records = [json.loads(l) for l in (work / 'metrics.jsonl').read_text().splitlines()]
  assert {'train', 'epoch', 'xi', 'eval'} <= {r['type'] for r in records}
  assert (work / 'checkpoints').is_dir()

  assert (work / 'examples.png').stat().st_size > 1000
  assert report['split'] == 'val' and report['data']['split_size'] == 16
  assert report['checkpoint']['step'] == 12 and report['num_samples'] == 16

  # A run made before a config key existed still evaluates: the key takes its default.
  saved = json.loads((work / 'config.json').read_text())
  del saved['eval']['floor_tolerance']
  (work / 'config.json').write_text(json.dumps(saved))
  own = (work / 'robustness.json').read_bytes()
  proc = _run('robust_med.evaluate', f'--workdir={work}', '--noise_levels=0,2', '--steps=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.loads((work / 'eval' / 'val' / 'robustness.json').read_text())
  assert [r['eps'] for r in again['results']] == [0.0, 2.0]
  assert again['attack']['steps'] == 4
  assert again['results'][0]['adi'] == pytest.approx(report['results'][0]['adi'])
  assert (work / 'robustness.json').read_bytes() == own  # The run's own report is kept.


@pytest.mark.slow
def test_sigkill_resumes_from_last_complete_checkpoint(tmp_path):
  work = tmp_path / 'run'
  args = [f'--config={CONFIG}:synthetic', f'--workdir={work}', *TINY,
          '--config.num_epochs=30', '--config.eval.noise_levels=(0.5,)']
  proc = subprocess.Popen([sys.executable, '-m', 'robust_med.main', *args], cwd=REPO, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = work / 'checkpoints'
  deadline = time.time() + 240
  while time.time() < deadline:
    done = [d for d in os.listdir(ckpt) if d.isdigit()] if ckpt.is_dir() else []
    if len(done) >= 2:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (work / 'robustness.json').exists(), 'the run finished before it was killed'
  proc = _run('robust_med.main', *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  steps = sorted(int(d) for d in os.listdir(ckpt) if d.isdigit())
  assert steps[-1] == 30 * 4
  records = [json.loads(l) for l in (work / 'metrics.jsonl').read_text().splitlines()]
  train_steps = [r['step'] for r in records if r['type'] == 'train']
  assert train_steps[-1] == 120 and min(train_steps) >= 2


@pytest.mark.parametrize('args, words', [
    ([f'--config={CONFIG}'], ['Task05_Prostate', 'does not exist', ':synthetic']),
    ([f'--config={CONFIG}:synthetic', '--config.method.foo=1'], ['foo']),
    ([f'--config={CONFIG}:synthetic', '--config.method.eps=-1'], ['method.eps = -1.0', '≥ 0']),
    ([f'--config={CONFIG}:synthetic', '--config.method.name=bogus'], ['bogus', 'amat']),
    ([f'--config={CONFIG}:synthetic', '--config.task=bogus'], ['bogus', 'segmentation']),
    ([f'--config={CONFIG}:bogus'], ['bogus', 'synthetic']),
])
def test_bad_input_is_one_clear_line(tmp_path, args, words):
  line = _error_line(_run('robust_med.main', *args, f'--workdir={tmp_path}', timeout=120))
  for w in words:
    assert w in line, line


def test_evaluate_without_run_is_one_clear_line(tmp_path):
  line = _error_line(_run('robust_med.evaluate', f'--workdir={tmp_path}', timeout=120))
  assert 'config.json' in line


def test_validate_rejects_unknown_keys_in_a_config_file():
  c = config_base.base_config()
  c.metod = 'amat'  # A typo in a config file (unlocked there).
  with pytest.raises(ConfigError, match='metod'):
    config_base.validate(c)


@pytest.mark.parametrize('key, value, words', [
    ('eval.noise_levels', (0.0, -1.0), '≥ 0'),
    ('eval.max_samples', -1, 'every sample'),
    ('interpret.figure_images', -2, 'no figure'),
    ('augment.flip', 1.5, r'in \[0, 1\]'),
    ('method.delta_eps', 0.0, 'delta_eps'),
    ('method.xi_stat', 'median', 'median'),
    ('eval.norm', 'l1', 'l1'),
    ('data.patch_size', (20, 20), 'divisible'),
])
def test_validate_rejects_impossible_values(key, value, words):
  c = config_base.base_config()
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=words):
    config_base.validate(c)


def test_every_config_file_is_valid():
  import importlib.util
  for path in sorted((REPO / 'configs').glob('*.py')):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VARIANTS, path.name  # Every config file says which variants it has.
    for arg in module.VARIANTS:
      config_base.validate(module.get_config(arg))
