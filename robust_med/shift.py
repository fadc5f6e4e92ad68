"""Distribution-shift evaluation: a head's clean metrics under corruptions and on shifted splits.

Distribution-shift evaluation: the task's clean metrics under a corruption suite and on shifted
copies of the split, for any head.

For every corruption of `config.shift.corruptions` (`robust_med.corruptions`: noise, blur,
contrast, brightness, gamma, JPEG-like quantisation, pixelation, elastic deformation) at every
severity of `config.shift.severities`, the evaluation split is corrupted (the same random draws at
every severity, so only the strength changes; a geometric corruption moves the head's targets
through `Task.move_targets`) and evaluated clean. The report, `shift.json`, holds per corruption
and severity every metric of `Task.summarize`, and

* `mean_corruption`: each metric averaged over all corruptions and severities (for accuracy: the
  mean corruption accuracy);
* `relative_robustness`: mean corruption primary metric / clean primary metric (clean / mean
  corruption for a lower-is-better metric such as MRE, so that below 1 always means worse);
* `per_corruption`: the primary metric averaged over the severities of each corruption;
* `shifted_sets`: the metrics on the head's naturally shifted copies of the split
  (`Task.shifted_splits`, e.g. BUSI's 28 px images upsampled to the training resolution).

`shift.png` plots the primary metric against severity, one line per corruption.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import config_base, corruptions


def value_range(config, images: np.ndarray) -> tuple[float, float]:
  """The input range corruptions clip to: `config.attack.clip` when set (the valid input range),
  else the split's own minimum and maximum."""
  clip = tuple(config.attack.clip)
  if clip:
    return float(clip[0]), float(clip[1])
  return float(np.min(images)), float(np.max(images))


def corrupted_split(task, data: dict[str, np.ndarray], name: str, severity: int, *, seed: int,
                    chunk: int, lo_hi: tuple[float, float]) -> dict[str, np.ndarray]:
  """`data` with its images corrupted by `name` at `severity` (and its targets moved by a
  geometric corruption), `chunk` records at a time; deterministic in `seed`."""
  key = jax.random.fold_in(jax.random.key(seed), corruptions.NAMES.index(name))
  parts: dict[str, list[np.ndarray]] = {}
  n = len(data['id'])
  for i, start in enumerate(range(0, n, chunk)):
    batch = {k: v[start:start + chunk] for k, v in data.items()}
    out = _corrupt_chunk(task, batch, jax.random.fold_in(key, i), name, severity, lo_hi)
    for k, v in out.items():
      parts.setdefault(k, []).append(np.asarray(v))
  return {k: np.concatenate(v) for k, v in parts.items()}


def _corrupt_chunk(task, batch, key, name, severity, lo_hi):
  images = jnp.asarray(batch['image'])
  out = dict(batch)
  out['image'] = _corrupt_images(name, severity, lo_hi)(key, images)
  if name in corruptions.GEOMETRIC and severity:
    b, h, w = images.shape[:3]
    warp = corruptions.corruption_warp(name, key, b, h, w, severity)
    moved = task.move_targets({k: jnp.asarray(v) for k, v in out.items()}, warp)
    out = {k: moved[k] for k in out}
  return out


_CACHE: dict = {}


def _corrupt_images(name: str, severity: int, lo_hi):
  """A jitted corruption (cached: each one compiles once per process and image shape)."""
  cache_key = (name, severity, lo_hi)
  if cache_key not in _CACHE:
    _CACHE[cache_key] = jax.jit(lambda key, x: corruptions.corrupt(name, key, x, severity,
                                                                   value_range=lo_hi))
  return _CACHE[cache_key]


def shift_report(evaluator, params, data: dict[str, np.ndarray], config,
                 shifted_sets: dict[str, dict[str, np.ndarray]] | None = None,
                 extra: dict | None = None) -> dict:
  """The distribution-shift report of `params` on `data` (see the module docstring)."""
  task = evaluator.task
  metric = task.primary_metric
  names = config_base.corruption_names(config)
  severities = [int(s) for s in config.shift.severities]
  lo_hi = value_range(config, data['image'])
  clean = evaluator.clean(params, data)
  rows: dict[str, list[dict]] = {}
  for name in names:
    rows[name] = []
    for severity in severities:
      corrupted = corrupted_split(task, data, name, severity, seed=config.shift.seed,
                                  chunk=config.eval.batch_size, lo_hi=lo_hi)
      rows[name].append({'severity': severity, **evaluator.clean(params, corrupted)})
  report = {'task': task.name, 'metric': metric, 'higher_is_better': task.higher_is_better,
            'num_samples': len(data['id']), **(extra or {}), 'value_range': list(lo_hi),
            'severities': severities, 'clean': clean,
            'corruptions': rows,
            'parameters': {n: list(corruptions.parameters(n)) for n in names}}
  if names:
    all_rows = [r for n in names for r in rows[n]]
    keys = [k for k in all_rows[0] if k not in ('severity', 'eps')]
    report['mean_corruption'] = {k: float(np.nanmean([r[k] for r in all_rows])) for k in keys}
    report['per_corruption'] = {n: float(np.nanmean([r[metric] for r in rows[n]]))
                                for n in names}
    base = clean[metric]
    shifted = report['mean_corruption'][metric]
    ratio = (shifted, base) if task.higher_is_better else (base, shifted)
    report['relative_robustness'] = float(ratio[0] / ratio[1]) if ratio[1] else float('nan')
  report['shifted_sets'] = {name: {'num_samples': len(arrays['id']),
                                   **evaluator.clean(params, arrays)}
                            for name, arrays in (shifted_sets or {}).items()}
  return report


def plot(report: dict, path: str) -> None:
  """shift.png: the primary metric against severity, one line per corruption, the clean value and
  the shifted sets as dashed lines."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from robust_med.reports import metric_label, save_figure
  metric = report['metric']
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  cmap = plt.get_cmap('tab10')
  for i, (name, rows) in enumerate(report['corruptions'].items()):
    xs = [0] + [r['severity'] for r in rows]
    ys = [report['clean'][metric]] + [r[metric] for r in rows]
    ax.plot(xs, ys, marker='o', ms=3, color=cmap(i % 10), label=name)
  ax.axhline(report['clean'][metric], color='k', ls=':', lw=1, label='clean')
  for j, (name, row) in enumerate(report.get('shifted_sets', {}).items()):
    ax.axhline(row[metric], color='gray', ls='--', lw=1, label=name)
  ax.set_xlabel('severity (0 = clean)')
  ax.set_ylabel(metric_label(metric, report.get('higher_is_better', True)))
  mean = report.get('mean_corruption', {}).get(metric)
  title = f'{report.get("method", "model")} on {report.get("split", "?")}'
  if mean is not None:
    title += (f': mean corruption {metric} {mean:.3f} '
              f'({100 * report["relative_robustness"]:.0f}% of clean)')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  save_figure(fig, path)


def wanted(config) -> bool:
  """Whether the config asks for a shift report (`shift.corruptions` set); the head's shifted
  copies of the split (`Task.shifted_splits`) are reported with it."""
  return bool(config_base.corruption_names(config))


def evaluate_and_write(evaluator, params, data: dict[str, np.ndarray], config, out: str,
                       extra: dict) -> dict:
  """Writes shift.json and shift.png into `out` (capped by `config.eval.max_samples`, like the
  robustness report) and returns the report."""
  from robust_med.data.source import evaluation_subset
  from robust_med.reports import write_json
  data = evaluation_subset(data, config.eval.max_samples)
  split = extra.get('split', config.data.eval_split)
  shifted = {name: evaluation_subset(arrays, config.eval.max_samples)
             for name, arrays in evaluator.task.shifted_splits(split).items()}
  report = shift_report(evaluator, params, data, config, shifted, extra)
  os.makedirs(out, exist_ok=True)
  plot(report, os.path.join(out, 'shift.png'))
  write_json(os.path.join(out, 'shift.json'), report)
  write_board(out, report, config)
  return report


def write_board(out: str, report: dict, config) -> None:
  """shift.json's curves in TensorBoard (`out/tb/shift/`): each corruption's metrics against the
  severity (step = severity, 0 = clean), the shifted sets at step 0, and shift.png."""
  from robust_med import tensorboard_log
  strip = lambda row: {k: v for k, v in row.items() if k != 'severity'}
  curves = {name: {0: dict(report['clean']), **{int(r['severity']): strip(r) for r in rows}}
            for name, rows in report['corruptions'].items()}
  curves.update({f'set/{name}': {0: dict(row)}
                 for name, row in report.get('shifted_sets', {}).items()})
  tensorboard_log.write_report_board(
      out, 'shift', curves, {'shift': os.path.join(out, 'shift.png')},
      step=int((report.get('checkpoint') or {}).get('step') or 0),
      text='Each corruption\'s metrics against its severity (step = severity; 0 = clean).',
      active=tensorboard_log.enabled(config))
