"""Running the command lines as a user does (subprocesses) and checking their one-line errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / 'configs' / 'prostate_amat.py')
# A few-second variant of the synthetic demo.
TINY = ['--config.data.patch_size=(16,16)', '--config.data.num_train=32',
        '--config.data.num_val=16', '--config.model.base_width=4', '--config.model.depth=2',
        '--config.batch_size=8', '--config.num_epochs=3', '--config.attack.steps=2',
        '--config.eval.steps=3', '--config.eval.apgd_steps=3',
        '--config.eval.noise_levels=(0.5,1.0)',
        '--config.log_every_steps=2', '--config.checkpoint_every_steps=2',
        '--config.progress_bar=False', '--config.mesh.num_devices=1']
# The tests compile unoptimised XLA code, in process (conftest.py), in their command-line runs and
# in the notebooks: about a fifth less CPU for these compile-bound tiny runs. Numbers differ from
# a default build's in the last bits only, and every comparison a test makes is between
# computations compiled alike; where the default build itself is the subject, a test runs it in a
# process of its own (test_train.py's fresh-state check). Speed is measured in benchmarks/, with
# the default flags.
XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def env(pythonpath=()) -> dict:
  """The environment of the tests' command-line runs: the repository importable, XLA_FLAGS."""
  environ = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}  # not a task
  return dict(environ, PYTHONPATH=os.pathsep.join([str(REPO), *map(str, pythonpath)]),
              XLA_FLAGS=XLA_FLAGS)


def run(module, *args, timeout=300, pythonpath=()):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env(pythonpath),
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
  """The single `error:` line of a run that failed with exit status 2 (asserts that shape)."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: ')
  return lines[0]


def shared_run(tmp_path_factory, name: str, module: str, *args: str):
  """Runs `python -m module *args --workdir=<folder>` once per test session, however many xdist
  workers ask for it (a file lock in the session's shared temporary folder; the later callers
  wait and reuse the folder), and returns the folder. Callers must not write into it: copy it
  (`copy_run`) first."""
  from filelock import FileLock
  root = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = root.parent  # pytest-N/, shared by this session's workers (popen-gw0/, ...) only.
  work, done = root / 'shared_runs' / name, root / 'shared_runs' / f'{name}.done'
  work.parent.mkdir(parents=True, exist_ok=True)
  with FileLock(str(work) + '.lock'):
    if not done.exists():
      shutil.rmtree(work, ignore_errors=True)
      proc = run(module, *args, f'--workdir={work}', timeout=900)
      if proc.returncode != 0:
        pytest.fail(f'the shared run {name} failed:\n{proc.stderr[-3000:]}')
      done.write_text(json.dumps(list(args)))
  return work


def copy_run(run, folder):
  """A private copy of a shared run that a test may change."""
  shutil.copytree(run, folder)
  return folder
