"""Orbax checkpoints of the whole train state (margins and ξ included) plus a small JSON header.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed while
saving leaves its previous checkpoint intact and resumes from it. Reading is guarded: a checkpoint
written by another model (different parameter shapes) or a corrupt one (truncated files) is one
`UserError` naming the problem, never an Orbax traceback. Evaluation restores the parameters only
(`restore_params`), never the optimizer state or the margins.

Multi-process runs use Orbax's multi-process path as is: every process calls the same `manager`,
`save` and `restore` at the same point; each writes (and reads) its own shards of the sharded
arrays, process 0 (Orbax's primary host) writes the metadata and the JSON header and moves the
finished step into place after a barrier. The checkpoint folder must therefore be one that every
process sees. A checkpoint is independent of the layout that wrote it: one written by N processes
restores in one process and vice versa (onto the shardings of the restore target).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from robust_med.errors import UserError


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def manager(workdir: str, *, max_to_keep: int = 2, create: bool = True) -> ocp.CheckpointManager:
  """The training run's manager: saves and restores the whole state."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers={'state': ocp.StandardCheckpointHandler(),
                                              'meta': ocp.JsonCheckpointHandler()})


def reader(workdir: str) -> ocp.CheckpointManager:
  """A manager for another run's checkpoints that can restore part of the state (the
  parameters); UserError when `workdir` has no checkpoint folder."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise UserError(f'No checkpoints in {checkpoint_dir(workdir)}: point to the --workdir of a '
                    'robust_med.main run (train first).')
  options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                                              'meta': ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=True)
  mngr.wait_until_finished()


def pick_step(mngr: ocp.CheckpointManager, step: int | None = None) -> int:
  """`step` if the manager has it, else the latest when `step` is None; UserError otherwise."""
  where = str(mngr.directory)
  steps = sorted(mngr.all_steps())
  if not steps:
    raise UserError(f'No complete checkpoint in {where}: let the run finish a checkpoint, or '
                    'point to another workdir.')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise UserError(f'There is no checkpoint at step {step} in {where}: it has the steps '
                    f'{", ".join(map(str, steps))}; pass one of them to --step (or leave --step '
                    'out for the latest).')
  return step


class _Held(io.TextIOBase):
  """A stand-in for sys.stderr that keeps what is written to it."""

  def __init__(self):
    super().__init__()
    self.parts: list[str] = []

  def write(self, text: str) -> int:
    self.parts.append(text)
    return len(text)


# How long a failed read waits for TensorStore's callbacks to finish printing (they land on the
# closed asyncio loop of the failed restore and print 'Event loop is closed' tracebacks).
_STRAY_CALLBACK_GRACE_S = 0.5


@contextlib.contextmanager
def _reading(mngr: ocp.CheckpointManager, step: int):
  """Turns a failure to read the checkpoint at `step` into one line naming it and the fix.

  While reading, stderr is held: after a success it is passed on; after a failure TensorStore
  callbacks of the aborted read print tracebacks from other threads for a moment, and what
  was held (those tracebacks) is dropped after a short grace period so that the failure stays
  one line."""
  held, real = _Held(), sys.stderr
  sys.stderr, failed = held, False
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # Orbax, TensorStore and json raise many types for damaged files.
    failed = True
    time.sleep(_STRAY_CALLBACK_GRACE_S)
    detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else 'no detail'
    folder = os.path.join(str(mngr.directory), str(step))
    raise UserError(f'The checkpoint at step {step} in {mngr.directory} cannot be read '
                    f'({type(e).__name__}: {detail}): it is corrupt or incomplete; delete {folder} '
                    'to fall back to the previous checkpoint, or use another step.') from None
  finally:
    sys.stderr = real
    if not failed:
      real.write(''.join(held.parts))


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  with _reading(mngr, step):
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  if not isinstance(meta, dict):
    raise UserError(f'The checkpoint at step {step} in {mngr.directory} has no robust_med header: '
                    'it was not written by robust_med.main; use a fresh --workdir.')
  return meta


def check_compatible(meta: dict, expected: dict, where: str) -> None:
  """One clear error when a checkpoint was written by another head, method or dataset."""
  for key, want in expected.items():
    if key not in meta and key != 'task':  # Written before robust_med recorded it.
      continue
    got = meta.get(key)
    if got != want:
      raise UserError(f'The checkpoint in {where} was written with {key}={got!r} but this run has '
                      f'{key}={want!r}: use a fresh --workdir (or the config that wrote it).')


def _shapes(tree: Any) -> dict[str, tuple]:
  """{'params/Conv_0/kernel': shape} for every array leaf (ShapeDtypeStruct, array, metadata)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(getattr(leaf, 'shape', ()))
          for path, leaf in leaves if leaf is not None and hasattr(leaf, 'shape')}


def saved_shapes(mngr: ocp.CheckpointManager, step: int) -> dict[str, tuple]:
  """{'params/Conv_0/kernel': shape} for every array saved in the state at `step`."""
  with _reading(mngr, step):
    return _shapes(dict(mngr.item_metadata(step)['state']))


def check_shapes(mngr: ocp.CheckpointManager, step: int, target: Any, fix: str) -> None:
  """UserError naming the first difference when the arrays saved at `step` do not have the
  structure and shapes of `target` (a dict that is a part of the saved state)."""
  saved = saved_shapes(mngr, step)
  want = _shapes(target)
  saved = {k: v for k, v in saved.items() if k.split('/')[0] in target}
  if saved == want:
    return
  where = f'{mngr.directory} (step {step})'
  for key in sorted(set(saved) | set(want)):
    if saved.get(key) != want.get(key):
      got = 'missing' if key not in saved else f'shape {saved[key]}'
      here = 'missing' if key not in want else f'shape {want[key]}'
      raise UserError(f'The checkpoint in {where} holds a different model: {key} is {got} there '
                      f'but {here} in this one (another model width, depth, head or data); {fix}')


def restore(mngr: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """Restores the state at `step` onto the shapes, dtypes and shardings of `target`."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  with _reading(mngr, step):
    return mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']


def restore_items(mngr: ocp.CheckpointManager, step: int, like: dict, *,
                  fix: str = 'evaluate it with the config it was trained with.') -> dict:
  """Some top-level entries alone (e.g. {'params': ...}) of the checkpoint at `step` of a
  `reader`, on the shapes and shardings of `like`; UserError naming the first difference when
  they differ (another model). The other entries (optimizer state, margins) are not read."""
  item = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  check_shapes(mngr, step, item, fix)
  with _reading(mngr, step):
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))['state']


def restore_params(mngr: ocp.CheckpointManager, step: int, like: Any, *,
                   fix: str = 'evaluate it with the config it was trained with.') -> Any:
  """The parameters alone of the checkpoint at `step` of a `reader`, on the shapes and shardings
  of `like` (e.g. `jax.eval_shape` of the model's init, or another state's params)."""
  return restore_items(mngr, step, {'params': like}, fix=fix)['params']


def read_arrays(workdir: str, step: int | None = None, items=None) -> dict:
  """A checkpoint's arrays as nested dicts of numpy arrays, readable on any machine and any
  device count (a plain Orbax restore of a checkpoint written on 8 devices fails elsewhere with
  "Topology mismatch"): the state of the run in `workdir` at `step` (default: the latest), or
  only its top-level `items` (e.g. ('params',); the others are not read).

    from robust_med import checkpointing
    arrays = checkpointing.read_arrays('runs/demo')            # params, opt_state, margins, ...
    kernel = arrays['params']['Conv_0']['kernel']               # numpy.ndarray
  """
  import numpy as np
  mngr = reader(workdir)
  try:
    step = pick_step(mngr, step)
    with _reading(mngr, step):
      saved = dict(mngr.item_metadata(step)['state'])
    if items is not None:
      missing = sorted(set(items) - set(saved))
      if missing:
        raise UserError(f'The checkpoint in {mngr.directory} (step {step}) has no {missing}: it '
                        f'holds {sorted(saved)}; ask for some of those.')
      saved = {k: saved[k] for k in items}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    arrays = restore_items(mngr, step, like, fix='pass the --workdir of a robust_med.main run.')
  finally:
    mngr.close()
  return jax.tree.map(np.asarray, arrays)
