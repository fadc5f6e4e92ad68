"""Multi-host training: 2 processes on localhost (CPU, 2 simulated devices each, gloo collectives)
train one AMAT model together and end bit for bit where one process with 4 devices ends.

The runs, all on the same tiny synthetic config (AMAT with a ξ warm-up epoch, so the ξ measurement,
the margins and both train steps are exercised), started as a user starts them:
  * `ref`: one process with 4 devices (`tests/multihost_worker.py`: `robust_med.main`'s command
    line, training only), with `--num_processes=1` so that its collectives are gloo's too;
  * `two`: `python -m robust_med.main ... --num_processes=2 --process_id=0|1`;
  * `resumed`: 2 processes again, resuming from `two`'s mid-run checkpoint (started as soon as
    that checkpoint is complete, while the others still run).
The two from-scratch runs run at the same time. Every checkpoint of all three runs must hold the
same bits (params, optimizer state, margins, ξ), and the metrics must be the same numbers.

Why the reference uses gloo and PJRT_NPROC: bit-for-bit equality needs the same compiled program
and the same reduction order. An in-process all-reduce (a plain single-process run) and gloo's ring
all-reduce add the devices' partial gradients in different orders (last-bit differences; results
across device counts are compared to a tolerance in test_train.py); and XLA:CPU splits large ops
across max(PJRT_NPROC or the core count, local device count) threads, so without PJRT_NPROC a
2-device process and a 4-device process compile differently on a 2-core machine. All runs compile
unoptimised XLA code (the same flags everywhere), which keeps the test near a minute.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cli_helpers import CONFIG, REPO, XLA_FLAGS
from robust_med import checkpointing, sharding

ARGS = [f'--config={CONFIG}:synthetic', '--config.data.patch_size=(16,16)',
        '--config.data.num_train=16', '--config.data.num_val=8', '--config.model.base_width=4',
        '--config.model.depth=2', '--config.batch_size=8', '--config.num_epochs=2',
        '--config.method.xi_warmup_epochs=1', '--config.attack.steps=1',
        '--config.log_every_steps=1', '--config.checkpoint_every_steps=2',
        '--config.keep_checkpoints=10', '--config.progress_bar=False',
        '--config.eval.batch_size=8']
TOTAL_STEPS, MID_STEP = 4, 2
WORKER = str(REPO / 'tests' / 'multihost_worker.py')
TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(devices: int, cache: str) -> dict:
  # Unoptimised XLA code (cli_helpers.XLA_FLAGS) compiles ~4x faster (the eager model init alone
  # is ~100 small compiles); every run uses the same flags, so the equality checks compare like
  # with like.
  flags = f'--xla_force_host_platform_device_count={devices} {XLA_FLAGS}'
  return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu', XLA_FLAGS=flags,
              PJRT_NPROC='4',  # See the module docstring.
              # What process 0 of a run compiled, process 0 of a later run reads.
              JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _job(command: list[str], num_processes: int, devices: int, workdir, cache) -> list:
  """One run's processes: (name, argv, env), with a fresh coordinator port."""
  port = _free_port()
  return [(f'{os.path.basename(str(workdir))}[{i}]',
           command + ARGS + [f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
                             f'--num_processes={num_processes}', f'--process_id={i}'],
           _env(devices, cache)) for i in range(num_processes)]


def _run_all(stages: list, logs, timeout: float = TIMEOUT_S) -> dict[str, str]:
  """Runs `stages`, a list of (ready, prepare, processes): a stage's processes start once
  `ready()` holds (None: at once), after `prepare()`, while the earlier stages keep running. Waits
  for all; on a failure or the timeout every process still running is killed (its whole process
  group) and the test fails with the logs' tails. Returns {name: output}."""
  started, pending = [], list(stages)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline:
      while pending and (pending[0][0] is None or pending[0][0]()):
        _, prepare, processes = pending.pop(0)
        if prepare:
          prepare()
        for name, argv, env in processes:
          log = open(logs / f'{name}.log', 'w')
          started.append((name, log, subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                                       stderr=subprocess.STDOUT,
                                                       start_new_session=True)))
      codes = [p.poll() for _, _, p in started]
      if any(c not in (None, 0) for c in codes) or (not pending and all(c == 0 for c in codes)):
        break
      time.sleep(0.2)
    codes = [p.poll() for _, _, p in started]
  finally:
    for _, log, p in started:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
      log.close()
  outputs = {name: (logs / f'{name}.log').read_text() for name, _, _ in started}
  if pending or any(c != 0 for c in codes):
    tails = '\n'.join(f'--- {n} (exit {c}) ---\n{outputs[n][-3000:]}'
                      for (n, _, _), c in zip(started, codes))
    pytest.fail(f'a run failed or passed the {timeout:.0f} s limit:\n{tails}')
  return outputs


def _run_everything(root):
  """Runs `ref`, `two` and `resumed` (see the module docstring); returns {name: output}."""
  cache = str(root / 'jax_cache')
  t0 = time.time()
  main = [sys.executable, '-m', 'robust_med.main']
  # Orbax renames a checkpoint's folder into place once it is complete.
  mid = root / 'two' / 'checkpoints' / str(MID_STEP)
  outputs = _run_all([
      (None, None, _job([sys.executable, WORKER], 1, 4, root / 'ref', cache) +
                   _job(main, 2, 2, root / 'two', cache)),
      # 2 processes resume from the 2-process run's mid-run checkpoint as soon as it exists.
      (mid.is_dir, lambda: shutil.copytree(mid, root / 'resumed' / 'checkpoints' / str(MID_STEP)),
       _job(main, 2, 2, root / 'resumed', cache))], root)
  print(f'multi-host runs: {time.time() - t0:.1f} s')
  return outputs


def _saved(workdir, step: int) -> dict:
  """The whole state saved at `step`, as host arrays (the documented reader, on one device)."""
  return checkpointing.read_arrays(str(workdir), step)


def _steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())


def _records(workdir) -> list[dict]:
  timing = ('steps_per_second', 'seconds')
  return [{k: v for k, v in json.loads(line).items() if k not in timing}
          for line in open(workdir / 'metrics.jsonl')]


def _assert_same_bits(a: dict, b: dict) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), (
        f'{jax.tree_util.keystr(path)} differs (max |diff| '
        f'{np.nanmax(np.abs(x.astype(np.float64) - y.astype(np.float64)))})')


def test_two_processes_equal_one_process_bit_for_bit(tmp_path):
  """One test (not several sharing a fixture) so that pytest-xdist never starts the runs twice."""
  outputs = _run_everything(tmp_path)
  ref, two, resumed = tmp_path / 'ref', tmp_path / 'two', tmp_path / 'resumed'
  assert _steps(ref) == _steps(two) == [MID_STEP, TOTAL_STEPS]
  for step in _steps(ref):  # The 2-process checkpoints restore (here in one process).
    _assert_same_bits(_saved(two, step), _saved(ref, step))
  final = _saved(two, TOTAL_STEPS)
  assert int(final['step']) == TOTAL_STEPS
  # Not trivially equal: AMAT moved the margins and ξ was measured after the warm-up epoch.
  margins = final['margins'][:16]
  assert not np.all(margins == margins[0]) and np.isfinite(final['xi']).all()
  # Process 0 alone logged, the same numbers as the single process.
  assert _records(two) == _records(ref)
  assert sum(r['type'] == 'xi' for r in _records(two)) == 1
  assert json.load(open(two / 'config.json')) == json.load(open(ref / 'config.json'))
  # Each process of the 2-process run ended cleanly; process 0 says how to evaluate.
  for name in ('two[0]', 'two[1]'):
    assert 'Traceback' not in outputs[name] and 'error:' not in outputs[name], outputs[name]
  assert 'python -m robust_med.evaluate' in outputs['two[0]']
  assert 'python -m robust_med.evaluate' not in outputs['two[1]']
  # 2 processes resumed the 2-process run's mid-run checkpoint (measuring ξ themselves) and ended
  # where the uninterrupted runs end.
  assert _steps(resumed) == [MID_STEP, TOTAL_STEPS]
  assert [r['step'] for r in _records(resumed) if r['type'] == 'train'] == [3, 4]
  _assert_same_bits(_saved(resumed, TOTAL_STEPS), final)


def test_single_process_helpers_keep_the_old_layout():
  mesh = sharding.make_mesh(4)
  np.testing.assert_array_equal(sharding.local_rows(mesh, 8), np.arange(8))
  batch = {'id': np.arange(8, dtype=np.int32)}
  placed = sharding.put_batch(batch, mesh)['id']
  assert placed.sharding == sharding.data_sharding(mesh)
  np.testing.assert_array_equal(sharding.host_value(placed), batch['id'])
  tree = {'a': np.ones(3, np.float32), 'b': np.arange(8, dtype=np.float32)}
  shardings = {'a': sharding.replicated(mesh), 'b': sharding.data_sharding(mesh)}
  put = sharding.put_global(tree, shardings)
  assert put['b'].sharding == shardings['b']
  np.testing.assert_array_equal(sharding.host_value(put['b']), tree['b'])
