"""The sweep: its plan, its outputs, and resuming after a kill without redoing finished runs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_med import evaluate, sweep
from robust_med.errors import ConfigError
from cli_helpers import env
from tiny import tiny_config

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def test_plan_changes_only_the_method():
  config = tiny_config('amat')
  runs = sweep.plan_runs(config, '/tmp/sw', sat_eps=(1, 5.5), methods=('amat', 'sat', 'std'))
  assert [r.name for r in runs] == ['std', 'amat', 'sat_eps1', 'sat_eps5.5']
  assert [r.config.method.name for r in runs] == ['std', 'amat', 'sat', 'sat']
  assert [r.config.method.eps for r in runs[2:]] == [1.0, 5.5]
  amat = runs[1].config.method
  assert amat.xi_source == 'checkpoint' and amat.xi_checkpoint == '/tmp/sw/std'
  assert amat.delta_eps == config.method.delta_eps
  for r in runs:
    assert sweep._shared_settings(r.config) == sweep._shared_settings(config)
  alone = sweep.plan_runs(config, '/tmp/sw', methods=('amat',))
  assert alone[0].config.method.xi_source == 'warmup'


@pytest.mark.parametrize('kwargs, words', [
    (dict(methods=('std', 'sat')), ['--sat_eps']),
    (dict(methods=('std', 'sat'), sat_eps=(0.0,)), ['> 0']),
    (dict(methods=('std', 'bogus')), ['bogus']),
])
def test_bad_plans_are_refused(kwargs, words):
  with pytest.raises(ConfigError) as e:
    sweep.plan_runs(tiny_config('amat'), '/tmp/sw', **kwargs)
  assert all(w in str(e.value) for w in words)


def _write_config(tmp_path) -> str:
  path = tmp_path / 'tiny_sweep.py'
  path.write_text(
      'import sys\n'
      f'sys.path.insert(0, {str(TESTS)!r})\n'
      'from tiny import tiny_config\n\n\n'
      'def get_config():\n'
      "  c = tiny_config('amat', **{'mesh.num_devices': 1, 'eval.steps': 4,\n"
      "                            'eval.noise_levels': (0.5, 1.0), 'num_epochs': 4,\n"
      "                            'eval.every_epochs': 2})\n"
      '  return c\n')
  return str(path)


def _sweep_cmd(config, work, *extra):
  return [sys.executable, '-m', 'robust_med.sweep', f'--config={config}', f'--workdir={work}',
          '--sat_eps=0.5', *extra]




@pytest.mark.slow
def test_sweep_writes_summary_and_resumes_after_kill(tmp_path):
  config, work = _write_config(tmp_path), tmp_path / 'sweep'
  proc = subprocess.Popen(_sweep_cmd(config, work), cwd=REPO, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill it once STD is finished and the next run (AMAT) has written a checkpoint.
  deadline = time.time() + 300
  amat_ckpt = work / 'amat' / 'checkpoints'
  while time.time() < deadline and proc.poll() is None:
    if (work / 'std' / 'robustness.json').exists() and amat_ckpt.is_dir() and any(
        d.isdigit() for d in os.listdir(amat_ckpt)):
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert (work / 'std' / 'robustness.json').exists()
  assert not (work / 'amat' / 'robustness.json').exists(), 'AMAT finished before the kill'
  std_log = (work / 'std' / 'metrics.jsonl').read_text()
  std_report = (work / 'std' / 'robustness.json').stat().st_mtime_ns

  done = subprocess.run(_sweep_cmd(config, work), cwd=REPO, env=env(), capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'STD: done, skipped' in done.stderr
  # STD was neither retrained nor re-evaluated; AMAT continued from its checkpoint.
  assert (work / 'std' / 'metrics.jsonl').read_text() == std_log
  assert (work / 'std' / 'robustness.json').stat().st_mtime_ns == std_report
  amat_steps = [r['step'] for r in map(json.loads, (work / 'amat' / 'metrics.jsonl').open())
                if r['type'] == 'train']
  assert amat_steps.count(2) == 1, 'AMAT restarted from scratch instead of its checkpoint'
  assert amat_steps[-1] == 4 * 4
  xi = [r for r in map(json.loads, (work / 'amat' / 'metrics.jsonl').open()) if r['type'] == 'xi']
  assert xi and xi[0]['source'] == 'checkpoint'

  rows = list(csv.DictReader((work / 'summary.csv').open()))
  models = ['STD', 'SAT ε=0.5', 'AMAT Δε=0.5']
  assert list(dict.fromkeys(r['model'] for r in rows)) == models
  assert {r['curve'] for r in rows} == {'pgd-4', 'apgd-3', 'worst-case'}
  for r in rows:
    assert float(r['train_seconds_per_epoch']) > 0
    assert set(r) >= {'clean_adi', 'adi@eps=0', 'adi@eps=0.5', 'adi@eps=1', 'mean_adi_over_grid'}
  # The worst case is never better than either attack for any model.
  by = {(r['model'], r['curve']): r for r in rows}
  for m in models:
    for e in ('0.5', '1'):
      worst = float(by[m, 'worst-case'][f'adi@eps={e}'])
      assert worst <= min(float(by[m, c][f'adi@eps={e}']) for c in ('pgd-4', 'apgd-3')) + 1e-9
  md = (work / 'summary.md').read_text()
  assert 'pgd-4 (L2' in md and 'Gradient-masking checks' in md
  # Final margin statistics for AMAT only.
  assert '## Margins at the end of training' in md and '| AMAT Δε=0.5 | 16 |' in md
  assert all((r['final_margin_mean'] != '') == (r['method'] == 'amat') for r in rows)
  assert all(m in md for m in models)
  assert (work / 'curves.png').stat().st_size > 5000
  # Learning curves every 2nd epoch for every run, drawn with AMAT's margins in training.png.
  for run in ('std', 'sat_eps0.5', 'amat'):
    curve = [r['epoch'] for r in map(json.loads, (work / run / 'metrics.jsonl').open())
             if r['type'] == 'val']
    assert curve == [1, 3], run
  assert (work / 'training.png').stat().st_size > 5000
  # TensorBoard: each run's HParams session names the run and its swept keys; AMAT's resumed
  # training wrote no step twice.
  from tb_events import hparams_session, scalars
  for run, label, eps in (('std', 'STD', 0.0), ('sat_eps0.5', 'SAT ε=0.5', 0.5),
                          ('amat', 'AMAT Δε=0.5', 0.5)):
    session = hparams_session(work / run / 'tb' / 'hparams')
    assert session['model'] == label and session['method.eps'] == eps, session
    assert session['method.name'] == run.split('_')[0] and 'method.refine' not in session
    metrics = scalars(work / run / 'tb' / 'hparams')
    worst = by[label, 'worst-case']
    assert metrics['final/adi_clean', 0] == [pytest.approx(float(worst['clean_adi']), abs=1e-4)]
    assert metrics['final/adi_worst-case_mean', 0] == [
        pytest.approx(float(worst['mean_adi_over_grid']), abs=1e-4)]
  amat_tb = scalars(work / 'amat' / 'tb' / 'train')
  assert ('train/loss', 2) in amat_tb and all(len(v) == 1 for v in amat_tb.values())

  # A third call finds everything done and only rewrites the summary.
  again = subprocess.run(_sweep_cmd(config, work), cwd=REPO, env=env(), capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0 and again.stderr.count('done, skipped') == 3


def test_resuming_with_other_settings_is_refused(tmp_path):
  config, work = _write_config(tmp_path), tmp_path / 'sweep'
  work.mkdir()
  base = tiny_config('amat', **{'mesh.num_devices': 1, 'eval.steps': 4,
                                'eval.noise_levels': (0.5, 1.0), 'num_epochs': 4,
                                'eval.every_epochs': 2})
  plan = sweep.plan_runs(base, str(work), sat_eps=(0.5,))
  sweep._check_plan(str(work), base, plan)
  proc = subprocess.run(_sweep_cmd(config, work, '--config.num_epochs=5'), cwd=REPO, env=env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('error: ') and 'other settings' in line and 'num_epochs' in line


def test_other_evaluation_settings_re_evaluate_the_finished_runs(tmp_path):
  work = str(tmp_path)
  config = tiny_config('amat')
  plan = sweep.plan_runs(config, work, sat_eps=(0.5,))
  sweep._check_plan(work, config, plan)
  other = tiny_config('amat', **{'eval.attacks': ('pgd', 'apgd', 'square')})
  sweep._check_plan(work, other, plan)  # allowed: only the evaluation changed
  logging = tiny_config('amat', progress_bar=True)
  with logging.unlocked():
    del logging['log']  # a sweep started before robust_med had `config.log`
  sweep._check_plan(work, logging, plan)  # allowed: logging does not change a trained model
  run = tmp_path / 'std'
  run.mkdir()
  settings = json.loads(config.eval.to_json_best_effort())
  (run / 'robustness.json').write_text(json.dumps({'eval_settings': settings}))
  assert sweep.evaluated_with(str(run), config) and not sweep.evaluated_with(str(run), other)
  # A report written before robust_med had a setting: the same when the config has its default
  # (an upgrade re-evaluates nothing), not when the config sets another value.
  older = {k: v for k, v in settings.items() if k != 'frequency_levels'}
  (run / 'robustness.json').write_text(json.dumps({'eval_settings': older}))
  vafa = tiny_config('amat', **{'eval.frequency_levels': (0.1,)})
  assert sweep.evaluated_with(str(run), config) and not sweep.evaluated_with(str(run), vafa)
  (run / 'robustness.json').write_text(json.dumps({'eval_settings': {**settings, 'gone': 1}}))
  assert not sweep.evaluated_with(str(run), config)  # a setting this robust_med lacks
  # A report that does not record them is judged by its attacks and levels (not by config.json,
  # which a re-evaluation rewrites before it finishes).
  attacks_ = [{'name': a.describe()['name']} for a in evaluate.evaluation_attacks(config.eval)]
  assert [a['name'] for a in attacks_] == ['pgd-3', 'apgd-3']
  results = [{'eps': e} for e in sorted({0.0, *config.eval.noise_levels})]
  (run / 'robustness.json').write_text(json.dumps({'attacks': attacks_, 'results': results}))
  (run / 'config.json').write_text(json.dumps({'eval': json.loads(other.eval.to_json_best_effort())}))
  assert sweep.evaluated_with(str(run), config) and not sweep.evaluated_with(str(run), other)


def test_amat_variants_and_xi_sources_give_one_run_each():
  config = tiny_config('amat')
  variants = [sweep.parse_variant('refine=paper', config.method),
              sweep.parse_variant('refine=boundary, max_margin=12', config.method)]
  assert variants[1] == {'refine': 'boundary', 'max_margin': 12.0}
  runs = sweep.plan_runs(config, '/tmp/sw', methods=('std', 'amat'), xi_sources=('std', 'warmup'),
                         amat_variants=variants)
  assert [r.name for r in runs] == [
      'std', 'amat_refine-paper_xi-std', 'amat_refine-paper_xi-warmup',
      'amat_refine-boundary_max_margin-12_xi-std', 'amat_refine-boundary_max_margin-12_xi-warmup']
  assert len({r.label for r in runs}) == 5
  m = {r.name: r.config.method for r in runs}
  assert m['amat_refine-boundary_max_margin-12_xi-std'].max_margin == 12.0
  assert m['amat_refine-boundary_max_margin-12_xi-std'].refine == 'boundary'
  assert m['amat_refine-paper_xi-std'].max_margin == config.method.max_margin
  assert m['amat_refine-paper_xi-std'].xi_checkpoint == '/tmp/sw/std'
  assert m['amat_refine-paper_xi-warmup'].xi_source == 'warmup'
  for r in runs:
    assert sweep._shared_settings(r.config) == sweep._shared_settings(config)
  # One variant and one source keep the plain name.
  assert [r.name for r in sweep.plan_runs(config, '/tmp/sw', methods=('std', 'amat'))] == [
      'std', 'amat']


@pytest.mark.parametrize('text, words', [
    ('refine', ['refine']), ('bogus=1', ['bogus']), ('max_margin=big', ['max_margin', 'float']),
    ('adv_only_correct=maybe', ['adv_only_correct']), ('name=sat', ['name=sat']),
])
def test_bad_amat_variants_are_refused(text, words):
  with pytest.raises(ConfigError) as e:
    sweep.parse_variant(text, tiny_config('amat').method)
  assert all(w in str(e.value) for w in words) and '\n' not in str(e.value)


def test_xi_from_std_needs_std_in_the_sweep():
  with pytest.raises(ConfigError) as e:
    sweep.plan_runs(tiny_config('amat'), '/tmp/sw', methods=('amat',), xi_sources=('std',))
  assert 'std' in str(e.value)


def test_training_plot_needs_curves_or_margins(tmp_path):
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'metrics.jsonl').write_text(json.dumps({'type': 'epoch', 'epoch': 0, 'seconds': 1}) + '\n')
  assert not sweep.plot_training([('STD', str(run))], 'adi', str(tmp_path / 't.png'))
  assert not (tmp_path / 't.png').exists()
  with (run / 'metrics.jsonl').open('a') as f:
    for e in range(3):
      f.write(json.dumps({'type': 'val', 'epoch': e, 'step': e, 'adi': 0.1 * e}) + '\n')
  assert sweep.plot_training([('STD', str(run))], 'adi', str(tmp_path / 't.png'))
  assert (tmp_path / 't.png').stat().st_size > 3000


def test_method_configs_keep_their_order_after_std_and_give_amat_xi_from_std(tmp_path):
  """`--method_configs`: one run per file, the run named 'std' first (AMAT's ξ source), the rest
  in the order given, each with its file's method section and otherwise the --config's
  settings."""
  from robust_med.presets import classification as presets  # pylint: disable=import-outside-toplevel
  config = presets.classification_config('busi', 'rtda', 'cpu')
  files = [f'configs/busi_{m}.py:cpu' for m in ('rtda', 'aug', 'std', 'amat')]
  runs = sweep.method_config_runs(config, str(tmp_path), files)
  assert [r.name for r in runs] == ['std', 'rtda', 'aug', 'amat']
  m = {r.name: r.config.method for r in runs}
  assert m['aug'].name == 'std' and m['aug'].augment and not m['std'].augment
  assert m['rtda'].grad_penalty > 0 and m['std'].grad_penalty == 0
  assert m['amat'].xi_source == 'checkpoint'
  for r in runs:
    assert sweep._shared_settings(r.config) == sweep._shared_settings(config)
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(arg):\n  return 1 / 0\n')
  nothing = tmp_path / 'nothing.py'
  nothing.write_text('x = 1\n')
  for path, words in ((broken, ['ZeroDivisionError']), (nothing, ['get_config']),
                      (tmp_path / 'absent.py', ['no config file'])):
    with pytest.raises(ConfigError) as e:
      sweep.method_config_runs(config, str(tmp_path), [str(path)])
    assert '\n' not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
  with pytest.raises(ConfigError, match='head'):
    sweep.method_config_runs(config, str(tmp_path), ['configs/ceph_std.py:synthetic'])
