"""A sweep's runs as separate jobs: per-run locks, stages, and the scripts that launch them.

A sweep's plan (`sweep.json`) lists every run with its whole config and the runs it reads
(`after`: today the sweep's STD model, read by AMAT for ξ, by offline FGSM augmentation and by
the transfer attack). `stages` groups the runs so that a stage waits only for earlier ones;
`slurm_script` submits each stage as a SLURM job array (`--dependency=afterok` on the stage
before, one GPU per task) and the summary as a final dependent job; `local_script` runs the plan
on one machine with one process per GPU (`CUDA_VISIBLE_DEVICES`), stage by stage. Each task is
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
from typing import Callable, Iterator, Sequence

from robust_med.errors import UserError


@contextlib.contextmanager
def file_lock(path: str, blocking: bool = False,
              on_busy: Callable[[], None] | None = None) -> Iterator[bool]:
  """Yields True while this process holds an exclusive flock on `path` (created if missing).
  When another process holds it, calls `on_busy` and then yields False at once, or with
  `blocking` waits for it and yields True."""
  import fcntl
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if on_busy is not None:
        on_busy()
      if not blocking:
        yield False
        return
      fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      yield True
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: str, wait: bool = False,
             on_busy: Callable[[], None] | None = None) -> Iterator[bool]:
  """`file_lock` on the run folder for this process (`.lock.<JAX process index>`). In a
  multi-process run, True only when every process holds its own (all go ahead or none does)."""
  import jax
  os.makedirs(run_dir, exist_ok=True)
  with file_lock(os.path.join(run_dir, f'.lock.{jax.process_index()}'), wait, on_busy) as mine:
    if jax.process_count() > 1:
      import numpy as np
      from jax.experimental import multihost_utils
      mine = bool(np.all(multihost_utils.process_allgather(np.asarray(mine))))
    yield mine


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
      f'options=({" ".join(map(shlex.quote, sbatch_args))})  # yours, after the defaults',
  ]
  previous = ''
  for k, group in enumerate(groups):
    # A stage waits for the whole stage before it to succeed; when a run there fails, SLURM
    # cancels this stage instead of leaving it pending for ever (the summary still comes).
    dependency = (f' --dependency=afterok:"${previous}" --kill-on-invalid-dep=yes'
                  if previous else '')
    output = shlex.quote(f'--output={workdir}/slurm/{name}-stage{k}-%A_%a.out')
    lines.append(
        f'stage{k}=$(sbatch --parsable {output} {" ".join(per_task)} '
        f'{shlex.quote(f"--job-name={name}-stage{k}")} '
        f'--array={",".join(map(str, group))}%{max_parallel}{dependency} "${{options[@]}}" '
        f'--wrap={shlex.quote(task)})')
    previous = f'stage{k}'
  after = ':'.join(f'${{stage{k}}}' for k in range(len(groups)))
  output = shlex.quote(f'--output={workdir}/slurm/{name}-summary-%j.out')
  lines += [
      f'summary=$(sbatch --parsable {output} {shlex.quote(f"--job-name={name}-summary")} '
      f'--dependency=afterany:{after} "${{options[@]}}" '
      f'--wrap={shlex.quote(_sweep_command(python, workdir, "--summarize"))})',
      'echo "submitted: ' + ' '.join(f'stage {k} ${{stage{k}}},' for k in range(len(groups)))
      + ' summary ${summary}"', '']
  return '\n'.join(lines)


def local_script(workdir: str, runs: Sequence[dict], *, python: str, gpus: int) -> str:
  """A bash script that runs the plan on one machine with `gpus` GPUs, stage by stage: each
  stage's runs dealt to the GPUs, one process at a time per GPU (`CUDA_VISIBLE_DEVICES`), the
  next stage once the whole stage has ended, then the summary. A run whose input failed is
  refused at once (one `error:` line in its GPU's log), so a failure never stalls the rest."""
  if gpus < 1:
    raise UserError(f'--print_local={gpus}: give the number of GPUs (at least 1).')
  workdir = os.path.abspath(workdir)
  lines = [
      '#!/bin/bash',
      f'# The sweep in {workdir} on one machine with {gpus} GPU(s): {len(runs)} runs, one process',
      '# per GPU at a time, stage by stage, then the summary. Run it with `bash THIS_FILE`; run it',
      '# again after a crash: finished runs are skipped, the others resume. The runs (task',
      '# index: run):',
      *_task_list(runs),
      'set -uo pipefail',
      f'mkdir -p {shlex.quote(workdir)}/local',
  ]
  task = _sweep_command(python, workdir, '--task_index="$i"')
  for k, group in enumerate(stages(runs)):
    lines.append(f'# stage {k}')
    for g in range(gpus):
      tasks = ' '.join(str(i) for i in group[g::gpus])
      if tasks:
        lines.append(f'(for i in {tasks}; do CUDA_VISIBLE_DEVICES={g} {task} '
                     f'|| echo "task $i failed"; done) >> '
                     f'{shlex.quote(f"{workdir}/local/gpu{g}.log")} 2>&1 &')
    lines.append('wait')
  lines += [_sweep_command(python, workdir, '--summarize'), '']
  return '\n'.join(lines)
