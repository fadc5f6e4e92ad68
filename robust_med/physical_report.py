"""Physical perturbations in the report: each kind attacked at its budgets, for any head.

For every kind of `config.physical.kinds` (`robust_med.physical`: bias field, motion, k-space
spike, Gibbs truncation, Rician noise, speckle, gain, dose, scatter, gamma), the evaluator runs
two attacks at each budget of `config.physical.budgets.<kind>` (in the kind's own unit) through
the machinery of the pixel report (`Evaluator.curves`):

* `<kind>-pgd-<steps>`: projected gradient ascent on the perturbation's parameters within the
  per-sample budget (`physical.PhysicalPGD`);
* `<kind>-random-<draws>`: per sample, the worst of `config.physical.random_draws` random
  parameters spending the whole budget (`physical.PhysicalRandom`);

and their per-sample worst case, the figure the report quotes. Two masking checks say whether
the attack can be trusted (`gradient_masking.compare_curves`, tolerance `eval.check_tolerance`):
`random_parameters_weaker` (the attack beats the random baseline at every budget) and
`stronger_attack_not_better` (the attack with `check_steps` × the steps and 3 random restarts, at
the largest budget, is not more damaging than the worst case: the search has converged).

`physical.json` holds per kind the unit, the settings, whether it moves image content (and so
would need the targets moved: `moves_targets`, false for every model here), the attacks'
descriptions, the curves
(every metric of `Task.summarize` at each budget) and the checks; `physical.png` plots the primary
metric against the budget, one panel per kind. Images are normalised by the valid input range
(`config.attack.clip`, else the evaluated split's minimum and maximum) before a model applies.
"""

from __future__ import annotations

import os

import numpy as np

from robust_med import config_base, gradient_masking, physical, shift
from robust_med.errors import ConfigError

STRONG_RESTARTS = 3


def wanted(config) -> bool:
  """Whether the config asks for a physical report (`physical.kinds` set)."""
  return bool(config_base.physical_kinds(config))


def attacks_for(config, kind: str, clip) -> tuple[physical.PhysicalPGD, physical.PhysicalRandom,
                                                    physical.PhysicalPGD]:
  """The kind's attack, its random baseline and the convergence check's stronger attack."""
  settings = tuple(sorted(config_base.physical_settings(config, kind).items()))
  p = config.physical
  pgd = physical.PhysicalPGD(kind, settings, steps=p.steps, restarts=p.restarts, clip=clip)
  random = physical.PhysicalRandom(kind, settings, restarts=p.random_draws, clip=clip)
  strong = physical.PhysicalPGD(kind, settings, steps=max(1, p.check_steps) * p.steps,
                                restarts=STRONG_RESTARTS, clip=clip)
  return pgd, random, strong


def kind_report(evaluator, params, data: dict[str, np.ndarray], config, kind: str,
                clip) -> dict:
  """One kind's curves and checks."""
  task = evaluator.task
  metric = task.primary_metric
  budgets = [0.0] + [float(b) for b in config.physical.budgets[kind]]
  pgd, random, strong = attacks_for(config, kind, clip)
  names = [a.describe()['name'] for a in (pgd, random)]
  curves = evaluator.curves(params, data, budgets, (pgd, random), desc=kind)
  worst = curves['worst-case']
  clean = worst[0][metric]
  tol = config.eval.check_tolerance * abs(clean - task.metric_floor()) + 1e-6
  common = dict(metric=metric, clean=clean, higher_is_better=task.higher_is_better,
                tolerance=tol)
  checks = [gradient_masking.compare_curves(
      'random_parameters_weaker', curves[names[0]], names[0], curves[names[1]], names[1],
      **common)]
  out = {'unit': pgd.model.unit, 'settings': dict(pgd.settings), 'budgets': budgets,
         'moves_targets': kind in physical.GEOMETRIC, 'attack': pgd.describe(),
         'random': random.describe(), 'curves': curves}
  largest = max(budgets)
  if config.physical.check_steps and largest > 0:
    strong_name = strong.describe()['name'] + f'x{STRONG_RESTARTS}'
    row = evaluator.curves(params, data, [largest], (strong,), desc=f'{kind} check')
    strong_rows = next(iter(row.values()))
    checks.append(gradient_masking.compare_curves(
        'stronger_attack_not_better', worst, 'worst-case', strong_rows, strong_name, **common))
    out['check_attack'] = strong.describe()
    out['check_curve'] = {strong_name: strong_rows}
  out['checks'] = checks
  return out


def physical_report(evaluator, params, data: dict[str, np.ndarray], config,
                    extra: dict | None = None) -> dict:
  """The physical-perturbation report of `params` on `data` (see the module docstring)."""
  task = evaluator.task
  if np.ndim(data['image']) != 4:
    raise ConfigError(f'config.physical.kinds is set but the images are not 2-D (shape '
                      f'{tuple(np.shape(data["image"]))[1:]}): the physical perturbations model '
                      'in-plane 2-D acquisitions; set --config.physical.kinds=() for volumes.')
  clip = shift.value_range(config, data['image'])
  kinds = {kind: kind_report(evaluator, params, data, config, kind, clip)
           for kind in config_base.physical_kinds(config)}
  warnings = [f'{kind}: {line}' for kind, r in kinds.items()
              for line in gradient_masking.warnings_for(r['checks'])]
  return {'task': task.name, 'metric': task.primary_metric,
          'higher_is_better': task.higher_is_better, 'num_samples': len(data['id']),
          **(extra or {}), 'modality': config.data.get('modality', ''),
          'value_range': list(clip), 'kinds': kinds, 'warnings': warnings}


def plot(report: dict, path: str) -> None:
  """physical.png: the primary metric against each kind's budget (one panel per kind): the worst
  case (solid), the attack and the random baseline (dashed)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from robust_med.reports import metric_label, save_figure
  metric = report['metric']
  kinds = report['kinds']
  n = max(len(kinds), 1)
  cols = min(n, 3)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
  styles = {'worst-case': dict(color='k', lw=2)}
  for ax, (kind, r) in zip(axes.ravel(), kinds.items()):
    for name, rows_ in r['curves'].items():
      style = styles.get(name, dict(ls='--', lw=1))
      ax.plot([row['eps'] for row in rows_], [row[metric] for row in rows_], marker='o', ms=3,
              label=name, **style)
    ax.set_title(kind, fontsize=9)
    ax.set_xlabel(r['unit'], fontsize=8)
    ax.set_ylabel(metric_label(metric, report.get('higher_is_better', True)), fontsize=8)
    ax.legend(fontsize=6)
  for ax in axes.ravel()[len(kinds):]:
    ax.axis('off')
  fig.suptitle(f'{report.get("method", "model")} on {report.get("split", "?")}: physical '
               'perturbations', fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)


def evaluate_and_write(evaluator, params, data: dict[str, np.ndarray], config, out: str,
                       extra: dict) -> dict:
  """Writes physical.json and physical.png into `out` (the data already capped like the
  robustness report's) and returns the report."""
  from robust_med.reports import write_json
  report = physical_report(evaluator, params, data, config, extra)
  os.makedirs(out, exist_ok=True)
  plot(report, os.path.join(out, 'physical.png'))
  write_json(os.path.join(out, 'physical.json'), report)
  write_board(out, report, config)
  return report


def write_board(out: str, report: dict, config) -> None:
  """physical.json's curves in TensorBoard (`out/tb/physical/`): each kind's curves, every metric
  against the budget (step = round(1000 · budget), in the kind's unit), and physical.png."""
  from robust_med import tensorboard_log
  curves = {f'{kind}/{name}': {tensorboard_log.eps_step(row['eps']):
                               {k: v for k, v in row.items() if k != 'eps'} for row in rows}
            for kind, r in report['kinds'].items() for name, rows in r['curves'].items()}
  units = '; '.join(f'{kind}: {r["unit"]}' for kind, r in report['kinds'].items())
  tensorboard_log.write_report_board(
      out, 'physical', curves, {'physical': os.path.join(out, 'physical.png')},
      step=int((report.get('checkpoint') or {}).get('step') or 0),
      text=f'Each physical perturbation\'s curves against its budget: step = round(1000 · budget) '
           f'({units}).', active=tensorboard_log.enabled(config))
