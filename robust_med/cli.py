"""Command-line plumbing shared by every entry point: flag parsing, one-line errors, a run's saved config.

Low floor: imports only `errors` at module level (`config_base`, `compile_cache` and `sharding`
inside functions); the entry points themselves (`main`, `evaluate`, `interpret`, `sweep`,
`data.records`) import it, never the other way round.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import warnings

from absl import flags, logging
import ml_collections

from robust_med.errors import UserError


def fail(message: str) -> None:
  """Prints one line, `error: <problem and fix>`, and exits with status 2 at once: reads of a
  damaged checkpoint may leave TensorStore callbacks behind that would print tracebacks while
  the interpreter shuts down (and are silenced here)."""
  sys.stdout.flush()
  sys.stderr.flush()
  # Silence every other writer first (a TensorStore or asyncio callback thread may be printing
  # a traceback right now), then write the line straight to the file descriptor.
  std_logging.disable(std_logging.CRITICAL)
  sys.stderr = open(os.devnull, 'w')
  os.write(2, f'error: {message}\n'.encode())
  os._exit(2)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
  """Data-quirk warnings (robust_med's UserWarnings) as `warning: ...`, without the source line
  that Python's default format adds."""
  if issubclass(category, UserWarning):
    return f'warning: {message}\n'
  return _default_format(message, category, filename, lineno, line)


_default_format = warnings.formatwarning


def reject_positional(argv) -> None:
  """A `UserError` for arguments that are not flags (settings go in --config.<key>=<value>)."""
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments {argv[1:]}: pass settings as --config.<key>=<value>.')


def guard(fn):
  """Wraps an absl `main(argv)`: quiet logging, one-line warnings, and a `UserError` ends in one
  `error:` line with exit status 2 (`fail`)."""
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    warnings.formatwarning = _one_line_warning
    try:
      fn(argv)
    except UserError as e:
      fail(str(e))
  return wrapped


def parse_flags(argv):
  """absl's parser, but a bad flag or config key ends in one line instead of a usage dump."""
  for arg in argv[1:]:
    if arg.startswith('--config='):
      path = arg[len('--config='):].split(':', 1)[0]
      if not os.path.isfile(path):
        fail(f'The config file {path} does not exist: pass a config file such as '
             'configs/prostate_amat.py (add :synthetic for the offline demo).')
  try:
    return flags.FLAGS(argv)
  except UserError as e:  # Raised by a config file's get_config.
    fail(str(e))
  except flags.Error as e:
    fail(f'{e}. Check the flag or config key against robust_med/config_base.py.')
  except Exception as e:  # config_flags raises plain KeyError/AttributeError for unknown keys.
    unknown = _unknown_override_keys(argv)
    if unknown:
      fail(f'Unknown config key(s) {", ".join(unknown)}: check the spelling; the known keys and '
           'their defaults are in robust_med/config_base.py.')
    fail(f'Bad --config or override ({type(e).__name__}: {e}): check the config file path and '
         'the --config.<key>=<value> overrides.')


def _unknown_override_keys(argv) -> list[str]:
  from robust_med import config_base
  known = config_base.flat_keys(config_base.base_config())
  keys = [a[len('--config.'):].split('=')[0] for a in argv if a.startswith('--config.')]
  return [k for k in keys if k not in known]


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UserError(f'{path} not found: pass the --workdir of a robust_med.main run.')
  with open(path) as f:
    saved = json.load(f)
  return config_from_dict(saved, path)


def config_from_dict(saved: dict, where: str) -> ml_collections.ConfigDict:
  """The config a saved JSON dict describes (a run's config.json, a sweep plan's run): its head's
  full config with the saved values (lists read as tuples); keys added to robust_med after it was
  saved take their defaults. UserError for keys this version does not know."""
  from robust_med import config_base
  task = saved.get('task', 'segmentation') if isinstance(saved, dict) else 'segmentation'
  config = config_base.task_config(task)
  flat = config_base.flat_keys(ml_collections.ConfigDict(saved))
  unknown = sorted(set(flat) - set(config_base.flat_keys(config)))
  if unknown:
    raise UserError(f'{where} has unknown config key(s) {", ".join(unknown)}: it was not written '
                    'by this version of robust_med; retrain or edit the file.')
  config.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v
                                     for k, v in flat.items()})
  return config


SAVED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'saved_config.py')


def with_saved_config(argv: list[str]) -> list[str]:
  """Adds `--config=<saved_config.py>:<workdir>` unless a --config is given, so that
  `--config.<key>=<value>` overrides apply to the run's own config.json."""
  if any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
    return argv
  workdir = None
  for i, a in enumerate(argv[1:], 1):
    if a.startswith('--workdir='):
      workdir = a[len('--workdir='):]
    elif a == '--workdir' and i + 1 < len(argv):
      workdir = argv[i + 1]
  if not workdir:
    return argv
  return [argv[0], f'--config={SAVED_CONFIG}:{workdir}', *argv[1:]]


def prepare(config) -> None:
  """What every command does with its config before JAX's first operation: checks it
  (`config_base.validate`), turns on the persistent compilation cache and sets the number of
  host (CPU) devices."""
  from robust_med import compile_cache, config_base, sharding
  config_base.validate(config)
  compile_cache.enable(config.compilation_cache_dir)
  sharding.configure_host_devices(config.mesh.host_devices, config.batch_size)


def define_distributed_flags() -> None:
  """`--distributed`, `--coordinator_address`, `--num_processes`, `--process_id`: one run on
  several processes (hosts, or one process per GPU), for `main` and `sweep`."""
  flags.DEFINE_bool('distributed', False, 'Start a multi-process run with '
                    'jax.distributed.initialize(): arguments not given by the three flags below '
                    '(or JAX_COORDINATOR_ADDRESS) are detected from SLURM, Open MPI or a TPU pod. '
                    'Implied by any of the three flags.')
  flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0\'s coordinator, '
                      'reachable from every process (multi-process runs).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
  flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 … num_processes - 1.')


def start_distributed() -> None:
  """Runs after flag parsing and before anything touches a device (`app.call_after_init`)."""
  f = flags.FLAGS
  given = (f.coordinator_address, f.num_processes, f.process_id)
  if not f.distributed and all(v is None for v in given):
    return
  from robust_med import sharding
  logging.set_verbosity(logging.WARNING)  # Not JAX's INFO lines about the coordinator.
  try:
    sharding.initialize_distributed(*given)
  except UserError as e:
    fail(str(e))
