"""Prints Markdown tables comparing the robustness reports of separate runs (a sweep writes the
same tables itself, in its summary.md). Each argument is a run folder, or LABEL=FOLDER to name it.

  python experiments/compare.py runs/hippocampus/std runs/hippocampus/amat
  python experiments/compare.py 'STD(BCE)=runs/ceph/bce/std' 'STD(Dice)=runs/ceph/dice/std'
"""

from __future__ import annotations

import os
import sys

from robust_med import sweep

# Secondary metrics printed as tables of their own when the reports have them.
SECONDARY = ('tvdi', 'sdr_2mm')

if __name__ == '__main__':
  runs = [tuple(a.split('=', 1)) if '=' in a else (os.path.basename(os.path.normpath(a)), a)
          for a in sys.argv[1:]]
  rows = sweep.rows_for(runs)
  if not rows:
    raise SystemExit('None of these folders has a robustness.json: run robust_med.main first.')
  print(sweep.markdown(rows))
  for metric in SECONDARY:
    if metric in rows[0]['report']['results'][0]:
      print(sweep.markdown(sweep.rows_for(runs, metric)))
