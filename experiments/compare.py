"""Prints Markdown tables comparing the robustness reports of separate runs (a sweep writes the
same tables itself, in its summary.md).

  python experiments/compare.py runs/hippocampus/std runs/hippocampus/amat
"""

from __future__ import annotations

import os
import sys

from robust_med import sweep

if __name__ == '__main__':
  runs = [(os.path.basename(os.path.normpath(w)), w) for w in sys.argv[1:]]
  rows = sweep.rows_for(runs)
  if not rows:
    raise SystemExit('None of these folders has a robustness.json: run robust_med.main first.')
  print(sweep.markdown(rows))
  if 'tvdi' in rows[0]['report']['results'][0]:  # Segmentation: the total Dice too.
    print(sweep.markdown(sweep.rows_for(runs, 'tvdi')))
