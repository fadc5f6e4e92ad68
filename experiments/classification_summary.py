"""The classification comparison's table: per model, clean metrics, worst-case accuracy under
PGD/APGD at each noise level, mean corruption accuracy (shift.json), the cross-resolution set,
the masking checks — and which of RTDA's three claims hold against STD.

  python experiments/classification_summary.py runs/busi [--l2=eval_l2] \
      [--extra='RTDA ε=2/255=runs/busi_extra/rtda_eps2'] > runs/busi/table.md

Reads `<sweep>/sweep.json` for the runs (in order) and each run's robustness.json and shift.json
(and, with --l2, `<run>/<l2>/robustness.json` from robust_med.evaluate with the L2 grid).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def _load(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def worst(report: dict, metric: str) -> list[tuple[float, float]]:
  rows = report['curves'].get('worst-case') or report['results']
  return [(r['eps'], r[metric]) for r in rows]


def model_row(label: str, run_dir: str, l2: str) -> dict | None:
  rob = _load(os.path.join(run_dir, 'robustness.json'))
  if rob is None:
    return None
  shift = _load(os.path.join(run_dir, 'shift.json')) or {}
  clean = rob['results'][0]
  wc = worst(rob, 'accuracy')
  row = {'label': label, 'clean_acc': clean['accuracy'], 'clean_bacc': clean['balanced_accuracy'],
         'clean_auc': clean['auc'], 'worst': wc,
         'mean_adv_acc': float(np.mean([a for e, a in wc if e > 0])),
         'mca': shift.get('mean_corruption', {}).get('accuracy', float('nan')),
         'rel': shift.get('relative_robustness', float('nan')),
         'shifted': {k: v['accuracy'] for k, v in shift.get('shifted_sets', {}).items()},
         'checks': f"{sum(c['passed'] for c in rob.get('checks', []))}/"
                   f"{len(rob.get('checks', []))}",
         'failed': [c['name'] for c in rob.get('checks', []) if not c['passed']]}
  if l2:
    rl2 = _load(os.path.join(run_dir, l2, 'robustness.json'))
    if rl2:
      row['worst_l2'] = worst(rl2, 'accuracy')
  return row


def _eps(e: float, norm: str) -> str:
  return f'{e * 255:g}/255' if norm == 'linf' and e else f'{e:g}'


def table(rows: list[dict]) -> str:
  eps = [e for e, _ in rows[0]['worst'] if e > 0]
  head = (['model', 'clean acc', 'bal. acc', 'AUC'] + [f'acc ε={_eps(e, "linf")}' for e in eps]
          + ['mean adv. acc', 'mean corr. acc', 'rel. robustness'])
  shifted = sorted({k for r in rows for k in r['shifted']})
  head += [f'acc: {k}' for k in shifted]
  l2eps = next(([e for e, _ in r['worst_l2'] if e > 0] for r in rows if r.get('worst_l2')), [])
  head += [f'acc L2 ε={e:g}' for e in l2eps] + ['checks']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    cells = [r['label'], f"{r['clean_acc']:.3f}", f"{r['clean_bacc']:.3f}", f"{r['clean_auc']:.3f}"]
    cells += [f'{a:.3f}' for e, a in r['worst'] if e > 0]
    cells += [f"{r['mean_adv_acc']:.3f}", f"{r['mca']:.3f}", f"{r['rel']:.3f}"]
    cells += [f"{r['shifted'].get(k, float('nan')):.3f}" for k in shifted]
    l2 = dict(r.get('worst_l2', []))  # A run whose L2 evaluation has not run yet: n/a.
    cells += [f'{l2[e]:.3f}' if e in l2 else 'n/a' for e in l2eps]
    cells += [r['checks'] + (f" (failed: {', '.join(r['failed'])})" if r['failed'] else '')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _rel(a: float, b: float) -> str:
  return f'{100 * (a / b - 1):+.0f} % relative' if b else 'n/a relative'


def claims(rows: list[dict]) -> str:
  """RTDA's three claims, checked against STD (and the best baseline) on these runs, for every
  RTDA row (the preset's and any --extra one whose label starts with 'RTDA')."""
  by = {r['label']: r for r in rows}
  rtdas = [r for r in rows if r['label'].startswith('RTDA')]
  if not rtdas or 'STD' not in by:
    return '(RTDA or STD missing: no claims checked)'
  std = by['STD']
  baselines = [r for r in rows if r['label'] not in ('STD', 'AMAT')
               and not r['label'].startswith('RTDA')]
  best_adv = max(baselines, key=lambda r: r['mean_adv_acc'], default=None)
  best_mca = max(baselines, key=lambda r: r['mca'], default=None)
  out = []
  for rtda in rtdas:
    name = rtda['label']
    masking = (f" — but its masking checks failed ({', '.join(rtda['failed'])}), so this "
               'overstates its robustness' if rtda['failed'] else '')
    out += [f"{name}:",
            f"1. clean accuracy above 94 %: {100 * rtda['clean_acc']:.1f} % "
            f"({'holds' if rtda['clean_acc'] > 0.94 else 'does not hold'}; STD "
            f"{100 * std['clean_acc']:.1f} %).",
            f"2. adversarial robustness +18.7 % on average: mean worst-case accuracy over the "
            f"nonzero L∞ budgets {100 * rtda['mean_adv_acc']:.1f} % vs STD "
            f"{100 * std['mean_adv_acc']:.1f} % "
            f"({100 * (rtda['mean_adv_acc'] - std['mean_adv_acc']):+.1f} points, "
            f"{_rel(rtda['mean_adv_acc'], std['mean_adv_acc'])})"
            + (f"; best baseline {best_adv['label']} {100 * best_adv['mean_adv_acc']:.1f} %"
               if best_adv else '') + masking + '.',
            f"3. out-of-distribution accuracy +9.3 %: mean corruption accuracy "
            f"{100 * rtda['mca']:.1f} % vs STD {100 * std['mca']:.1f} % "
            f"({100 * (rtda['mca'] - std['mca']):+.1f} points, {_rel(rtda['mca'], std['mca'])})"
            + (f"; best baseline {best_mca['label']} {100 * best_mca['mca']:.1f} %"
               if best_mca else '') + '.']
  return '\n'.join(out)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('sweep')
  p.add_argument('--l2', default='', help='subfolder of each run with the L2-grid report')
  p.add_argument('--extra', action='append', default=[], metavar='LABEL=DIR',
                 help='a run outside the sweep to add as a row (repeatable)')
  args = p.parse_args()
  plan = _load(os.path.join(args.sweep, 'sweep.json'))
  runs = [(r['label'], os.path.join(args.sweep, r['name'])) for r in plan['runs']]
  runs += [tuple(e.rsplit('=', 1)) for e in args.extra]  # The label may hold '='.
  rows = [model_row(label, run_dir, args.l2) for label, run_dir in runs]
  rows = [r for r in rows if r]
  if not rows:
    print('No finished runs.')
    return
  print(table(rows))
  print()
  print(claims(rows))


if __name__ == '__main__':
  main()
