"""Running the command lines as a user does (subprocesses) and checking their one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

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


def run(module, *args, timeout=300, pythonpath=()):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *map(str, pythonpath)]),
             XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
  """The single `error:` line of a run that failed with exit status 2 (asserts that shape)."""
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: ')
  return lines[0]
