"""The 3-D vs 2-D table of `volumes_study.sh`: per model, per-volume ADI and HD95 under the
worst case at each L2 budget (per volume), ε₅₀ (the budget that halves the clean ADI, linear
between the grid's levels: robustness per unit of budget in one figure) and ADI under VAFA.

  python experiments/volumes_table.py runs/volumes_study          # 3d/<run>, 2d/<run>
  python experiments/volumes_table.py LABEL=path/robustness.json ...

Reports whose budgets are not in the same units (the 2-D evaluation with units.budgets=model, the
3-D one in the model's own units) or whose grids differ are refused.
"""
import glob
import json
import os
import sys


def reports(args):
  if len(args) == 1 and os.path.isdir(args[0]):
    paths = sorted(glob.glob(os.path.join(args[0], '[23]d', '*', 'robustness.json')))
    return [(os.path.relpath(os.path.dirname(p), args[0]), p) for p in paths]
  return [tuple(a.split('=', 1)) for a in args]


def eps_50(curve) -> str:
  """The budget at which the worst-case ADI falls to half its clean value, linear between the
  grid's levels; '> ε_max' when it never does."""
  half = curve[0]['adi'] / 2
  for lo, hi in zip(curve, curve[1:]):
    if hi['adi'] <= half:
      t = (lo['adi'] - half) / (lo['adi'] - hi['adi'])
      return f'{lo["eps"] + t * (hi["eps"] - lo["eps"]):.1f}'
  return f'> {curve[-1]["eps"]:g}'


def main(args):
  rows, grid, levels = [], None, None
  for label, path in reports(args):
    with open(path) as f:
      report = json.load(f)
    curve = report['curves']['worst-case']
    eps = [round(r['eps'], 6) for r in curve]
    if grid is None:
      grid = eps
    if eps != grid:
      sys.exit(f'error: {path} has the budgets {eps}, not {grid}: evaluate every model on one grid '
               '(volumes_study.sh does).')
    levels = levels or [r['q_max'] for r in report.get('frequency', {}).get('results', [])
                        if r['q_max']]
    vafa = {r['q_max']: r['adi'] for r in report.get('frequency', {}).get('results', [])}
    rows.append([label, report.get('num_samples', '')] +
                [f'{r["adi"]:.3f} / {r["hd95_mm"]:.1f}' for r in curve] + [eps_50(curve)] +
                [' / '.join(f'{vafa[q]:.3f}' for q in sorted(vafa) if q) or '—'])
  if not rows:
    sys.exit('error: no robustness.json found: run experiments/volumes_study.sh first.')
  head = (['model', 'volumes'] + [f'ε = {e:g}' for e in grid] +
          ['ε₅₀', 'VAFA ADI (q_max ' + ', '.join(f'{q:g}' for q in levels) + ')'])
  print('| ' + ' | '.join(head) + ' |')
  print('|' + '---|' * len(head))
  for row in rows:
    print('| ' + ' | '.join(str(c) for c in row) + ' |')
  print('\nCells: worst-case ADI / HD95 (mm) per volume; ε is L2 over each whole volume; ε₅₀ '
        'the budget at which the worst-case ADI is half the clean one.')
  patch = (sorted(glob.glob(os.path.join(args[0], '3d_patch', '*', 'robustness.json')))
           if len(args) == 1 and os.path.isdir(args[0]) else [])
  if patch:
    print('\n| 3-D model | attack | ' + ' | '.join(f'ε = {e:g}' for e in grid) + ' |')
    print('|' + '---|' * (2 + len(grid)))
  for path in patch:
    with open(path) as f:
      curves = json.load(f)['curves']
    for name in [n for n in curves if n.startswith(('pgd-', 'patch-pgd-'))]:
      label = os.path.basename(os.path.dirname(path))
      print(f'| {label} | {name} | ' + ' | '.join(f'{r["adi"]:.3f}' for r in curves[name]) + ' |')
  if patch:
    print('\nCells: ADI per volume under PGD through the sliding window and under the per-patch '
          'PGD (each tile attacked alone, the same per-volume budget).')


if __name__ == '__main__':
  main(sys.argv[1:])
