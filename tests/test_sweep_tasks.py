"""A sweep fanned out as separate processes (job-array tasks): the plan, dependencies, locks,
resuming, the printed SLURM and multi-GPU scripts, and their bad inputs."""

import csv
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robust_med import launch, sweep
from robust_med.errors import UserError
from cli_helpers import env
from tiny import tiny_config

REPO = Path(__file__).resolve().parent.parent


def _config(**overrides):
  return tiny_config('amat', **{'mesh.num_devices': 1, 'eval.steps': 4,
                                'eval.noise_levels': (0.5, 1.0), 'num_epochs': 2,
                                **overrides})


def _task(work, *args):
  return [sys.executable, '-m', 'robust_med.sweep', f'--workdir={work}', *args]


def _run(work, *args, timeout=300):
  return subprocess.run(_task(work, *args), cwd=REPO, env=env(), capture_output=True, text=True,
                        timeout=timeout)


def _csv_without_timing(path: Path) -> list[dict]:
  rows = list(csv.DictReader(io.StringIO(path.read_text())))
  for r in rows:
    r.pop('train_seconds_per_epoch')  # wall time: the one column that is not computed
  return rows


def test_plan_records_each_runs_config_and_what_it_waits_for(tmp_path):
  work = str(tmp_path)
  runs = sweep.with_seeds(sweep.with_transfer(
      sweep.plan_runs(_config(), work, sat_eps=(0.5,)), work, 'std'), work, 2)
  sweep._check_plan(work, _config(), runs)
  plan = json.loads((tmp_path / 'sweep.json').read_text())['runs']
  assert [r['name'] for r in plan] == ['std', 'sat_eps0.5', 'amat', 'std_seed1',
                                       'sat_eps0.5_seed1', 'amat_seed1']
  # The transfer attack and AMAT's ξ read the STD model of the same seed; STD reads nothing
  # (its transfer source is itself).
  assert [r['after'] for r in plan] == [[], ['std'], ['std'], [], ['std_seed1'], ['std_seed1']]
  assert launch.stages(plan) == [[0, 3], [1, 2, 4, 5]]
  # Each recorded config is the run's, read back as the same config.
  from robust_med import cli
  for run, entry in zip(runs, plan):
    again = cli.config_from_dict(entry['config'], 'plan')
    assert again.to_json_best_effort() == run.config.to_json_best_effort()


def test_stages_refuse_runs_that_wait_for_each_other():
  runs = [{'name': 'a', 'after': ['b']}, {'name': 'b', 'after': ['a']}]
  with pytest.raises(UserError, match='wait for each other'):
    launch.stages(runs)
  with pytest.raises(UserError, match='does not have'):
    launch.stages([{'name': 'a', 'after': ['zz']}])


def test_a_lock_is_held_by_one_holder_at_a_time(tmp_path):
  path = str(tmp_path / '.lock')
  with launch.file_lock(path) as first:
    with launch.file_lock(path) as second:
      assert first and not second
  with launch.file_lock(path) as again:
    assert again  # released when the holder's block ends


@pytest.mark.slow
def test_tasks_out_of_order_give_the_sequential_sweeps_summary_bit_for_bit(tmp_path):
  config = _config()
  fan, seq = tmp_path / 'fan', tmp_path / 'seq'
  kwargs = dict(methods=('std', 'amat'), transfer_from='std', log=lambda s: None)
  sweep.run_sweep(config, str(fan), plan_only=True, **kwargs)
  names = [r['name'] for r in json.loads((fan / 'sweep.json').read_text())['runs']]
  assert names == ['std', 'amat']
  # A task whose input is missing is refused without --wait (AMAT, started before STD) ...
  refused = _run(fan, '--task_index=1')
  assert refused.returncode == 2 and 'have not finished' in refused.stderr, refused.stderr
  # ... and with --wait waits for it, then runs.
  waiting = subprocess.Popen(_task(fan, '--run=amat', '--wait=600'), cwd=REPO, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  proc = _run(fan, '--task_index=0')
  assert proc.returncode == 0, proc.stderr[-3000:]
  out, err = waiting.communicate(timeout=600)
  assert waiting.returncode == 0, err[-3000:]
  assert 'waiting up to 600 s for std' in err
  summary = _run(fan, '--summarize')
  assert summary.returncode == 0, summary.stderr[-3000:]

  sweep.run_sweep(config, str(seq), **kwargs)  # the same sweep, one run after another
  assert _csv_without_timing(fan / 'summary.csv') == _csv_without_timing(seq / 'summary.csv')
  assert (fan / 'comparisons.csv').read_text() == (seq / 'comparisons.csv').read_text()


@pytest.mark.slow
def test_a_killed_task_resumes_and_two_processes_on_one_run_leave_one_run(tmp_path):
  work = tmp_path / 'sweep'
  sweep.run_sweep(_config(num_epochs=4), str(work), methods=('std',), plan_only=True,
                  log=lambda s: None)
  ckpt = work / 'std' / 'checkpoints'
  first = subprocess.Popen(_task(work, '--task_index=0'), cwd=REPO, env=env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and first.poll() is None and not (
      ckpt.is_dir() and any(d.isdigit() for d in os.listdir(ckpt))):
    time.sleep(0.1)
  first.send_signal(signal.SIGKILL)
  first.wait()
  assert not (work / 'std' / 'robustness.json').exists(), 'the run finished before the kill'
  # Two "array tasks" given the same run while a third process holds its lock: both wait;
  # once it is free, one resumes the run and the other finds it done.
  logs = [tmp_path / f'task{k}.log' for k in range(2)]
  with launch.file_lock(str(work / 'std' / '.lock.0')) as held:
    assert held
    both = [subprocess.Popen(_task(work, '--run=std'), cwd=REPO, env=env(),
                             stdout=subprocess.DEVNULL, stderr=log.open('w')) for log in logs]
    deadline = time.time() + 300
    while time.time() < deadline and not all(
        'waiting for it to end' in log.read_text() for log in logs):
      assert all(p.poll() is None for p in both), [log.read_text()[-2000:] for log in logs]
      time.sleep(0.2)
    assert not (work / 'std' / 'robustness.json').exists()
  for p in both:
    p.wait(timeout=600)
  errs = [log.read_text() for log in logs]
  assert [p.returncode for p in both] == [0, 0], [e[-2000:] for e in errs]
  assert sorted(('training and evaluating' in e, 'done, skipped' in e) for e in errs) == [
      (False, True), (True, False)], errs
  steps = [r['step'] for r in map(json.loads, (work / 'std' / 'metrics.jsonl').open())
           if r['type'] == 'train']
  assert steps.count(2) == 1, 'the run restarted from scratch instead of its checkpoint'
  assert steps[-1] == 4 * 4
  report = json.loads((work / 'std' / 'robustness.json').read_text())
  assert [r['eps'] for r in report['results']] == [0.0, 0.5, 1.0]
  again = _run(work, '--run=std')
  assert again.returncode == 0 and 'done, skipped' in again.stderr


def _fake_sbatch(tmp_path) -> Path:
  """An `sbatch` that records its arguments and answers job ids 101, 102, ..."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  fake = bin_dir / 'sbatch'
  fake.write_text('#!/bin/bash\n'
                  f'log={tmp_path}/sbatch.log\n'
                  'n=$(( $(cat "$log" 2>/dev/null | wc -l) + 101 ))\n'
                  'printf "%s\\x1f" "$@" >> "$log"; echo >> "$log"\n'
                  'echo $n\n')
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  return bin_dir


def test_the_printed_scripts_pass_bash_n_submit_every_run_once_and_respect_stages(tmp_path):
  work = tmp_path / "Bob's sweep"  # a space and a quote: every path must stay one word
  sweep.run_sweep(_config(), str(work), sat_eps=(0.5,), transfer_from='std', seeds=2,
                  plan_only=True, log=lambda s: None)
  plan = json.loads((work / 'sweep.json').read_text())['runs']
  proc = _run(work, '--print_slurm', '--max_parallel=3', "--slurm_args=--partition=gpu --time=1:00:00")
  assert proc.returncode == 0, proc.stderr[-2000:]
  script = tmp_path / 'submit.sh'
  script.write_text(proc.stdout)
  assert subprocess.run(['bash', '-n', str(script)]).returncode == 0
  listed = re.findall(r'^#   task (\d+): (\S+)', proc.stdout, re.M)
  assert listed == [(str(i), r['name']) for i, r in enumerate(plan)]

  # Submitted with a stand-in sbatch: one array per stage, each after the one before, every run
  # in exactly one array, then the summary after both.
  bin_dir = _fake_sbatch(tmp_path)
  submit = subprocess.run(['bash', str(script)], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}'))
  assert submit.returncode == 0, submit.stderr
  assert 'stage 0 101, stage 1 102, summary 103' in submit.stdout
  calls = [line.split('\x1f')[:-1] for line in (tmp_path / 'sbatch.log').read_text().splitlines()]
  assert len(calls) == 3
  arrays = [next(a for a in c if a.startswith('--array=')) for c in calls[:2]]
  indices = [int(i) for a in arrays for i in a[len('--array='):].split('%')[0].split(',')]
  assert sorted(indices) == list(range(len(plan)))
  assert all(a.endswith('%3') for a in arrays)
  stage0 = [int(i) for i in arrays[0][len('--array='):].split('%')[0].split(',')]
  assert all(not plan[i]['after'] for i in stage0)
  assert '--dependency=afterok:101' in calls[1] and '--dependency=afterany:101:102' in calls[2]
  for c in calls:
    assert '--partition=gpu' in c and '--time=1:00:00' in c and ('--gres=gpu:1' in c) == (
        c is not calls[2])
  # Each job's command, as SLURM's shell runs it (task 3 of its array), with a stand-in python
  # that prints its arguments one per line.
  fake_python = bin_dir / 'python'
  fake_python.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
  fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
  wraps = [next(a for a in c if a.startswith('--wrap='))[len('--wrap='):] for c in calls]
  for wrap, last in zip(wraps, ('--task_index=3', '--task_index=3', '--summarize')):
    argv = subprocess.run(['sh', '-c', wrap.replace(sys.executable, str(fake_python))],
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, SLURM_ARRAY_TASK_ID='3')).stdout.splitlines()
    assert argv == ['-m', 'robust_med.sweep', f'--workdir={work}', last]

  # Each run on two nodes: trained by both (srun, --distributed), then evaluated in one process.
  two_nodes = launch.slurm_script(str(work), plan, python=str(fake_python), nodes=2)
  (tmp_path / 'nodes.sh').write_text(two_nodes)
  assert subprocess.run(['bash', '-n', str(tmp_path / 'nodes.sh')]).returncode == 0
  assert two_nodes.count('--nodes=2 --ntasks-per-node=1') == 2
  wrap = re.findall(r"--wrap=('[^\n]*')\)$", two_nodes, re.M)[0]
  argv = subprocess.run(['sh', '-c', f'srun() {{ echo srun; "$@"; }}; eval {wrap}'],
                        capture_output=True, text=True, check=True,
                        env=dict(os.environ, SLURM_ARRAY_TASK_ID='4')).stdout.splitlines()
  task = ['-m', 'robust_med.sweep', f'--workdir={work}', '--task_index=4']
  assert argv == ['srun', *task, '--distributed', *task]

  # One machine, 4 GPUs: every run once, stage by stage (a `wait` between stages).
  local = launch.local_script(str(work), plan, python=sys.executable, gpus=4)
  (tmp_path / 'local.sh').write_text(local)
  assert subprocess.run(['bash', '-n', str(tmp_path / 'local.sh')]).returncode == 0
  dealt = []
  for k, part in enumerate(local.split('# stage ')[1:]):
    lists = re.findall(r'^\(for i in ([\d ]+); do CUDA_VISIBLE_DEVICES=(\d)', part, re.M)
    assert part.rstrip().splitlines()[-1 if k < 1 else -2] == 'wait'
    dealt.append(sorted(int(i) for tasks, _ in lists for i in tasks.split()))
  assert dealt == launch.stages(plan)
  assert local.rstrip().endswith('--summarize')


def test_bad_task_inputs_are_one_error_line(tmp_path):
  work = tmp_path / 'sweep'
  sweep.run_sweep(_config(), str(work), sat_eps=(0.5,), plan_only=True, log=lambda s: None)
  for args, words in ((['--task_index=7'], ['--task_index=7', '3 runs', '0 … 2']),
                      (['--run=nope'], ['--run=nope', "'std'"]),
                      (['--run=amat'], ['std', 'have not finished', '--wait'])):
    proc = _run(work, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('error: ') and all(w in line for w in words), line
  # A summary with runs missing: a warning that lists them, not an error.
  proc = _run(work, '--summarize')
  assert proc.returncode == 0 and 'warning: 3 run(s)' in proc.stderr
  assert 'std, sat_eps0.5, amat' in proc.stderr
  # A plan that does not record the runs' configs (written before robust_med did).
  plan = json.loads((work / 'sweep.json').read_text())
  for r in plan['runs']:
    del r['config']
  (work / 'sweep.json').write_text(json.dumps(plan))
  proc = _run(work, '--task_index=0')
  assert proc.returncode == 2 and '--plan_only' in proc.stderr.strip().splitlines()[-1]


def test_a_plan_changed_after_a_run_started_is_refused(tmp_path):
  work = str(tmp_path)
  config = _config()
  runs = sweep.plan_runs(config, work, sat_eps=(0.5,))
  sweep._check_plan(work, config, runs)
  changed = sweep.plan_runs(config, work, sat_eps=(0.5,))
  changed[2].config.method.delta_eps = 0.25  # AMAT's Δε
  (tmp_path / 'amat').mkdir()
  (tmp_path / 'amat' / '.lock.0').write_text('')  # a task that died before it began
  sweep._check_plan(work, config, changed)  # allowed: AMAT has not started
  (tmp_path / 'amat' / 'config.json').write_text(changed[2].config.to_json_best_effort())
  again = sweep.plan_runs(config, work, sat_eps=(0.5,))
  with pytest.raises(UserError, match=r'Run amat .* method\.delta_eps'):
    sweep._check_plan(work, config, again)
  # A run folder whose config.json disagrees with the plan (a hand-edited sweep.json).
  with pytest.raises(UserError, match='method.delta_eps'):
    sweep._check_started_run(again[2].config, str(tmp_path / 'amat'))
  sweep._check_started_run(changed[2].config, str(tmp_path / 'amat'))  # the same: allowed
  moved = json.loads(changed[2].config.to_json_best_effort())  # a sweep copied from elsewhere
  moved['method']['xi_checkpoint'] = '/another/machine/sweep/std'
  (tmp_path / 'amat' / 'config.json').write_text(json.dumps(moved))
  sweep._check_started_run(changed[2].config, str(tmp_path / 'amat'))
  moved['method']['xi_checkpoint'] = '/another/machine/sweep/std_seed1'  # another run: refused
  (tmp_path / 'amat' / 'config.json').write_text(json.dumps(moved))
  with pytest.raises(UserError, match='method.xi_checkpoint'):
    sweep._check_started_run(changed[2].config, str(tmp_path / 'amat'))
  # A key the started run's config lacks (saved before robust_med had it) counts as its default:
  # today's default is no change, another value is.
  saved = json.loads(changed[2].config.to_json_best_effort())
  del saved['method']['xi_stat']
  (tmp_path / 'amat' / 'config.json').write_text(json.dumps(saved))
  sweep._check_started_run(changed[2].config, str(tmp_path / 'amat'))
  assert changed[2].config.method.xi_stat == 'mean'  # the default
  changed[2].config.method.xi_stat = 'mean+2std'
  with pytest.raises(UserError, match='method.xi_stat'):
    sweep._check_started_run(changed[2].config, str(tmp_path / 'amat'))


def test_settings_that_name_a_run_folder_are_its_dependencies_only_when_absolute(tmp_path,
                                                                               monkeypatch):
  monkeypatch.chdir(tmp_path)  # the sweep in '.': 'std' is a method name and a folder name
  runs = sweep.with_seeds(sweep.plan_runs(_config(), '.', sat_eps=(0.5,)), '.', 2)
  after = sweep.dependencies(runs, '.')
  assert after == {'std': [], 'sat_eps0.5': [], 'amat': ['std'], 'std_seed1': [],
                   'sat_eps0.5_seed1': [], 'amat_seed1': ['std_seed1']}


def test_the_command_line_task_modes_and_their_bad_combinations(tmp_path):
  work = tmp_path / 'sweep'
  sweep.run_sweep(_config(), str(work), sat_eps=(0.5,), plan_only=True, log=lambda s: None)
  # In a SLURM job array with no --config, the task index is the array's.
  proc = subprocess.run(_task(work), cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(env(), SLURM_ARRAY_TASK_ID='2'))
  assert proc.returncode == 2 and 'Run amat reads run(s) std' in proc.stderr, proc.stderr[-2000:]
  for args, words in ((['--task_index=0', '--run=std'], ['not both']),
                      (['--task_index=0', f'--config={REPO}/configs/prostate_amat.py:synthetic'],
                       ['leave --config out']),
                      (['--print_slurm', "--slurm_args=--partition='gpu"], ['--slurm_args'])):
    proc = _run(work, *args)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and line.startswith('error: ') and all(w in line for w in words), \
        proc.stderr[-2000:]
  # --method_configs repeated (as shell braces write it) adds up, like one comma list.
  proc = _run(tmp_path / 'cls', f'--config={REPO}/configs/busi_rtda.py:synthetic', '--plan_only',
              *[f'--method_configs={REPO}/configs/busi_{m}.py:synthetic' for m in ('at', 'std')])
  assert proc.returncode == 0, proc.stderr[-2000:]
  plan = json.loads((tmp_path / 'cls' / 'sweep.json').read_text())
  assert [r['name'] for r in plan['runs']] == ['std', 'at']
