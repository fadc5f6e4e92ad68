"""Command-line entry points: `robust_med.main` (train + evaluate) and `robust_med.evaluate`."""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from robust_med.errors import UserError


def fail(message: str) -> None:
  """Prints one line, `error: <problem and fix>`, and exits with status 2."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def guard(fn):
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    try:
      fn(argv)
    except UserError as e:
      fail(str(e))
  return wrapped


def run_main(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/prostate_amat.py or '
                                  'configs/prostate_amat.py:synthetic.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics.jsonl and reports.')
  flags.mark_flags_as_required(['config', 'workdir'])

  @guard
  def main(argv):
    if len(argv) > 1:
      raise UserError(f'Unexpected arguments {argv[1:]}: pass settings as '
                      '--config.<key>=<value>.')
    from robust_med import config_base, train
    config = flags.FLAGS.config
    config_base.validate(config)
    train.train_and_evaluate(config, flags.FLAGS.workdir)
    print(f'Done: outputs in {os.path.abspath(flags.FLAGS.workdir)}')

  app.run(main, argv=argv, flags_parser=parse_flags)


def parse_flags(argv):
  """absl's parser, but a bad flag or config key ends in one line instead of a usage dump."""
  try:
    return flags.FLAGS(argv)
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
  from robust_med import config_base
  with open(path) as f:
    saved = json.load(f)
  # Keys added to robust_med after the run was made take their defaults.
  config = config_base.base_config()
  flat = config_base.flat_keys(ml_collections.ConfigDict(saved))
  unknown = sorted(set(flat) - set(config_base.flat_keys(config)))
  if unknown:
    raise UserError(f'{path} has unknown config key(s) {", ".join(unknown)}: it was not written '
                    'by this version of robust_med; retrain or edit the file.')
  config.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v
                                     for k, v in flat.items()})
  return config


def run_evaluate(argv=None) -> None:
  flags.DEFINE_string('workdir', None, 'Workdir of a robust_med.main run.')
  flags.DEFINE_list('noise_levels', None, 'Override config.eval.noise_levels, e.g. 0,1,5,10.')
  flags.DEFINE_integer('steps', None, 'Override config.eval.steps (PGD iterations).')
  flags.DEFINE_enum('norm', None, ['l2', 'linf'], 'Override config.eval.norm.')
  flags.mark_flags_as_required(['workdir'])

  @guard
  def main(argv):
    del argv
    from robust_med import checkpointing, config_base, train
    f = flags.FLAGS
    config = load_workdir_config(f.workdir)
    if f.noise_levels is not None:
      config.eval.noise_levels = tuple(float(e) for e in f.noise_levels)
    if f.steps is not None:
      config.eval.steps = f.steps
    if f.norm is not None:
      config.eval.norm = f.norm
    config_base.validate(config)
    trainer = train.Trainer(config, f.workdir)
    mngr = checkpointing.manager(f.workdir, create=False)
    if mngr.latest_step() is None:
      raise UserError(f'No complete checkpoint in {checkpointing.checkpoint_dir(f.workdir)}: '
                      'train first with robust_med.main.')
    state = trainer.restore_or_init(mngr)
    report = trainer.evaluate(state.params)
    for row in report['results']:
      print(json.dumps(row))

  app.run(main, argv=argv, flags_parser=parse_flags)
