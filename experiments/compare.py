"""Prints Markdown tables comparing the robustness reports of separate runs (a sweep writes the
same tables itself, in its summary.md). Each argument is a run folder, or LABEL=FOLDER to name it
(split at the last '=').

  python experiments/compare.py runs/hippocampus/std runs/hippocampus/amat
  python experiments/compare.py 'STD(BCE)=runs/ceph/bce/std' 'STD(Dice)=runs/ceph/dice/std'

The tables end with the paired comparisons against STD (the run labelled STD, or the only STD
run) and the best SAT, with their verdicts, when the reports hold per-sample values.
With --out=DIR it also writes DIR/summary.md (the same tables), DIR/curves.png (primary metric
vs noise, one line per run), DIR/curves_<metric>.png for each secondary metric and
DIR/training.png (learning curves and margins, where the runs logged them).
"""

from __future__ import annotations

import os
import sys

from robust_med import sweep, verdicts

# Secondary metrics printed as tables of their own when the reports have them.
SECONDARY = ('tvdi', 'sdr_2mm', 'map50_95')

if __name__ == '__main__':
  out = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--out=')]
  # LABEL=FOLDER splits at the last '=': labels such as 'SAT ε=1' may hold one, folders do not.
  runs = [tuple(a.rsplit('=', 1)) if '=' in a else (os.path.basename(os.path.normpath(a)), a)
          for a in sys.argv[1:] if not a.startswith('--out=')]
  rows = sweep.rows_for(runs)
  if not rows:
    raise SystemExit('None of these folders has a robustness.json: run robust_med.main first.')
  tables = [sweep.markdown(rows, verdicts.comparisons(rows))]
  secondary = [(m, sweep.rows_for(runs, m)) for m in SECONDARY
               if m in rows[0]['report']['results'][0]]
  tables += [sweep.markdown(r) for _, r in secondary]
  print('\n'.join(tables))
  if out:
    os.makedirs(out[-1], exist_ok=True)
    with open(os.path.join(out[-1], 'summary.md'), 'w') as f:
      f.write('\n'.join(tables))
    sweep.plot(rows, os.path.join(out[-1], 'curves.png'))
    for metric, r in secondary:
      sweep.plot(r, os.path.join(out[-1], f'curves_{metric}.png'))
    sweep.plot_training(runs, rows[0]['metric'], os.path.join(out[-1], 'training.png'))
