"""Orbax checkpoints of the whole train state (margins and ξ included) plus a small JSON header.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed while
saving leaves its previous checkpoint intact and resumes from it.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from robust_med.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, *, max_to_keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=('state', 'meta'))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def check_compatible(meta: dict, expected: dict, where: str) -> None:
  """One clear error when a checkpoint was written by another head, method or dataset."""
  for key, want in expected.items():
    got = meta.get(key)
    if got != want:
      raise UserError(f'The checkpoint in {where} was written with {key}={got!r} but this run has '
                      f'{key}={want!r}: use a fresh --workdir (or the config that wrote it).')


def restore(mngr: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """Restores the state at `step` onto the shapes, dtypes and shardings of `target`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state']


def restore_params(workdir: str) -> tuple[Any, dict]:
  """Parameters (as host arrays) and header of the latest checkpoint in another run's workdir."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise UserError(f'No checkpoints in {checkpoint_dir(workdir)}: point to the --workdir of a '
                    'finished run.')
  mngr = manager(workdir, create=False)
  step = mngr.latest_step()
  if step is None:
    raise UserError(f'No complete checkpoint in {checkpoint_dir(workdir)}: let that run finish '
                    'or point to another workdir.')
  meta = read_meta(mngr, step)
  state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  return state['params'], meta
