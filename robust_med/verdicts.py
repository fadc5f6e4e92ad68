"""Verdicts of a method comparison: figures over seeds with intervals, and paired comparisons.

A sweep (`robust_med.sweep`) evaluates every model on the same samples and stores, in each
`robustness.json`, the primary metric per sample for every curve and noise level
(`report['per_sample']`). From those this module gives

* `groups`: one entry per model and curve — the mean over training seeds of each figure of the
  summary table with its 95 % Student-t interval over seeds (no interval with one seed);
* `comparisons`: each model against STD and against the best SAT (the model trained with a fixed
  budget, `method.name == 'sat'`, with the best mean over the grid on the same curve) on two
  figures, the clean metric and the mean over the noise grid: the per-sample difference of the
  seed means, its interval by a bootstrap over samples and seeds, the Wilcoxon signed-rank test
  Holm-adjusted over the table's comparisons, the minimum detectable difference
  (`robust_med.stats.compare_seeded`), and a one-line verdict each;
* `markdown`, `write_csv`: the section of summary.md and comparisons.csv.

Picking the best SAT on the evaluation split favours SAT: a win over it is conservative.
"""

from __future__ import annotations

import numpy as np

from robust_med import reports
from robust_med import stats
from robust_med.errors import UserError

CLEAN = 'clean'
GRID = 'mean over grid'
FIGURES = (CLEAN, GRID)
CONFIDENCE = 0.95
STD_LABEL = 'STD'


def groups(rows: list[dict]) -> list[dict]:
  """One entry per (model label, curve), in the rows' order: its rows (one per seed), 'seeds',
  and (mean, low, high) over seeds of each noise level ('by_eps'), of the clean figure and of the
  mean over the grid."""
  out: dict[tuple[str, str], dict] = {}
  for r in rows:
    g = out.setdefault((r['model'], r['curve']), {'model': r['model'], 'curve': r['curve'],
                                                  'method': r['method'], 'rows': []})
    g['rows'].append(r)
  for g in out.values():
    levels = list(g['rows'][0]['by_eps'])
    g['seeds'] = len(g['rows'])
    g['by_eps'] = {e: stats.seed_interval([r['by_eps'][e] for r in g['rows']], CONFIDENCE)
                   for e in levels}
    g['clean'] = g['by_eps'][levels[0]]
    g['mean'] = stats.seed_interval([r['mean'] for r in g['rows']], CONFIDENCE)
  return list(out.values())


def cell(interval: tuple[float, float, float], digits: int = 3) -> str:
  """'0.356' for one seed, '0.356 ± 0.021' (half the 95 % interval) for several."""
  mean, low, high = interval
  if not np.isfinite(low):
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}'


def comparison_curve(rows: list[dict]) -> str:
  """The curve verdicts are drawn on: the per-sample worst case when the sweep has one, else the
  primary attack's."""
  curves = [r['curve'] for r in rows]
  return 'worst-case' if 'worst-case' in curves else rows[0]['report']['attack']['name']


def _per_sample(row: dict, curve: str, figure: str) -> np.ndarray:
  values = np.asarray(row['report']['per_sample']['values'][curve], np.float64)  # (levels, N)
  return values[0] if figure == CLEAN else values.mean(axis=0)


def references(model_groups: list[dict], higher_is_better: bool) -> list[tuple[str, dict]]:
  """[(role, group)]: STD (the model labelled 'STD', else the only one trained with method
  'std') and the best SAT, where the comparison has them."""
  out = []
  std = ([g for g in model_groups if g['model'] == STD_LABEL] or
         [g for g in model_groups if g['method'] == 'std'])
  if len(std) == 1 or (std and std[0]['model'] == STD_LABEL):
    out.append((STD_LABEL, std[0]))
  sat = [g for g in model_groups if g['method'] == 'sat']
  if sat:
    best = (max if higher_is_better else min)(sat, key=lambda g: g['mean'][0])
    out.append(('best SAT', best))
  return out


def comparisons(rows: list[dict], *, n_resamples: int = 10000, seed: int = 0) -> dict | None:
  """The paired comparisons of the sweep's models (see the module's docstring), or None when a
  report has no per-sample values (evaluated before they were stored: re-evaluate it) or there
  is no reference to compare with."""
  if not rows:
    return None
  curve = comparison_curve(rows)
  model_groups = [g for g in groups(rows) if g['curve'] == curve]
  if any('per_sample' not in r['report'] for g in model_groups for r in g['rows']):
    return None
  first = rows[0]['report']['per_sample']
  for g in model_groups:
    for r in g['rows']:
      if r['report']['per_sample']['ids'] != first['ids']:
        raise UserError(f'{r["run"]} was evaluated on other samples than {rows[0]["run"]}: '
                        'paired comparisons need the same samples; re-evaluate with the same '
                        'split and eval.max_samples.')
  higher = bool(first['higher_is_better'])
  refs = references(model_groups, higher)
  table = []
  for role, ref in refs:
    for g in model_groups:
      if g is ref or (role != STD_LABEL and any(r[0] == STD_LABEL and r[1] is g for r in refs)):
        continue  # best SAT vs STD is already in the STD comparisons.
      for figure in FIGURES:
        a = np.stack([_per_sample(r, curve, figure) for r in ref['rows']])
        b = np.stack([_per_sample(r, curve, figure) for r in g['rows']])
        c = stats.compare_seeded(a, b, n_resamples=n_resamples, confidence=CONFIDENCE,
                                 seed=seed)
        table.append({'model': g['model'], 'reference': ref['model'], 'role': role,
                      'figure': figure, **c})
  if not table:
    return None
  adjusted = stats.holm([c['wilcoxon_p'] for c in table])
  # The power line answers for the table as tested: Holm may test a comparison at α/m (its
  # strictest step), so the detectable differences and the samples needed are at that level: a
  # difference of the MDE is resolved with power 0.8 at whichever step Holm tests it.
  family_alpha = (1 - CONFIDENCE) / len(table)
  for c, p in zip(table, adjusted):
    c['wilcoxon_p_holm'] = float(p)
    c['resolved'] = stats.resolved(c, alpha=1 - CONFIDENCE)
    c['mde'] = stats.minimum_detectable(c['diff_sd'], len(first['ids']), alpha=family_alpha)
    c['samples_needed'] = stats.samples_needed(c['diff_sd'], c['mean_diff'], alpha=family_alpha)
  return {'curve': curve, 'metric': first['metric'], 'higher_is_better': higher,
          'samples': len(first['ids']), 'seeds': {g['model']: g['seeds'] for g in model_groups},
          'n_resamples': n_resamples, 'mde_alpha': family_alpha, 'rows': table}


def verdict_line(c: dict, result: dict) -> str:
  what = f'{result["curve"]} {result["metric"]}, {c["figure"]}'
  ref = c['reference'] + (' (best SAT)' if c['role'] == 'best SAT' else '')
  return stats.verdict(c['model'], ref, c, what=what,
                       higher_is_better=result['higher_is_better'], alpha=1 - CONFIDENCE)


def _alpha_words(result: dict) -> str:
  m, alpha = len(result['rows']), result['mde_alpha']
  if m == 1:
    return f'α = {alpha:.2g} two-sided'
  return (f'α = {1 - CONFIDENCE:.2g}/{m} = {alpha:.2g} two-sided per comparison, Holm\'s '
          f'strictest level over the {m}')


def mde_line(result: dict) -> str:
  """How many images the verdicts need: the range of minimum detectable differences and, for
  the largest unresolved difference, the images it would need."""
  rows = [c for c in result['rows'] if np.isfinite(c['mde'])]
  if not rows:
    return ''
  low = min(rows, key=lambda c: c['mde'])
  high = max(rows, key=lambda c: c['mde'])
  line = (f'With {result["samples"]} evaluation samples, these comparisons resolve differences '
          f'of {low["mde"]:.3g} ({low["model"]} vs {low["reference"]}, {low["figure"]}) to '
          f'{high["mde"]:.3g} ({high["model"]} vs {high["reference"]}, {high["figure"]}) in '
          f'{result["metric"]} ({_alpha_words(result)}, power 0.8, from the observed spread of '
          'the per-sample differences).')
  open_ = [c for c in rows if not c['resolved'] and c['mean_diff'] != 0]
  if open_:
    c = max(open_, key=lambda c: abs(c['mean_diff']))
    what = (f' The largest unresolved difference, {c["mean_diff"]:+.3g} ({c["model"]} − '
            f'{c["reference"]}, {c["figure"]}),')
    if 'samples_ci' in c and stats.resolved({**c, 'mean_diff_ci': c['samples_ci']},
                                            alpha=1 - CONFIDENCE):
      # The samples resolve it; the interval that also resamples each model's seeds does not.
      (samples_low, samples_high), (low, high) = c['samples_ci'], c['mean_diff_ci']
      line += (f'{what} passes the per-sample test (Holm p = {c["wilcoxon_p_holm"]:.2g}) and '
               f'its interval over the samples alone, [{samples_low:+.3g}, '
               f'{samples_high:+.3g}], excludes 0, but the one over samples and seeds, '
               f'[{low:+.3g}, {high:+.3g}], does not: the spread between seeds keeps it open, so '
               'more seeds, not more samples, would settle it.')
    else:
      line += f'{what} would need about {c["samples_needed"]:.0f} samples.'
  return line


def markdown(result: dict | None) -> str:
  """The summary's section: the comparisons table, one verdict per line, and the MDE line."""
  if not result:
    return ''
  direction = 'higher' if result['higher_is_better'] else 'lower'
  seeds = sorted(set(result['seeds'].values()))
  lines = ['', f'## Paired comparisons ({result["curve"]})', '',
           f'{result["metric"]} on the same {result["samples"]} samples, each model\'s seeds '
           f'({"/".join(map(str, seeds))} per model) averaged per sample; difference = model − '
           f'reference ({direction} is better). Interval: {CONFIDENCE:.0%} bootstrap over '
           f'samples and seeds ({result["n_resamples"]} resamples); p: two-sided Wilcoxon '
           'signed-rank test on the per-sample differences, Holm-adjusted over this table; '
           'resolved = adjusted p < 0.05 and an interval without 0; MDE: the smallest '
           'difference these samples resolve (power 0.8, at the strictest level Holm can test a '
           'comparison at: 0.05 over the number of comparisons). The best SAT is picked on this '
           'split, which favours it.', '',
           '| model | reference | figure | difference [95% CI] | p (Holm) | MDE | verdict |',
           '|---|---|---|---|---|---|---|']
  for c in result['rows']:
    low, high = c['mean_diff_ci']
    ref = c['reference'] + (' (best SAT)' if c['role'] == 'best SAT' else '')
    lines.append(f'| {c["model"]} | {ref} | {c["figure"]} | {c["mean_diff"]:+.3g} '
                 f'[{low:+.3g}, {high:+.3g}] | {c["wilcoxon_p_holm"]:.2g} | {c["mde"]:.3g} | '
                 f'{"resolved" if c["resolved"] else "not resolved"} |')
  lines += ['', '**Verdicts**', ''] + [f'- {verdict_line(c, result)}' for c in result['rows']]
  mde = mde_line(result)
  if mde:
    lines += ['', f'**How many samples.** {mde}']
  return '\n'.join(lines) + '\n'


def write_csv(result: dict, path: str) -> None:
  """comparisons.csv: one row per comparison and figure."""
  fields = ['curve', 'model', 'reference', 'role', 'figure', 'samples', 'seeds_model',
            'seeds_reference', 'mean_model', 'mean_reference', 'mean_diff', 'ci_low', 'ci_high',
            'wilcoxon_p', 'wilcoxon_p_holm', 't_p', 'cohens_dz', 'diff_sd', 'mde',
            'samples_needed', 'resolved']
  reports.write_csv(path, fields, [
      [result['curve'], c['model'], c['reference'], c['role'], c['figure'], c['n'],
       c['seeds'][1], c['seeds'][0], f'{c["mean_b"]:.6g}', f'{c["mean_a"]:.6g}',
       f'{c["mean_diff"]:.6g}', f'{c["mean_diff_ci"][0]:.6g}', f'{c["mean_diff_ci"][1]:.6g}',
       f'{c["wilcoxon_p"]:.4g}', f'{c["wilcoxon_p_holm"]:.4g}', f'{c["t_p"]:.4g}',
       f'{c["cohens_dz"]:.4g}', f'{c["diff_sd"]:.6g}', f'{c["mde"]:.6g}',
       f'{c["samples_needed"]:.0f}', c['resolved']] for c in result['rows']])
