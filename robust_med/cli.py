"""Command-line entry points: `robust_med.main` (train + evaluate) and `robust_med.evaluate`."""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import warnings

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

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
  if len(argv) > 1:
    raise UserError(f'Unexpected arguments {argv[1:]}: pass settings as --config.<key>=<value>.')


def guard(fn):
  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
    warnings.formatwarning = _one_line_warning
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
    reject_positional(argv)
    from robust_med import config_base, train
    config = flags.FLAGS.config
    config_base.validate(config)
    from robust_med import compile_cache, sharding
    compile_cache.enable(config.compilation_cache_dir)
    sharding.configure_host_devices(config.mesh.host_devices, config.batch_size)
    train.train_and_evaluate(config, flags.FLAGS.workdir)
    print(f'Done: outputs in {os.path.abspath(flags.FLAGS.workdir)}')

  app.run(main, argv=argv, flags_parser=parse_flags)


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
  from robust_med import config_base
  with open(path) as f:
    saved = json.load(f)
  # Keys added to robust_med after the run was made take their defaults (the head's included).
  task = saved.get('task', 'segmentation') if isinstance(saved, dict) else 'segmentation'
  config = config_base.task_config(task)
  flat = config_base.flat_keys(ml_collections.ConfigDict(saved))
  unknown = sorted(set(flat) - set(config_base.flat_keys(config)))
  if unknown:
    raise UserError(f'{path} has unknown config key(s) {", ".join(unknown)}: it was not written '
                    'by this version of robust_med; retrain or edit the file.')
  config.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v
                                     for k, v in flat.items()})
  return config


def _with_saved_config(argv: list[str]) -> list[str]:
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
  from robust_med import saved_config
  return [argv[0], f'--config={saved_config.__file__}:{workdir}', *argv[1:]]


def run_evaluate(argv=None) -> None:
  config_flags.DEFINE_config_file('config', None, 'Config to evaluate with (default: the run\'s '
                                  'own config.json); override keys with --config.<key>=<value>, '
                                  'e.g. --config.data.root=PATH.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir of a robust_med.main run.')
  flags.DEFINE_string('split', '', 'Split of the data to evaluate on (default: '
                      'config.data.eval_split, i.e. val): e.g. test, or any list in splits.json.')
  flags.DEFINE_string('out', '', 'Folder for the report (default: <workdir>/eval/<split>).')
  flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
  flags.DEFINE_list('noise_levels', None, 'Shorthand for --config.eval.noise_levels, e.g. 0,1,5.')
  flags.DEFINE_integer('steps', None, 'Shorthand for --config.eval.steps (PGD iterations).')
  flags.DEFINE_enum('norm', None, ['l2', 'linf'], 'Shorthand for --config.eval.norm.')
  flags.mark_flags_as_required(['workdir'])

  @guard
  def main(argv):
    reject_positional(argv)
    from robust_med import config_base, evaluate
    f = flags.FLAGS
    config = f.config
    if f.noise_levels is not None:
      try:
        config.eval.noise_levels = tuple(float(e) for e in f.noise_levels)
      except ValueError:
        raise UserError(f'--noise_levels={",".join(f.noise_levels)} is not a list of numbers: '
                        'use e.g. --noise_levels=0,1,5.') from None
    if f.steps is not None:
      config.eval.steps = f.steps
    if f.norm is not None:
      config.eval.norm = f.norm
    config_base.validate(config)
    from robust_med import compile_cache, sharding
    compile_cache.enable(config.compilation_cache_dir)
    sharding.configure_host_devices(config.mesh.host_devices, config.batch_size)
    report = evaluate.evaluate_checkpoint(config, f.workdir, split=f.split, out=f.out,
                                          step=f.step)
    data = report['data']
    print(f'{report["split"]} split of {data["root"] or config.data.name}: '
          f'{report["num_samples"]} of {data["split_size"]} samples, checkpoint step '
          f'{report["checkpoint"]["step"]} of {report["checkpoint"]["workdir"]}')
    for name, rows in report['curves'].items():
      for row in rows:
        print(json.dumps({'attack': name, **{k: v for k, v in row.items() if k != 'worst_of'}}))
    out = f.out or os.path.join(f.workdir, 'eval', report['split'])
    print(f'Done: robustness.json, robustness.png, examples.png in {os.path.abspath(out)}')

  app.run(main, argv=argv, flags_parser=lambda a: parse_flags(_with_saved_config(a)))


def run_interpret(argv=None) -> None:
  from robust_med import saliency
  config_flags.DEFINE_config_file('config', None, 'Config of the data and interpret settings '
                                  '(default: the first run\'s own config.json); override keys '
                                  'with --config.<key>=<value>, e.g. '
                                  '--config.interpret.top_k="(5,10)".', lock_config=True)
  flags.DEFINE_list('workdirs', None, 'Workdirs of robust_med.main runs of one head on the same '
                    'data; the first is the reference of the paired tests.')
  flags.DEFINE_list('labels', None, 'Names of the models in the report (default: the workdirs\' '
                    'folder names).')
  flags.DEFINE_enum('method', None, list(saliency.METHODS), 'Saliency method (default: '
                    'config.interpret.method).')
  flags.DEFINE_string('split', '', 'Split to analyse (default: config.data.eval_split, i.e. val).')
  flags.DEFINE_string('out', '', 'Folder for interpret.json/md/png (default: <parent of the first '
                      'workdir>/interpret/<split>_<method>).')
  flags.DEFINE_float('eps', None, 'Budget of the attack the saliency is also measured under '
                     '(default: config.interpret.eps; 0 there = the middle level of '
                     'config.eval.noise_levels).')
  flags.mark_flags_as_required(['workdirs'])

  @guard
  def main(argv):
    reject_positional(argv)
    from robust_med import config_base, interpret
    f = flags.FLAGS
    workdirs = [w for w in f.workdirs if w]
    if not workdirs:
      raise UserError('--workdirs is empty: pass one or more run folders, e.g. '
                      '--workdirs=runs/busi/std,runs/busi/at.')
    labels = list(f.labels) if f.labels else [os.path.basename(os.path.normpath(w))
                                              for w in workdirs]
    if len(labels) != len(workdirs):
      raise UserError(f'--labels has {len(labels)} names for {len(workdirs)} workdirs: pass one '
                      'per workdir.')
    config = f.config
    if f.eps is not None and f.eps < 0:
      raise UserError(f'--eps={f.eps} is negative: noise budgets must be ≥ 0.')
    config_base.validate(config)
    from robust_med import compile_cache, sharding
    compile_cache.enable(config.compilation_cache_dir)
    sharding.configure_host_devices(config.mesh.host_devices, config.batch_size)
    for w in workdirs[1:]:  # Another head's config.json has keys this head does not know.
      path = os.path.join(w, 'config.json')
      if not os.path.isfile(path):
        raise UserError(f'{path} not found: pass the --workdirs of robust_med.main runs.')
      with open(path) as fh:
        task = json.load(fh).get('task', 'segmentation')
      if task != config.task:
        raise UserError(f'{workdirs[0]} is a {config.task!r} run but {w} is a {task!r} run: '
                        'compare checkpoints of one head.')
    configs = [config] + [load_workdir_config(w) for w in workdirs[1:]]
    report = interpret.compare(workdirs, configs, labels, method=f.method or '', split=f.split,
                               eps=f.eps, out=f.out, command=' '.join(
                                   ['python -m robust_med.interpret', *sys.argv[1:]]))
    print(interpret.markdown(report))
    print(f'Done: interpret.json, interpret.md, interpret.png in {report["out"]}')

  def parse(argv):
    argv = list(argv)
    if not any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
      first = next((a[len('--workdirs='):].split(',')[0] for a in argv[1:]
                    if a.startswith('--workdirs=')), '')
      if first:
        if not os.path.isfile(os.path.join(first, 'config.json')):
          fail(f'{os.path.join(first, "config.json")} not found: pass the --workdirs of '
               'robust_med.main runs.')
        from robust_med import saved_config
        argv = [argv[0], f'--config={saved_config.__file__}:{first}', *argv[1:]]
    return parse_flags(argv)

  app.run(main, argv=argv, flags_parser=parse)
