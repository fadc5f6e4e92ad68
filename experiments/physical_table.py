"""Markdown table of a physical-perturbation study: one row per evaluated model folder (each holding
the `physical.json`, `shift.json` and `robustness.json` that `python -m robust_med.evaluate` wrote
with `--config.physical.kinds` and `--config.shift.corruptions`).

  python experiments/physical_table.py --pixel_eps=1,3,5 \\
      STD=experiments/results/physical/hippocampus/std \\
      AdvBias=experiments/results/physical/hippocampus/advbias

Columns: clean; per physical kind the worst case (attack or random draw, per sample) at each budget,
and the random draws alone at the largest; the pixel attacks' worst case at `--pixel_eps` (in the
report's stated units: `eps_paper` where the budgets were stated for the paper's input); the shift
suite's mean over its corruptions relative to clean; the convergence check per kind (✓ / ✗).
"""

import argparse
import json
import os
import sys


def _load(folder, name):
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _at(curve, eps, key='eps'):
  for row in curve:
    if abs(row.get(key, row['eps']) - eps) < 1e-9:
      return row
  return None


def rows(models, pixel_eps):
  header, lines = None, []
  for name, folder in models:
    physical, shift = _load(folder, 'physical.json'), _load(folder, 'shift.json')
    pixel = _load(folder, 'robustness.json')
    if physical is None:
      sys.exit(f'error: {folder} has no physical.json: evaluate it with --config.physical.kinds')
    metric = physical['metric']
    cells, head = [], ['model']
    first = next(iter(physical['kinds'].values()))
    cells.append(f'{first["curves"]["worst-case"][0][metric]:.3f}')
    head.append(f'clean ({metric})')
    checks = []
    for kind, r in physical['kinds'].items():
      worst = r['curves']['worst-case']
      for row in worst[1:]:
        head.append(f'{kind} {row["eps"]:g}')
        cells.append(f'{row[metric]:.3f}')
      rand = next(n for n in r['curves'] if '-random-' in n)
      head.append(f'{kind} {worst[-1]["eps"]:g}, random')
      cells.append(f'{r["curves"][rand][-1][metric]:.3f}')
      converged = {c['name']: c['passed'] for c in r['checks']}.get('stronger_attack_not_better')
      checks.append(f'{kind} {"—" if converged is None else ("✓" if converged else "✗")}')
    if pixel_eps:
      curves = (pixel or {}).get('curves') or {}
      # The worst case over the attacks; with one attack, its curve.
      curve = curves.get('worst-case') or next(iter(curves.values()), [])
      key = 'eps_paper' if curve and 'eps_paper' in curve[0] else 'eps'
      for eps in pixel_eps:
        head.append(f'pixel {eps:g}')
        row = _at(curve, eps, key)
        cells.append('—' if row is None else f'{row[metric]:.3f}')
    head.append('shift suite (relative)')
    cells.append('—' if not shift or 'relative_robustness' not in shift
                 else f'{shift["relative_robustness"]:.3f}')
    head.append('converged')
    cells.append(', '.join(checks))
    header = header or head
    if head != header:
      sys.exit(f'error: {folder} was evaluated with other kinds or budgets than the first folder')
    lines.append([name] + cells)
  out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  out += ['| ' + ' | '.join(line) + ' |' for line in lines]
  return '\n'.join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('models', nargs='+', help='NAME=FOLDER, one per row')
  parser.add_argument('--pixel_eps', default='', help='pixel budgets to show, comma-separated')
  args = parser.parse_args(argv)
  models = []
  for m in args.models:
    if '=' not in m:
      sys.exit(f'error: {m!r} is not NAME=FOLDER: e.g. STD=runs/phys/std')
    models.append(tuple(m.rsplit('=', 1)))  # a name may hold '=' (SAT ε=5)
  pixel_eps = [float(e) for e in args.pixel_eps.split(',') if e]
  print(rows(models, pixel_eps))


if __name__ == '__main__':
  main()
