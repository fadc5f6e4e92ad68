"""Entry point `python -m robust_med.sweep`: a method comparison trained and evaluated alike.

A method comparison in one command: STD, SAT at several ε, AMAT (and any other method) trained
with otherwise identical settings and evaluated with the same attacks.

  python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu --sat_eps=1,5,10,15 \
      --workdir=runs/hippocampus_sweep

Each model trains in `DIR/<run>/` exactly as `robust_med.main` would (same config, method changed),
so a killed sweep resumes: finished runs (with a `robustness.json`) are skipped and an interrupted
one continues from its last checkpoint. AMAT's thresholds ξ come from the sweep's own STD model
(`--xi_from_std`, as the AMAT paper does), measured on the clean *training* losses; offline FGSM
augmentation (`method.fgsm_source='offline'`) takes its copies from that STD model too.

Outputs: `DIR/summary.csv` (one row per model, seed and curve), `DIR/summary.md` (laid out like
the AMAT paper's Table 2: clean metric, metric at each noise level, mean over the grid, training
seconds per epoch, and the gradient-masking checks; then the paired comparisons against STD and
the best SAT with one verdict per line, `robust_med.verdicts`), `DIR/comparisons.csv`,
`DIR/curves.png` (metric vs noise, one line per model, 95 % bands over seeds) and
`DIR/training.png` (learning curves when config.eval.every_epochs > 0; AMAT's mean margins).

Seeds: `--seeds=3` trains each run with three training seeds (`with_seeds`); `--transfer_from=std`
adds the transfer attack crafted on the sweep's STD model to every evaluation (`with_transfer`).
Rerunning with other `config.eval` settings re-evaluates the trained models.

Methods from config files: `--method_configs=configs/busi_std.py:cpu,configs/busi_at.py:cpu,...`
gives one run per file with that file's whole method section (name, budgets, weights, augment)
and everything else from `--config`, each named after the file (`busi_at_aug.py` → `at_aug`):

  python -m robust_med.sweep --config=configs/busi_rtda.py:cpu --workdir=runs/busi \
      --method_configs=configs/busi_{std,at,gradreg,aug,at_aug,at_gradreg,rtda,amat}.py:cpu
  (the flag repeated by the shell's braces, or one comma-separated list)

AMAT variants: `--xi_from=std,warmup` gives one AMAT run per source of ξ, and each
`--amat_variant=refine=boundary,max_margin=12` one run per variant (and source), named after
what it changes (e.g. `amat_refine-boundary_max_margin-12_xi-std`).

`--summarize` (with only `--workdir`) trains nothing: it rewrites the summary from the runs on
disk and names the missing ones.

As separate jobs (docs/cluster.md): `--plan_only` writes the plan (`sweep.json`: each run's
config and the runs it waits for) and prints its stages; `--task_index=I` (or `--run=NAME`; in a
SLURM array `$SLURM_ARRAY_TASK_ID` by default) trains and evaluates that run alone, resumably,
under a lock per run folder; `--print_slurm` and `--print_local=GPUS` print the scripts that
launch every run, then the summary.

Python API: `plan_runs(config, ...)` lists the runs, `run_sweep(config, workdir, ...)` trains and
evaluates what is missing and writes the summary, `run_task(workdir, index=I)` one run of the
plan, `summarize(workdir)` rewrites the summary from the runs on disk.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shlex
import sys
from typing import Callable, Sequence

import ml_collections
import numpy as np

from robust_med import cli
from robust_med import launch
from robust_med import margins as margins_lib
from robust_med import methods as methods_lib
from robust_med import report as report_page
from robust_med import reports
from robust_med import tensorboard_log
from robust_med import verdicts
from robust_med.errors import ConfigError, UserError

PLAN_FILE = 'sweep.json'
METHODS_WITH_EPS = ('sat', *methods_lib.AUGMENTATION_ATTACKS)


@dataclasses.dataclass
class Run:
  name: str                            # folder under the sweep's workdir
  label: str                           # how tables and plots call it, e.g. 'SAT ε=5'
  config: ml_collections.ConfigDict
  seed: int | None = None              # the training seed, when the sweep has several


def with_transfer(runs: list[Run], workdir: str, source: str) -> list[Run]:
  """Every run evaluated also under the transfer attack crafted on the sweep's run named
  `source` (e.g. 'std'; itself included: through itself the transfer curve is its white-box
  PGD curve), which trains before the others."""
  names = [r.name for r in runs]
  if source not in names:
    raise ConfigError(f'--transfer_from={source}: the sweep has no run named {source!r}; use one '
                      f'of {names}.')
  runs = sorted(runs, key=lambda r: r.name != source)  # Stable: the source trains first.
  for r in runs:
    r.config = copy.deepcopy(r.config)
    r.config.eval.transfer_from = os.path.abspath(os.path.join(workdir, source))
  return runs


def with_seeds(runs: list[Run], workdir: str, seeds: int) -> list[Run]:
  """Each run trained with `seeds` training seeds (config.seed, config.seed + 1, ...), in
  folders `<name>` (the first seed: a one-seed sweep grows by rerunning it with more seeds) and
  `<name>_seed<s>`, with the same label; a run that reads another run's folder (AMAT's ξ,
  offline FGSM copies or the transfer attack from the sweep's STD) reads that run's folder of the
  same seed. One seed keeps the runs as they are."""
  if seeds < 1:
    raise ConfigError(f'--seeds={seeds}: train each method with at least one seed (e.g. '
                      '--seeds=3).')
  if seeds == 1:
    return runs
  folders = {os.path.abspath(os.path.join(workdir, r.name)): r.name for r in runs}
  seeded = []
  for k in range(seeds):
    for r in runs:
      c = copy.deepcopy(r.config)
      c.seed = r.config.seed + k
      suffix = f'_seed{c.seed}' if k else ''  # The first seed keeps the one-seed folder.
      for section in ('method', 'eval'):
        for key, value in r.config[section].items():
          if isinstance(value, str) and value in folders:  # another run's folder: same seed's
            c[section][key] = os.path.join(os.path.abspath(workdir), folders[value] + suffix)
      seeded.append(Run(r.name + suffix, r.label, c, seed=c.seed))
  return seeded


def _fmt(x: float) -> str:
  return f'{x:g}'


XI_SOURCES = ('std', 'warmup')


def parse_variant(text: str, method_config) -> dict:
  """'refine=boundary,max_margin=12' → {'refine': 'boundary', 'max_margin': 12.0}: method keys,
  each value read as the type of the key's default (ConfigError for unknown keys or values)."""
  variant = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in method_config or key == 'name':
      raise ConfigError(f'--amat_variant={text!r}: {item!r} is not <method key>=<value> with a key '
                        f'of config.method (e.g. refine=boundary,max_margin=12).')
    default = method_config[key]
    try:
      if isinstance(default, bool):
        if value.lower() not in ('true', 'false'):
          raise ValueError(value)
        variant[key] = value.lower() == 'true'
      else:
        variant[key] = type(default)(value)
    except ValueError:
      raise ConfigError(f'--amat_variant={text!r}: {key}={value!r} is not a '
                        f'{type(default).__name__}.') from None
  return variant


def _variant_suffix(variant: dict) -> tuple[str, str]:
  """(folder suffix, label suffix) of an AMAT variant."""
  folder = ''.join(f'_{k}-{_fmt(v) if isinstance(v, float) else v}' for k, v in variant.items())
  label = ', '.join(f'{k}={_fmt(v) if isinstance(v, float) else v}' for k, v in variant.items())
  return folder, label


def plan_runs(config: ml_collections.ConfigDict, workdir: str, *, sat_eps: Sequence[float] = (),
              methods: Sequence[str] = ('std', 'sat', 'amat'),
              xi_from_std: bool = True, xi_sources: Sequence[str] | None = None,
              amat_variants: Sequence[dict] = ({},)) -> list[Run]:
  """The runs of a sweep: `config` with only the method section changed per run, STD first.

  SAT gets one run per ε in `sat_eps`; AMAT keeps the config's Δε; the FGSM augmentations keep
  the config's `method.eps`. With `xi_from_std` (and STD in the sweep) AMAT measures ξ on the
  sweep's STD model instead of warming up on its own. `xi_sources` (a subset of 'std',
  'warmup') gives one AMAT run per source instead, and `amat_variants` (dicts of method keys, e.g.
  {'refine': 'boundary'}) one per variant and source; with more than one, the folder and label
  name each run's changes.
  """
  unknown = [m for m in methods if m not in methods_lib.METHODS]
  if unknown:
    raise ConfigError(f'Unknown method(s) {unknown} in --methods: use names from '
                      f'{methods_lib.METHODS}.')
  if 'sat' in methods and not sat_eps:
    raise ConfigError('The sweep has SAT but no --sat_eps: list the fixed budgets, e.g. '
                      '--sat_eps=1,5,10,15.')
  if any(e <= 0 for e in sat_eps):
    raise ConfigError(f'--sat_eps={",".join(map(_fmt, sat_eps))} has a budget ≤ 0: SAT budgets '
                      'must be > 0 (STD is the ε = 0 model).')
  order = sorted(dict.fromkeys(methods), key=lambda m: m != 'std')  # STD first: AMAT needs it.
  runs = []
  for method in order:
    if method == 'sat':
      for eps in sat_eps:
        runs.append(Run(f'sat_eps{_fmt(eps)}', f'SAT ε={_fmt(eps)}',
                        _with_method(config, 'sat', eps=float(eps))))
      continue
    c = _with_method(config, method)
    if method == 'std':
      c.method.eps = 0.0
      runs.append(Run('std', 'STD', c))
    elif method == 'amat':
      runs += _amat_runs(c, workdir, methods, xi_from_std, xi_sources, amat_variants)
    elif method in METHODS_WITH_EPS:
      if c.method.get('fgsm_source', 'online') == 'offline' and 'std' in methods:
        # Seed 001's copies come from the sweep's trained STD model.
        c.method.fgsm_checkpoint = os.path.abspath(os.path.join(workdir, 'std'))
      runs.append(Run(f'{method}_eps{_fmt(c.method.eps)}', f'{method} ε={_fmt(c.method.eps)}', c))
    else:
      runs.append(Run(method, method, c))
  return runs


def _amat_runs(config, workdir: str, methods, xi_from_std: bool, xi_sources, variants) -> list[Run]:
  if xi_sources is None:
    xi_sources = ['std' if xi_from_std and 'std' in methods else '']  # '': the config's.
  bad = [s for s in xi_sources if s not in XI_SOURCES + ('',)]
  if bad:
    raise ConfigError(f'--xi_from={",".join(xi_sources)}: use sources from {XI_SOURCES}.')
  if 'std' in xi_sources and 'std' not in methods:
    raise ConfigError("--xi_from=std needs STD in the sweep: add std to --methods.")
  variants = list(variants) or [{}]
  several = len(variants) > 1 or len(xi_sources) > 1
  runs = []
  for variant in variants:
    for source in xi_sources:
      c = _with_method(config, 'amat', **variant)
      if source == 'std':
        c.method.xi_source = 'checkpoint'
        c.method.xi_checkpoint = os.path.abspath(os.path.join(workdir, 'std'))
      elif source == 'warmup':
        c.method.xi_source = 'warmup'
      name, label = 'amat', f'AMAT Δε={_fmt(c.method.delta_eps)}'
      if several:
        folder, words = _variant_suffix(variant)
        name += folder + (f'_xi-{source}' if len(xi_sources) > 1 else '')
        words = [w for w in (words, {'std': 'ξ from STD', 'warmup': 'ξ from warm-up'}.get(source)
                             if len(xi_sources) > 1 else '') if w]
        label += f' ({"; ".join(words)})' if words else ''
      runs.append(Run(name, label, c))
  return runs


def load_config_file(entry: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file in `entry` ('path.py' or 'path.py:arg')."""
  import importlib.util
  path, _, arg = entry.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'--method_configs: no config file {path!r}: list files such as '
                      'configs/busi_at.py:cpu.')
  spec = importlib.util.spec_from_file_location(f'_method_config_{len(entry)}', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config(arg)
  except ConfigError:  # e.g. an unknown variant after the colon: already one line.
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'--method_configs: {path} does not load as a config file '
                      f'({type(e).__name__}: {e}): it must define get_config(arg).') from None


def method_config_runs(config, workdir: str, entries: Sequence[str],
                       xi_from_std: bool = True) -> list[Run]:
  """One run per config file of `entries` with that file's method section and the rest of
  `config`; STD runs first, and an AMAT run takes ξ from the sweep's run named 'std' (when there
  is one and `xi_from_std`)."""
  runs = []
  for entry in entries:
    other = load_config_file(entry)
    stem = os.path.splitext(os.path.basename(entry.partition(':')[0]))[0]
    name = stem.split('_', 1)[1] if '_' in stem else stem
    if other.task != config.task:
      raise ConfigError(f'--method_configs: {entry} is a {other.task!r} config but --config is '
                        f'for the {config.task!r} head: compare methods of one head.')
    c = copy.deepcopy(config)
    for k, v in other.method.items():
      c.method[k] = v
    runs.append(Run(name, name.upper().replace('_', '+'), c))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    raise ConfigError(f'--method_configs names runs {names}: each file must give another name.')
  runs.sort(key=lambda r: r.name != 'std')  # Stable: the others keep the order given.
  if xi_from_std and 'std' in names:
    for r in runs:
      if r.config.method.name == 'amat':
        r.config.method.xi_source = 'checkpoint'
        r.config.method.xi_checkpoint = os.path.abspath(os.path.join(workdir, 'std'))
  return runs


def _with_method(config, name: str, **changes) -> ml_collections.ConfigDict:
  c = copy.deepcopy(config)
  c.method.name = name
  for k, v in changes.items():
    c.method[k] = v
  return c


def _shared_settings(config) -> dict:
  """Everything but the method: what every run of a sweep must share."""
  d = json.loads(config.to_json_best_effort())
  d.pop('method')
  return d


def run_sweep(config: ml_collections.ConfigDict, workdir: str, *, sat_eps: Sequence[float] = (),
              methods: Sequence[str] = ('std', 'sat', 'amat'), xi_from_std: bool = True,
              xi_sources: Sequence[str] | None = None, amat_variants: Sequence[dict] = ({},),
              method_configs: Sequence[str] = (), seeds: int = 1, transfer_from: str = '',
              plan_only: bool = False, log: Callable[[str], None] = print) -> list[dict]:
  """Trains and evaluates every run of the sweep that has no report yet, then writes the
  summary. Returns the summary rows (see `summary_rows`); with `plan_only` it only writes the
  plan (`sweep.json`) and returns []. With `method_configs` the runs are
  those files' methods (`method_config_runs`) instead of `methods`; with `seeds` > 1 each is
  trained with that many seeds (`with_seeds`), seed by seed (every method's first seed, then
  every method's second, ...), so a stopped sweep already compares every method."""
  from robust_med import config_base
  if method_configs:
    runs = method_config_runs(config, workdir, method_configs, xi_from_std)
  else:
    runs = plan_runs(config, workdir, sat_eps=sat_eps, methods=methods, xi_from_std=xi_from_std,
                     xi_sources=xi_sources, amat_variants=amat_variants)
  if transfer_from:
    runs = with_transfer(runs, workdir, transfer_from)
  runs = with_seeds(runs, workdir, seeds)
  for run in runs:
    config_base.validate(run.config)
  from robust_med import compile_cache
  compile_cache.enable(config.compilation_cache_dir)
  os.makedirs(workdir, exist_ok=True)
  _check_plan(workdir, config, runs)
  if plan_only:
    return []
  for i, run in enumerate(runs):
    what = f'[{i + 1}/{len(runs)}] {run.label}' + (f' (seed {run.seed})' if run.seed is not None
                                                  else '')
    _run_one(run.config, os.path.join(workdir, run.name), what, log)
  return summarize_finished(workdir, log)  # names a run left to another process as missing


def _run_one(config, run_dir: str, what: str, log: Callable[[str], None],
             wait_for_lock: bool = False) -> bool:
  """Trains and evaluates one run of a sweep unless it is finished (a report made with
  `config.eval`) or another process holds its lock (left to it, or with `wait_for_lock` waited
  for, then looked at again); True when this call ran it. UserError when the run folder was
  started with other training settings."""
  from robust_med import train
  busy = lambda: log(f'{what}: in progress in another process (its lock '  # noqa: E731
                     f'{run_dir}/.lock.* is held): ' + ('waiting for it to end' if wait_for_lock
                                                        else 'left to it'))
  with launch.run_lock(run_dir, wait=wait_for_lock, on_busy=busy) as mine:
    if not mine:
      return False
    _check_started_run(config, run_dir)
    if os.path.exists(os.path.join(run_dir, 'robustness.json')):
      if evaluated_with(run_dir, config):
        log(f'{what}: done, skipped ({run_dir})')
        return False
      log(f'{what}: evaluated with other config.eval settings: re-evaluating the trained model '
          f'in {run_dir}')
    else:
      log(f'{what}: training and evaluating in {run_dir}')
    train.train_and_evaluate(config, run_dir)
    return True


def _training_settings(config: dict) -> dict:
  """The flattened settings of a config (as JSON) that change a trained model."""
  flat = {}

  def walk(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}.')
      elif not prefix and k in _NOT_TRAINING:
        continue
      else:
        flat[prefix + k] = v
  walk({k: v for k, v in config.items() if k not in _NOT_TRAINING})
  return flat


def _differences(old: dict, new: dict) -> list[str]:
  """The training settings in which two configs (as JSON, whole or in part) differ, each read
  with today's defaults for the keys it lacks (a config saved before robust_med had a key was
  made with its default)."""
  a, b = _training_settings(_with_defaults(old)), _training_settings(_with_defaults(new))
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                and not _same_folder_moved(a.get(k), b.get(k)))


def _same_folder_moved(a, b) -> bool:
  """Two absolute paths to folders of the same name (another run of a sweep that was moved or
  copied elsewhere, e.g. AMAT's ξ checkpoint): not a difference in training settings."""
  return (isinstance(a, str) and isinstance(b, str) and os.path.isabs(a) and os.path.isabs(b)
          and os.path.basename(a.rstrip('/')) == os.path.basename(b.rstrip('/')))


def _with_defaults(config: dict) -> dict:
  try:
    return json.loads(cli.config_from_dict(config, 'the plan').to_json_best_effort())
  except (UserError, TypeError, ValueError, KeyError):  # keys robust_med no longer has
    return config


def _check_started_run(config, run_dir: str) -> None:
  path = os.path.join(run_dir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    started = json.load(f)
  changed = _differences(started, json.loads(config.to_json_best_effort()))
  if changed:
    raise UserError(f'{run_dir} was started with other settings than the sweep plan gives it '
                    f'(differs in {", ".join(changed[:5])}): the plan changed after the run '
                    'started; restore the sweep\'s settings, or move the run folder away to '
                    'retrain it.')


def evaluated_with(run_dir: str, config) -> bool:
  """Whether the run's robustness.json was made with `config.eval` (as the report records it;
  for reports that do not, by the attacks and noise levels it holds: the run's config.json is no
  witness, a re-evaluation rewrites it before it finishes)."""
  with open(os.path.join(run_dir, 'robustness.json')) as f:
    report = json.load(f)
  if 'eval_settings' in report:
    return same_eval_settings(report['eval_settings'], config)
  from robust_med import evaluate
  names = [a.describe()['name'] for a in evaluate.evaluation_attacks(config.eval)]
  if config.eval.get('transfer_from', ''):
    names.append(f'transfer-{names[0]}')
  levels = sorted(set([0.0, *map(float, config.eval.noise_levels)]))
  return ([a['name'] for a in report.get('attacks') or [report['attack']]] == names and
          [r['eps'] for r in report['results']] == levels)


def same_eval_settings(stored: dict, config) -> bool:
  """Whether a report's `eval_settings` are `config.eval`'s. A setting the report lacks counts as
  the same when `config` has its default value: a newer robust_med added it, and its default
  leaves the evaluation as it was."""
  from robust_med import config_base
  current = json.loads(config.eval.to_json_best_effort())
  defaults = json.loads(config_base.task_config(config.task).eval.to_json_best_effort())
  return (set(stored) <= set(current) and all(stored[k] == current[k] for k in stored) and
          all(k in defaults and current[k] == defaults[k] for k in set(current) - set(stored)))


# Settings that do not change a trained model: a sweep resumed with other values of these (or
# with a newer robust_med that added such a setting) keeps its runs. Other `eval` settings
# re-evaluate the finished runs (`evaluated_with`).
_NOT_TRAINING = ('eval', 'log', 'log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
                 'progress_bar', 'compilation_cache_dir')


def dependencies(runs: Sequence[Run], workdir: str) -> dict[str, list[str]]:
  """For each run, the runs of the sweep whose folders its config reads (any setting whose value
  is another run's folder: AMAT's ξ checkpoint, offline FGSM copies, the transfer attack's
  source): it starts when they have finished."""
  from robust_med import config_base
  folders = {os.path.abspath(os.path.join(workdir, r.name)): r.name for r in runs}
  after = {}  # (The sweep writes every such setting as an absolute path.)
  for r in runs:
    values = config_base.flat_keys(r.config).values()
    reads = [folders[v] for v in values if isinstance(v, str) and os.path.isabs(v)
             and v in folders]
    after[r.name] = [a for a in dict.fromkeys(reads) if a != r.name]
  return after


def _check_plan(workdir: str, config, runs: list[Run]) -> None:
  """Records the sweep's plan (each run's name, label, seed, method, whole config and the runs
  it waits for); refuses to mix runs trained with other settings: other shared settings, or
  another config for a run whose folder exists (other evaluation or logging settings are
  allowed: the finished runs are re-evaluated)."""
  path = os.path.join(workdir, PLAN_FILE)
  shared = _shared_settings(config)
  after = dependencies(runs, workdir)
  plan = {'shared': shared, 'runs': [{'name': r.name, 'label': r.label,
                                      'method': r.config.method.to_dict(),
                                      **({'seed': r.seed} if r.seed is not None else {}),
                                      'after': after[r.name],
                                      'config': json.loads(r.config.to_json_best_effort())}
                                     for r in runs]}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = _differences(old['shared'], shared)
    if changed:
      raise UserError(f'{workdir} holds a sweep made with other settings (differs in '
                      f'{", ".join(changed[:5])}): use a new --workdir, or the same config and '
                      'overrides to resume it.')
    new = {r['name']: r for r in plan['runs']}
    for r in old['runs']:
      now = new.get(r['name'])
      if now is None or not _started(os.path.join(workdir, r['name'])):
        continue
      changed = _differences(r.get('config', {'method': r['method']}),
                             now['config'] if 'config' in r else {'method': now['method']})
      if changed:
        raise UserError(f'Run {r["name"]} of the sweep in {workdir} has started with other '
                        f'settings than today\'s plan gives it (differs in '
                        f'{", ".join(changed[:5])}): use a new --workdir, or the same config '
                        'and overrides to resume it.')
    known = [new.pop(r['name'], r) for r in old['runs']]  # Old order; today's entries.
    plan['runs'] = known + list(new.values())
  launch.stages(plan['runs'])  # No run waits for itself.
  reports.write_json(path, plan)


def _started(run_dir: str) -> bool:
  """Whether a run has begun training (its config.json or a checkpoint folder is there)."""
  return (os.path.exists(os.path.join(run_dir, 'config.json')) or
          os.path.isdir(os.path.join(run_dir, 'checkpoints')))


def read_plan(workdir: str) -> dict:
  """The plan in `workdir/sweep.json` (UserError when there is none)."""
  path = os.path.join(workdir, PLAN_FILE)
  if not os.path.isfile(path):
    raise UserError(f'{workdir} holds no sweep (no {PLAN_FILE}): write its plan with python -m '
                    'robust_med.sweep --config=... --workdir=... --plan_only.')
  try:
    with open(path) as f:
      plan = json.load(f)
    if not isinstance(plan, dict) or not all(isinstance(r, dict) and 'name' in r
                                             for r in plan['runs']):
      raise ValueError('no list of named runs')
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f'{path} is not a sweep plan ({type(e).__name__}: {e}): write it again with '
                    'the sweep\'s command and --plan_only.') from None
  return plan


def plan_task(workdir: str, *, name: str | None = None,
              index: int | None = None) -> tuple[int, dict]:
  """(index, plan entry) of a run of the plan in `workdir`, by `name` or by `index`; UserError
  for a run the plan does not have, or a plan that does not record the runs' configs."""
  runs = read_plan(workdir)['runs']
  if name is not None:
    found = [r for r in runs if r['name'] == name]
    if not found:
      raise UserError(f'--run={name}: the sweep in {workdir} has no run of that name; use one '
                      f'of {[r["name"] for r in runs]}.')
    index = runs.index(found[0])
  elif index is None or not 0 <= index < len(runs):
    raise UserError(f'--task_index={index}: the sweep in {workdir} has {len(runs)} runs, indices '
                    f'0 … {len(runs) - 1}; check the job array\'s indices (--print_slurm lists '
                    'each stage\'s).')
  entry = runs[index]
  if 'config' not in entry:
    raise UserError(f'{os.path.join(workdir, PLAN_FILE)} does not record each run\'s config (a '
                    'sweep started before robust_med did): rewrite it with the sweep\'s command '
                    'and --plan_only.')
  return index, entry


def run_task(workdir: str, *, name: str | None = None, index: int | None = None,
             wait: float = 0.0, log: Callable[[str], None] = print, poll: float = 10.0) -> bool:
  """Trains and evaluates one run of the plan in `workdir` (by `name` or by its `index` in the
  plan), resumably, as one task of a job array; True when this call ran it (False: finished, or
  in progress in another process). A run whose inputs (`after`) have not finished waits for
  them up to `wait` seconds, then fails with a UserError that names them."""
  index, entry = plan_task(workdir, name=name, index=index)
  what = f'[task {index}] {entry["label"]}' + (f' (seed {entry["seed"]})' if 'seed' in entry
                                                else '')
  waiting = _unfinished(workdir, entry)
  if waiting and wait > 0:
    log(f'{what}: waiting up to {wait:g} s for {", ".join(waiting)} to finish')
    import time
    deadline = time.monotonic() + wait
    while waiting and time.monotonic() < deadline:
      time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
      waiting = _unfinished(workdir, entry)
  if waiting:
    raise UserError(f'Run {entry["name"]} reads run(s) {", ".join(waiting)} of the sweep, which '
                    f'have not finished{f" after {wait:g} s" if wait > 0 else ""}: run them first '
                    '(their --task_index comes before it), or give --wait=SECONDS.')
  config = cli.config_from_dict(entry['config'], f'{os.path.join(workdir, PLAN_FILE)} ({what})')
  from robust_med import compile_cache, config_base
  config_base.validate(config)
  compile_cache.enable(config.compilation_cache_dir)
  # A task waits for a process already running its run: its exit then means the run is done
  # (a SLURM dependency on it is met only then).
  return _run_one(config, os.path.join(workdir, entry['name']), what, log, wait_for_lock=True)


def _unfinished(workdir: str, entry: dict) -> list[str]:
  return [a for a in entry.get('after', [])
          if not os.path.exists(os.path.join(workdir, a, 'robustness.json'))]


def _seconds_per_epoch(run_dir: str) -> float:
  seconds = [r['seconds'] for r in margins_lib.read_metrics(run_dir) if r['type'] == 'epoch']
  return float(np.mean(seconds)) if seconds else float('nan')


def summary_rows(workdir: str) -> list[dict]:
  """One row per finished model of the sweep in `workdir` and curve (each attack, worst case)."""
  with open(os.path.join(workdir, PLAN_FILE)) as f:
    plan = json.load(f)
  rows = rows_for([(r['label'], os.path.join(workdir, r['name'])) for r in plan['runs']])
  seeds = {r['name']: r.get('seed') for r in plan['runs']}
  for row in rows:
    row['seed'] = seeds.get(row['run'])
  return rows


def rows_for(runs: Sequence[tuple[str, str]], metric: str | None = None) -> list[dict]:
  """Summary rows of `(label, run_dir)` pairs that have a `robustness.json` (others are left
  out), for `metric` (default: the task's primary one); refuses runs evaluated with different
  attacks, noise levels or samples."""
  rows, reference = [], None
  for label, run_dir in runs:
    path = os.path.join(run_dir, 'robustness.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      report = json.load(f)
    attacks_ = [{k: v for k, v in a.items() if k != 'source'}  # a transfer's source: per seed
                for a in report.get('attacks', [report['attack']])]
    setting = (attacks_, [r['eps'] for r in report['results']], report['num_samples'])
    if reference is None:
      reference = setting
    elif setting != reference:
      raise UserError(f'{run_dir} was evaluated with other attacks, noise levels or samples than '
                      f'{runs[0][1]}: re-evaluate with python -m robust_med.evaluate '
                      f'--workdir={run_dir}.')
    metric = metric or report['metric']
    checks = report.get('checks', [])
    failed = [c['name'] for c in checks if not c['passed']]
    curves = report.get('curves') or {report['attack']['name']: report['results']}
    for curve, results in curves.items():
      values = [r[metric] for r in results]
      rows.append({
          'model': label, 'run': os.path.basename(os.path.normpath(run_dir)),
          'method': report.get('method', ''), 'curve': curve, 'norm': report['attack']['norm'],
          'metric': metric, 'clean': values[0], 'by_eps': {r['eps']: r[metric] for r in results},
          'mean': float(np.mean(values)), 'seconds_per_epoch': _seconds_per_epoch(run_dir),
          'checks_passed': f'{len(checks) - len(failed)}/{len(checks)}' if checks else 'not run',
          'checks_failed': failed, 'margins': margins_lib.final_stats(run_dir),
          'protocol': report.get('protocol', 'unrecorded'), 'seed': None, 'report': report})
  return rows


def summarize(workdir: str) -> list[dict]:
  """Writes summary.csv, summary.md, curves.png and training.png from the finished runs; returns
  the rows. Each file is written atomically, and one process at a time writes them."""
  with launch.file_lock(os.path.join(workdir, '.summary.lock'), blocking=True):
    return _summarize(workdir)


def _summarize(workdir: str) -> list[dict]:
  rows = summary_rows(workdir)
  if not rows:
    return rows
  write_csv(rows, os.path.join(workdir, 'summary.csv'))
  result = verdicts.comparisons(rows)
  if result:
    verdicts.write_csv(result, os.path.join(workdir, 'comparisons.csv'))
  reports.write_text(os.path.join(workdir, 'summary.md'), markdown(rows, result))
  plot(rows, os.path.join(workdir, 'curves.png'))
  with open(os.path.join(workdir, PLAN_FILE)) as f:
    plan = json.load(f)
  runs = [(r['label'], os.path.join(workdir, r['name'])) for r in plan['runs']]
  plot_training(runs, rows[0]['metric'], os.path.join(workdir, 'training.png'))
  write_hparams(workdir, rows, plan)
  report_page.write_pages(workdir)  # the sweep's report.html and each run's
  return rows


def write_hparams(workdir: str, rows: list[dict], plan: dict) -> None:
  """Each finished run's HParams session (`<run>/tb/hparams/`): the model's label, its seed and
  every method setting that differs between the sweep's runs → its clean and worst-case metric
  (mean over the grid and at each level), so `tensorboard --logdir=<workdir>` lists the sweep's
  runs in one table (`plan`: the sweep's sweep.json)."""
  if not (plan['shared'].get('log') or {}).get('tensorboard', True):
    return
  methods_ = [r['method'] for r in plan['runs']]
  swept = sorted(k for k in set().union(*methods_)
                 if len({json.dumps(m.get(k), sort_keys=True) for m in methods_}) > 1)
  value = lambda v: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
  curve = 'worst-case' if any(r['curve'] == 'worst-case' for r in rows) else rows[0]['curve']
  by_run = {r['run']: r for r in rows if r['curve'] == curve}
  for run in plan['runs']:
    row = by_run.get(run['name'])
    if row is None:
      continue
    hparams = {'model': run['label'], 'seed': run.get('seed', plan['shared'].get('seed', 0)),
               **{f'method.{k}': value(run['method'].get(k, '')) for k in swept}}
    m = row['metric']
    metrics = {f'final/{m}_clean': row['clean'], f'final/{m}_{curve}_mean': row['mean'],
               **{f'final/{m}_{curve}_at_eps={_fmt(e)}': v for e, v in row['by_eps'].items()
                  if e > 0}}
    tensorboard_log.write_sweep_hparams(os.path.join(workdir, run['name']), hparams, metrics)


def plot_training(runs: Sequence[tuple[str, str]], metric: str, path: str) -> bool:
  """training.png: the learning curves (clean `metric` on the evaluation split per epoch, from
  config.eval.every_epochs) and the mean margin against the step (runs with margins, p10-p90
  band), one line per run. False (nothing written) when no run logged either."""
  logs = [(label, margins_lib.read_metrics(d)) for label, d in runs]
  curves = [(label, [r for r in log if r.get('type') == 'val']) for label, log in logs]
  margin = [(label, [r for r in log if r.get('type') == 'train' and 'margin/mean' in r])
            for label, log in logs]
  curves, margin = [c for c in curves if c[1]], [m for m in margin if m[1]]
  if not curves and not margin:
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  panels = [p for p in (('curve', curves), ('margin', margin)) if p[1]]
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  for ax, (kind, series) in zip(axes[0], panels):
    for label, recs in series:
      if kind == 'curve':
        ax.plot([r['epoch'] + 1 for r in recs], [r[metric] for r in recs], marker='o', ms=2,
                label=label)
      else:
        steps = [r['step'] for r in recs]
        line, = ax.plot(steps, [r['margin/mean'] for r in recs], label=label)
        ax.fill_between(steps, [r['margin/p10'] for r in recs], [r['margin/p90'] for r in recs],
                        color=line.get_color(), alpha=0.15)
    if kind == 'curve':
      split = series[0][1][0].get('split', 'val')
      ax.set(xlabel='epoch', ylabel=f'clean {metric.upper()}',
             title=f'learning curves ({split} split)')
    else:
      ax.set(xlabel='training step', ylabel='margin', title='mean margin (band: p10-p90)')
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.tight_layout()
  reports.save_figure(fig, path)
  return True


def write_csv(rows: list[dict], path: str) -> None:
  levels = list(rows[0]['by_eps'])
  metric = rows[0]['metric']
  fields = ['model', 'run', 'method', 'curve', 'norm', f'clean_{metric}',
            *[f'{metric}@eps={_fmt(e)}' for e in levels], f'mean_{metric}_over_grid',
            'train_seconds_per_epoch', 'checks_passed', 'checks_failed',
            *[f'final_margin_{k}' for k in margins_lib.STATS], 'protocol', 'seed']
  reports.write_csv(path, fields, [
      [r['model'], r['run'], r['method'], r['curve'], r['norm'], f'{r["clean"]:.4f}',
       *[f'{r["by_eps"][e]:.4f}' for e in levels], f'{r["mean"]:.4f}',
       f'{r["seconds_per_epoch"]:.1f}', r['checks_passed'], ';'.join(r['checks_failed']),
       *[_margin(r, k) for k in margins_lib.STATS], r['protocol'],
       '' if r.get('seed') is None else r['seed']] for r in rows])


def _margin(row: dict, stat: str) -> str:
  value = row['margins'].get(f'margin/{stat}')
  return '' if value is None else f'{value:.4g}'


def _root(report: dict) -> str:
  root = report.get('data', {}).get('root')
  return f' of {root}' if root else ''


def _units_note(report: dict) -> str:
  """For budgets stated in a paper's units: the levels in those units."""
  u = report.get('units')
  if not u:
    return ''
  levels = ', '.join(_fmt(e) for e in u['noise_levels_paper'])
  return (f' (ε below in the model\'s units; stated as {levels} for the paper\'s '
          f'{"×".join(map(str, u["paper_shape"]))} input: × {u["model_per_paper"]:.4g})')


def _describe(a: dict) -> str:
  source = (f', crafted on the sweep\'s {os.path.basename(a["source"])} model of the same seed'
            if 'source' in a else '')
  return (f'{a["name"]} ({a["norm"].upper()}, step {a["step_size"]}, {a["restarts"]} restart(s), '
          f'random start {a["random_start"]}, data range {a["data_range"]}{source})')


def markdown(rows: list[dict], comparisons: dict | None = None) -> str:
  """The sweep's tables: one per curve (worst case first, each model's figures over its
  seeds), then the gradient-masking checks, the margins, and the paired comparisons
  (`robust_med.verdicts.comparisons`) when given."""
  report = rows[0]['report']
  metric, levels = rows[0]['metric'], list(rows[0]['by_eps'])
  curves = list(dict.fromkeys(r['curve'] for r in rows))
  curves.sort(key=lambda c: c != 'worst-case')
  label = (reports.metric_label(metric, report.get('higher_is_better', True))
           if metric == report['metric'] else metric.upper())  # The direction is the primary's.
  lines = [f'# {label} under attack', '',
           f'Task {report["task"]}, {report["num_samples"]} evaluation samples '
           f'({report.get("split", "val")} split{_root(report)}), noise levels in the '
           f'{report["attack"]["norm"].upper()} norm'
           + _units_note(report) + '. Protocol: '
           + ', '.join(sorted({r['protocol'] for r in rows}))
           + ' (docs/fidelity.md). Attacks:', '']
  lines += [f'- {_describe(a)}' for a in report.get('attacks', [report['attack']])]
  if 'worst_case' in report:
    lines.append(f'- worst-case: {report["worst_case"]["rule"]}')
  model_groups = verdicts.groups(rows)
  seeds = max(g['seeds'] for g in model_groups)
  if seeds > 1:
    lines += ['', f'Each model trained with up to {seeds} seeds: figures are the mean over seeds '
              f'± half of its 95 % Student-t interval over seeds; seconds per epoch averaged, '
              'masking checks summed over seeds.']
  for curve in curves:
    lines += ['', f'## {metric.upper()}, {curve}', '',
              '| model | ' + ' | '.join(f'ε={_fmt(e)}' for e in levels)
              + ' | mean over grid | train s/epoch | masking checks |'
              + (' seeds |' if seeds > 1 else ''),
              '|---' * (len(levels) + 4 + (seeds > 1)) + '|']
    for g in model_groups:
      if g['curve'] == curve:
        lines.append(f'| {g["model"]} | '
                     + ' | '.join(verdicts.cell(g['by_eps'][e]) for e in levels)
                     + f' | {verdicts.cell(g["mean"])} | '
                     + f'{np.mean([r["seconds_per_epoch"] for r in g["rows"]]):.0f} | '
                     + f'{_checks_passed(g["rows"])} |'
                     + (f' {g["seeds"]} |' if seeds > 1 else ''))
  checks = [(_seeded(r), r['report'].get('checks', [])) for r in rows if r['curve'] == curves[0]]
  if any(c for _, c in checks):
    names = [c['name'] for c in checks[0][1]]
    lines += ['', '## Gradient-masking checks', '', '| model | ' + ' | '.join(names) + ' |',
              '|---' * (len(names) + 1) + '|']
    for model, cs in checks:
      lines.append(f'| {model} | ' + ' | '.join('pass' if c['passed'] else '**FAIL**'
                                                for c in cs) + ' |')
  with_margins = [r for r in rows if r['curve'] == curves[0] and r['margins']]
  if with_margins:
    lines += ['', '## Margins at the end of training', '',
              'Statistics of all training margins at the last logged step; enlarged and refined '
              'are the fractions of samples per step, and the refine change the mean change of a '
              'refined margin, averaged over the last logging interval.', '',
              '| model | step | ' + ' | '.join(margins_lib.STATS)
              + ' | enlarged | refined | mean refine change |',
              '|---' * (len(margins_lib.STATS) + 5) + '|']
    for r in with_margins:
      m = r['margins']
      lines.append(f'| {_seeded(r)} | {m["step"]} | '
                   + ' | '.join(_margin(r, k) for k in margins_lib.STATS)
                   + ' | ' + ' | '.join(f'{m[k]:.3f}' if k in m else ''
                                        for k in ('grow_fraction', 'refine_fraction',
                                                  'refine_delta')) + ' |')
  warnings = [(_seeded(r), w) for r in rows if r['curve'] == curves[0]
              for w in r['report'].get('warnings', [])]
  if warnings:
    lines += ['', '**Warnings**', ''] + [f'- {m}: {w}' for m, w in warnings]
  return '\n'.join(lines) + '\n' + (verdicts.markdown(comparisons) if comparisons else '')


def _seeded(row: dict) -> str:
  """A row's model label, with its seed when the sweep has several."""
  return row['model'] + (f' (seed {row["seed"]})' if row.get('seed') is not None else '')


def _checks_passed(rows: list[dict]) -> str:
  """'passed/run' over the rows' (seeds') masking checks."""
  checks = [c for r in rows for c in r['report'].get('checks', [])]
  if not checks:
    return 'not run'
  return f'{sum(c["passed"] for c in checks)}/{len(checks)}'


def plot(rows: list[dict], path: str) -> None:
  """Metric vs noise, one line per model; one panel per curve (worst case first)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  metric, norm = rows[0]['metric'], rows[0]['norm'].upper()
  curves = sorted(dict.fromkeys(r['curve'] for r in rows), key=lambda c: c != 'worst-case')
  fig, axes = plt.subplots(1, len(curves), figsize=(4.6 * len(curves), 3.8), squeeze=False,
                           sharey=True)
  model_groups = verdicts.groups(rows)
  for ax, curve in zip(axes[0], curves):
    for g in model_groups:
      if g['curve'] == curve:
        eps = list(g['by_eps'])
        failed = any(r['checks_failed'] for r in g['rows'])
        label = (g['model'] + (f' ({g["seeds"]} seeds, 95% CI)' if g['seeds'] > 1 else '')
                 + (' (checks failed)' if failed else ''))
        line, = ax.plot(eps, [g['by_eps'][e][0] for e in eps], marker='o', ms=3, label=label)
        if g['seeds'] > 1:
          ax.fill_between(eps, [g['by_eps'][e][1] for e in eps],
                          [g['by_eps'][e][2] for e in eps], color=line.get_color(), alpha=0.15)
    ax.set_title(f'{curve}', fontsize=10)
    ax.set_xlabel(f'noise level ε ({norm})')
    ax.grid(alpha=0.3)
  report = rows[0]['report']
  axes[0][0].set_ylabel(reports.metric_label(metric, report.get('higher_is_better', True))
                        if metric == report['metric'] else metric.upper())
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  reports.save_figure(fig, path)


def missing_runs(workdir: str) -> list[str]:
  """The runs of the sweep's plan that have no report yet."""
  with open(os.path.join(workdir, PLAN_FILE)) as f:
    plan = json.load(f)
  return [r['name'] for r in plan['runs']
          if not os.path.exists(os.path.join(workdir, r['name'], 'robustness.json'))]


CERTIFY_FILES = ('certify.md', 'certify.csv')


def certify_runs(workdir: str, *, sigma: float | None = None, n: int = 1000, n0: int = 100,
                 alpha: float = 0.001, max_samples: int = 0,
                 log: Callable[[str], None] = print) -> list[dict]:
  """Certifies every finished run of the sweep in `workdir` (`robust_med.certify`, on its
  evaluation split, with σ = `sigma` or else the σ the run was trained with) unless its
  certify.json already holds these settings, then writes `certify.md` (a table: each model's
  smoothed metric and certified metric per radius, the abstained share at σ and the consistency
  violations) and `certify.csv` (one row per run and radius). Returns the reports' rows."""
  from robust_med import certify, smoothing
  if not os.path.isfile(os.path.join(workdir, PLAN_FILE)):
    raise UserError(f'{workdir} holds no sweep (no {PLAN_FILE}): pass the --workdir of a sweep '
                    'started with python -m robust_med.sweep.')
  rows = []
  for entry in read_plan(workdir)['runs']:
    run_dir = os.path.join(workdir, entry['name'])
    if not os.path.exists(os.path.join(run_dir, 'robustness.json')):
      log(f'{entry["name"]}: not finished, not certified')
      continue
    config = cli.load_workdir_config(run_dir)
    s = sigma if sigma is not None else float(config.method.get('noise_sigma', 0.0))
    if s <= 0:
      log(f'{entry["name"]}: trained without noise (config.method.noise_sigma = 0), not '
          'certified; pass --certify_sigma to certify every model at one σ')
      continue
    settings = smoothing.SmoothingSettings(sigma=s, n=n, n0=n0, alpha=alpha)
    out = os.path.join(run_dir, 'certify', config.data.eval_split)
    report = _read_certificate(out, settings, max_samples)
    if report is None:
      log(f'{entry["name"]}: certifying (σ = {s:g}, n = {n}) into {out}')
      report = certify.certify_checkpoint(config, run_dir, settings, out=out,
                                          max_samples=max_samples)
    else:
      log(f'{entry["name"]}: certified already ({out})')
    rows.append({'run': entry['name'], 'label': entry.get('label', entry['name']),
                 'seed': entry.get('seed'), 'report': report})
  _write_certify_table(workdir, rows)
  return rows


def _read_certificate(out: str, settings, max_samples: int) -> dict | None:
  """The certify.json in `out` when it was made with these settings, else None."""
  path = os.path.join(out, 'certify.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    report = json.load(f)
  s = report.get('settings', {})
  same = all(s.get(k) == getattr(settings, k) for k in ('sigma', 'n', 'n0', 'alpha',
                                                          'correction'))
  size = report.get('data', {}).get('split_size')
  expected = min(max_samples, size) if max_samples and size else size
  return report if same and report.get('num_samples') == expected else None


def _write_certify_table(workdir: str, rows: list[dict]) -> None:
  radii = sorted({r['radius'] for row in rows for r in row['report']['curve']})
  shown = [r for r in radii if any(math.isclose(r, row['report']['settings']['sigma'] * k / 4)
                                   for row in rows for k in (0, 1, 2, 4, 8))] or radii
  fmt = lambda v: '—' if v is None else f'{v:.3f}'  # noqa: E731
  lines = ['# Certified robustness (randomized smoothing)', '',
           'Per model: the smoothed model\'s metric, then the certified metric (mean over images; '
           '— where some image is unbounded) at each L2 radius (model input units), the share '
           'of abstained answers at r = σ, and the consistency check\'s violations (certified '
           'answers an attack on the smoothed model contradicts; they should be 0). '
           '`python -m robust_med.certify` wrote each run\'s `certify/<split>/certify.json`.', '']
  if rows:
    metric = rows[0]['report']['metric']
    lines += [f'| model | seed | σ | n | smoothed {metric} | ' +
              ' | '.join(f'r = {r:g}' for r in shown) + ' | abstained at σ | violations |',
              '|---' * (len(shown) + 7) + '|']
  csv_rows = []
  for row in rows:
    rep = row['report']
    at = {round(c['radius'], 9): c for c in rep['curve']}
    sigma = rep['settings']['sigma']
    near = min(rep['curve'], key=lambda c: abs(c['radius'] - sigma))
    violations = sum(c['violating_answers'] for c in rep.get('consistency', []))
    lines.append(f'| {row["label"]} | {row["seed"] if row["seed"] is not None else ""} | '
                 f'{sigma:g} | {rep["settings"]["n"]} | {fmt(rep.get("smoothed"))} | ' +
                 ' | '.join(fmt(at[round(r, 9)]['certified']) if round(r, 9) in at else ''
                            for r in shown) +
                 f' | {near["abstained"]:.3f} | {violations} |')
    csv_rows += [[row['run'], row['label'], row['seed'], sigma, c['radius'], c['certified'],
                  c['abstained']] for c in rep['curve']]
  reports.write_text(os.path.join(workdir, 'certify.md'), '\n'.join(lines) + '\n')
  reports.write_csv(os.path.join(workdir, 'certify.csv'),
                    ['run', 'model', 'seed', 'sigma', 'radius', 'certified', 'abstained'],
                    csv_rows)


def summarize_finished(workdir: str, log: Callable[[str], None] = print) -> list[dict]:
  """`summarize` for the command line: refuses a folder that holds no sweep, and says which runs
  of the plan are missing."""
  if not os.path.isfile(os.path.join(workdir, PLAN_FILE)):
    raise UserError(f'{workdir} holds no sweep (no {PLAN_FILE}): pass the --workdir of a sweep '
                    'started with python -m robust_med.sweep.')
  missing = missing_runs(workdir)
  if missing:
    log(f'warning: {len(missing)} run(s) of the plan not finished, left out of the summary: '
        f'{", ".join(missing)}')
  return summarize(workdir)


def _print_summary(workdir: str, rows: list[dict]) -> None:
  if rows:
    with open(os.path.join(workdir, 'summary.md')) as summary:
      print(summary.read())
  else:
    print('No finished runs.')
  print(f'Done: {os.path.abspath(workdir)}/summary.md, summary.csv, curves.png, training.png')


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags
  from robust_med import cli
  config_flags.DEFINE_config_file('config', None, 'Base config; the sweep changes only its '
                                  'method section, e.g. configs/hippocampus_amat.py:cpu.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Sweep folder: one subfolder per run, plus the summary.')
  flags.DEFINE_list('sat_eps', [], 'SAT budgets, e.g. 1,5,10,15 (one SAT run each).')
  flags.DEFINE_list('methods', ['std', 'sat', 'amat'], 'Methods to compare.')
  flags.DEFINE_bool('xi_from_std', True, "AMAT's ξ from the sweep's STD model (else the config's "
                    'xi_source).')
  flags.DEFINE_list('xi_from', [], "AMAT runs per source of ξ: std (the sweep's STD model), "
                    'warmup (its own STD warm-up epochs), or both; overrides --xi_from_std.')
  flags.DEFINE_multi_string('amat_variant', [], 'One AMAT run per use, with these method keys '
                            'changed, e.g. --amat_variant=refine=paper '
                            '--amat_variant=refine=boundary,max_margin=12.')
  flags.DEFINE_multi_string('method_configs', [], 'Config files whose method sections to compare '
                            '(one run each, named after the file), comma-separated or the flag '
                            'repeated (as shell braces write it), e.g. configs/busi_std.py:cpu,'
                            'configs/busi_at.py:cpu; replaces --methods and --sat_eps.')
  flags.DEFINE_string('transfer_from', '', "A run of the sweep (e.g. std) on which the "
                      'evaluation PGD is crafted and applied to every model as a transfer attack '
                      '(a curve, in the worst case, and the transfer_weaker masking check).')
  flags.DEFINE_integer('seeds', 1, 'Training seeds per method (config.seed, config.seed + 1, '
                       '...; folders <run>_seed<s>): tables give the mean over seeds with its '
                       '95% interval, comparisons bootstrap over samples and seeds.')
  flags.DEFINE_bool('summarize', False, 'Train nothing: rewrite the summary from the runs '
                    'finished in --workdir (e.g. after copying in runs trained elsewhere) and '
                    'list the missing ones; needs no --config.')
  flags.DEFINE_bool('certify', False, 'Certify every finished model of the sweep by randomized '
                    'smoothing (robust_med.certify) and write certify.md and certify.csv; '
                    'without --config nothing is trained first.')
  flags.DEFINE_float('certify_sigma', None, 'σ of --certify (default: each run\'s training '
                     'config.method.noise_sigma; runs trained without noise are then skipped).')
  flags.DEFINE_integer('certify_n', 1000, 'Noisy copies per image that estimate (--certify).')
  flags.DEFINE_float('certify_alpha', 0.001, 'Failure probability per image (--certify).')
  flags.DEFINE_integer('certify_max_samples', 0, 'Images certified per run (0: the whole '
                       'evaluation split).')
  flags.DEFINE_bool('plan_only', False, 'Train nothing: write the plan (sweep.json: each run '
                    'with its config and the runs it waits for) and print its runs, for job '
                    'arrays (--task_index) and --print_slurm / --print_local.')
  flags.DEFINE_integer('task_index', None, 'Train and evaluate only the run at this index of the '
                       "plan in --workdir, with the plan's config (no --config); "
                       '$SLURM_ARRAY_TASK_ID by default when set and no --config is given.')
  flags.DEFINE_string('run', None, 'Like --task_index, by the run\'s name (e.g. amat_seed1).')
  flags.DEFINE_float('wait', 0, 'With --task_index/--run: seconds to wait for the runs it reads '
                     "(the sweep's STD) to finish; 0 refuses at once when they have not.")
  flags.DEFINE_bool('print_slurm', False, 'Print a bash script that submits the plan in --workdir '
                    'to SLURM: one job array per stage, one GPU per task, then the summary.')
  flags.DEFINE_integer('max_parallel', 8, 'With --print_slurm: tasks of an array running at '
                       'once (%N).')
  flags.DEFINE_integer('slurm_nodes', 1, 'With --print_slurm: nodes per run (one GPU and one '
                       'process each, trained together with --distributed; the evaluation then '
                       'runs in one process).')
  flags.DEFINE_string('slurm_args', '', 'With --print_slurm: more sbatch options for every job, '
                      "e.g. '--partition=gpu --time=24:00:00 --cpus-per-task=8'.")
  flags.DEFINE_integer('print_local', 0, 'Print a bash script that runs the plan in --workdir on '
                       'this machine with this many GPUs (one process per GPU), then the '
                       'summary.')
  flags.mark_flags_as_required(['workdir'])

  @cli.guard
  def run(argv):
    cli.reject_positional(argv)
    f = flags.FLAGS
    err = lambda s: print(s, file=sys.stderr)  # noqa: E731
    certify_now = lambda: certify_runs(  # noqa: E731
        f.workdir, sigma=f.certify_sigma, n=f.certify_n, alpha=f.certify_alpha,
        max_samples=f.certify_max_samples, log=err)
    if f.certify and f.config is None and not f.summarize:
      from robust_med import sharding  # Before JAX's first operation.
      sharding.configure_host_devices(0)
      certify_now()
      print(f'Done: {os.path.abspath(f.workdir)}/certify.md, certify.csv')
      return
    if f.summarize:
      rows = summarize_finished(f.workdir, log=err)
      _print_summary(f.workdir, rows)
      return
    index = f.task_index
    array_task = os.environ.get('SLURM_ARRAY_TASK_ID', '')
    if (index is None and f.run is None and f.config is None and array_task.isdigit() and
        not (f.plan_only or f.print_slurm or f.print_local)):
      index = int(array_task)
    if index is not None or f.run is not None:
      if f.config is not None:
        raise ConfigError('--task_index/--run train one run of the plan in --workdir with the '
                          "config the plan records: leave --config out (write the plan with "
                          '--config=... --plan_only first).')
      if index is not None and f.run is not None:
        raise ConfigError('Give --task_index or --run, not both.')
      _, entry = plan_task(f.workdir, name=f.run, index=index)
      config = cli.config_from_dict(entry['config'], os.path.join(f.workdir, PLAN_FILE))
      from robust_med import sharding  # Before JAX's first operation.
      sharding.configure_host_devices(config.mesh.host_devices, config.batch_size)
      run_task(f.workdir, name=f.run, index=index, wait=f.wait, log=err)
      if os.path.exists(os.path.join(f.workdir, entry['name'], 'robustness.json')):
        err(f'Run {entry["name"]} finished. When every run has: python -m robust_med.sweep '
            f'--workdir={f.workdir} --summarize')
      else:  # trained by several processes: the evaluation runs in one
        err(f'Run {entry["name"]} trained; evaluate it in one process: python -m '
            f'robust_med.sweep --workdir={f.workdir} --run={entry["name"]}')
      return
    if f.config is not None and (f.print_slurm or f.print_local or f.plan_only):
      sweep_from_flags(f, plan_only=True, log=err)
    if f.print_slurm or f.print_local:
      runs = read_plan(f.workdir)['runs']
      for i in range(len(runs)):
        plan_task(f.workdir, index=i)  # every run's config recorded
      if f.print_slurm:
        try:
          sbatch_args = shlex.split(f.slurm_args)
        except ValueError as e:
          raise ConfigError(f'--slurm_args={f.slurm_args!r} does not split into options ({e}): '
                            "quote it as a whole, e.g. --slurm_args='--partition=gpu "
                            "--time=24:00:00'.") from None
        print(launch.slurm_script(f.workdir, runs, python=sys.executable,
                                  max_parallel=f.max_parallel, nodes=f.slurm_nodes,
                                  sbatch_args=sbatch_args))
      else:
        print(launch.local_script(f.workdir, runs, python=sys.executable, gpus=f.print_local))
      return
    if f.plan_only:
      if f.config is None:
        raise ConfigError('--plan_only needs the sweep\'s --config (and its flags).')
      runs = read_plan(f.workdir)['runs']
      groups = launch.stages(runs)
      print(f'{len(runs)} runs in {len(groups)} stage(s) planned in '
            f'{os.path.join(os.path.abspath(f.workdir), PLAN_FILE)}:')
      for k, group in enumerate(groups):
        print(f'  stage {k}: ' + ', '.join(f'{i} {runs[i]["name"]}' for i in group))
      return
    if f.config is None:
      raise ConfigError('--config is required to train a sweep: e.g. '
                        '--config=configs/hippocampus_amat.py:cpu (or --summarize to only rewrite '
                        'the summary of the runs in --workdir).')
    from robust_med import sharding  # Before JAX's first operation; the command line only.
    sharding.configure_host_devices(f.config.mesh.host_devices, f.config.batch_size)
    _print_summary(f.workdir, sweep_from_flags(f, log=err))
    if f.certify:
      certify_now()
      print(f'Done: {os.path.abspath(f.workdir)}/certify.md, certify.csv')

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


def sweep_from_flags(f, plan_only: bool = False, log: Callable[[str], None] = print) -> list[dict]:
  """`run_sweep` with the command line's flags (`f`: absl's FLAGS)."""
  try:
    sat_eps = [float(e) for e in f.sat_eps]
  except ValueError:
    raise ConfigError(f'--sat_eps={",".join(f.sat_eps)} is not a list of numbers: use e.g. '
                      '--sat_eps=1,5,10,15.') from None
  variants = [parse_variant(v, f.config.method) for v in f.amat_variant] or [{}]
  return run_sweep(f.config, f.workdir, sat_eps=sat_eps, methods=f.methods,
                   xi_from_std=f.xi_from_std, xi_sources=f.xi_from or None,
                   amat_variants=variants,
                   method_configs=[e for v in f.method_configs for e in v.split(',') if e],
                   seeds=f.seeds,
                   transfer_from=f.transfer_from, plan_only=plan_only, log=log)


if __name__ == '__main__':
  cli.define_distributed_flags()
  from absl import app as _app
  _app.call_after_init(cli.start_distributed)
  main()
