"""A sweep's runs as separate jobs: per-run locks, stages, and the scripts that launch them.

A sweep's plan (`sweep.json`) lists every run with its whole config and the runs it reads
(`after`: today the sweep's STD model, read by AMAT for ξ, by offline FGSM augmentation and by
the transfer attack). `stages` groups the runs so that a stage waits only for earlier ones;
`slurm_script` submits each stage as a SLURM job array (`--dependency=afterok` on the stage
before, one GPU per task) and the summary as a final dependent job; `local_script` runs the plan
on one machine with one process per GPU (`CUDA_VISIBLE_DEVICES`). Each task is
`python -m robust_med.sweep --workdir=DIR --task_index=I` (`robust_med.sweep.run_task`).

`file_lock` keeps two processes off one run folder: an `flock` on `<run>/.lock.<process index>`
(per process index, so that the processes of one multi-host run each hold their own), released
by the kernel when its process ends, killed or not, so no lock is ever left stale. It holds on
local disks and NFS (Linux emulates flock there with POSIX locks); Lustre needs its `flock` mount
option.

Low floor: imports only `errors` (and jax, inside `run_lock`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from typing import Iterator, Sequence

from robust_med.errors import UserError


@contextlib.contextmanager
def file_lock(path: str, blocking: bool = False) -> Iterator[bool]:
  """Yields True while this process holds an exclusive flock on `path` (created if missing);
  without `blocking`, yields False at once when another process holds it."""
  import fcntl
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def run_lock(run_dir: str) -> contextlib.AbstractContextManager[bool]:
  """`file_lock` on the run folder for this process (its JAX process index)."""
  import jax
  os.makedirs(run_dir, exist_ok=True)
  return file_lock(os.path.join(run_dir, f'.lock.{jax.process_index()}'))


def stages(runs: Sequence[dict]) -> list[list[int]]:
  """The plan's run indices by stage: stage 0 reads no other run, stage k only runs of stages
  below k. UserError for a run that waits for an unknown run or for itself through others."""
  index = {r['name']: i for i, r in enumerate(runs)}
  stage: dict[int, int] = {}

  def of(i: int, path: tuple = ()) -> int:
    if i in path:
      raise UserError(f'The sweep plan has runs that wait for each other ('
                      f'{" → ".join(runs[j]["name"] for j in (*path, i))}): rewrite it with '
                      'python -m robust_med.sweep --plan_only.')
    if i not in stage:
      unknown = [a for a in runs[i].get('after', []) if a not in index]
      if unknown:
        raise UserError(f'Run {runs[i]["name"]} of the sweep plan waits for {unknown}, which '
                        'the plan does not have: rewrite it with python -m robust_med.sweep '
                        '--plan_only.')
      stage[i] = 1 + max((of(index[a], (*path, i)) for a in runs[i].get('after', [])),
                         default=-1)
    return stage[i]

  for i in range(len(runs)):
    of(i)
  groups: list[list[int]] = [[] for _ in range(max(stage.values(), default=-1) + 1)]
  for i in range(len(runs)):
    groups[stage[i]].append(i)
  return groups


def _task_list(runs: Sequence[dict]) -> list[str]:
  return [f'#   task {i}: {r["name"]}' + (f'  (after {", ".join(r["after"])})'
                                          if r.get('after') else '')
          for i, r in enumerate(runs)]


def _sweep_command(python: str, workdir: str, *args: str) -> str:
  return ' '.join([shlex.quote(python), '-m', 'robust_med.sweep',
                   f'--workdir={shlex.quote(workdir)}', *args])


def slurm_script(workdir: str, runs: Sequence[dict], *, python: str, max_parallel: int = 8,
                 nodes: int = 1, sbatch_args: Sequence[str] = ()) -> str:
  """A bash script that submits the plan to SLURM: one job array per stage (`%max_parallel`
  tasks at a time, one GPU each, each stage `afterok` on the one before) and the summary as a
  job after the last stage (`afterany`: it lists the runs that did not finish). With `nodes` > 1
  each task trains its run on that many nodes (`srun`, one process and GPU per node,
  `--distributed`), then evaluates it in one process. `sbatch_args` come last, so they can
  override the defaults (e.g. `--gres=gpu:a100:1`)."""
  if max_parallel < 1:
    raise UserError(f'--max_parallel={max_parallel}: run at least one task at a time.')
  if nodes < 1:
    raise UserError(f'--slurm_nodes={nodes}: give each run at least one node.')
  workdir = os.path.abspath(workdir)
  groups = stages(runs)
  name = os.path.basename(workdir.rstrip('/')) or 'sweep'
  per_task = ['--gres=gpu:1'] + ([f'--nodes={nodes}', '--ntasks-per-node=1']
                                 if nodes > 1 else [])
  common = [f'--output={workdir}/slurm/%x-%A_%a.out']
  task = _sweep_command(python, workdir, '--task_index="$SLURM_ARRAY_TASK_ID"')
  if nodes > 1:
    task = f'srun {task} --distributed && {task}'
  lines = [
      '#!/bin/bash',
      f'# The sweep in {workdir}: {len(runs)} runs in {len(groups)} stage(s), then its summary.',
      '# Submit it from a login node with `bash THIS_FILE`. Each stage is a SLURM job array, one',
      '# GPU per task; a resubmitted script skips finished runs and resumes the others from',
      '# their last checkpoint. The runs (task index: run):',
      *_task_list(runs),
      'set -euo pipefail',
      f'mkdir -p {shlex.quote(workdir)}/slurm',
      f'common=({" ".join(map(shlex.quote, common))})',
      f'options=({" ".join(map(shlex.quote, sbatch_args))})  # yours, after the defaults',
  ]
  previous = ''
  for k, group in enumerate(groups):
    dependency = f' --dependency=afterok:"${previous}"' if previous else ''
    lines.append(
        f'stage{k}=$(sbatch --parsable "${{common[@]}}" {" ".join(per_task)} '
        f'--job-name={name}-stage{k} --array={",".join(map(str, group))}%{max_parallel}'
        f'{dependency} "${{options[@]}}" --wrap={shlex.quote(task)})')
    previous = f'stage{k}'
  after = ':'.join(f'${{stage{k}}}' for k in range(len(groups)))
  lines += [
      f'summary=$(sbatch --parsable "${{common[@]}}" --job-name={name}-summary '
      f'--dependency=afterany:{after} "${{options[@]}}" '
      f'--wrap={shlex.quote(_sweep_command(python, workdir, "--summarize"))})',
      'echo "submitted: ' + ' '.join(f'stage {k} ${{stage{k}}},' for k in range(len(groups)))
      + ' summary ${summary}"', '']
  return '\n'.join(lines)


def local_script(workdir: str, runs: Sequence[dict], *, python: str, gpus: int,
                 wait_seconds: int = 7 * 24 * 3600) -> str:
  """A bash script that runs the plan on one machine with `gpus` GPUs: one process at a time per
  GPU (`CUDA_VISIBLE_DEVICES`), the runs dealt to the GPUs in stage order, a run whose inputs are
  still training elsewhere waiting for them (`--wait`), then the summary. Stage order makes the
  waits finish: a run waits only for runs that come before it on every GPU."""
  if gpus < 1:
    raise UserError(f'--print_local={gpus}: give the number of GPUs (at least 1).')
  workdir = os.path.abspath(workdir)
  order = [i for group in stages(runs) for i in group]
  lines = [
      '#!/bin/bash',
      f'# The sweep in {workdir} on one machine with {gpus} GPU(s): {len(runs)} runs, one process',
      '# per GPU at a time, then the summary. Run it with `bash THIS_FILE`; run it again after a',
      '# crash: finished runs are skipped, the others resume. The runs (task index: run):',
      *_task_list(runs),
      'set -uo pipefail',
      f'mkdir -p {shlex.quote(workdir)}/local',
  ]
  for g in range(gpus):
    tasks = ' '.join(str(i) for i in order[g::gpus])
    if not tasks:
      continue
    task = _sweep_command(python, workdir, '--task_index="$i"', f'--wait={wait_seconds}')
    lines.append(f'(for i in {tasks}; do CUDA_VISIBLE_DEVICES={g} {task} '
                 f'|| echo "task $i failed"; done) > {shlex.quote(workdir)}/local/gpu{g}.log '
                 '2>&1 &')
  lines += ['wait', _sweep_command(python, workdir, '--summarize'), '']
  return '\n'.join(lines)
