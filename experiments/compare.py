"""Prints a Markdown table comparing the robustness reports of several runs.

  python experiments/compare.py runs/hippocampus/std runs/hippocampus/amat
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def load(workdir: str) -> dict:
  with open(os.path.join(workdir, 'robustness.json')) as f:
    return json.load(f)


def table(workdirs: list[str], metric: str | None = None) -> str:
  reports = [load(w) for w in workdirs]
  metric = metric or reports[0]['metric']
  eps = [r['eps'] for r in reports[0]['results']]
  for w, r in zip(workdirs, reports):
    if [x['eps'] for x in r['results']] != eps or r['attack'] != reports[0]['attack']:
      raise SystemExit(f'{w} was evaluated with another attack or grid: rerun '
                       'python -m robust_med.evaluate with the same settings.')
  a = reports[0]['attack']
  lines = [f'{metric.upper()} under {a["name"]} ({a["norm"].upper()}, step {a["step_size"]}), '
           f'{reports[0]["num_samples"]} samples', '',
           '| run | ' + ' | '.join(f'ε={e:g}' for e in eps) + ' | mean, all ε | mean, ε>0 |',
           '|---' * (len(eps) + 3) + '|']
  for w, r in zip(workdirs, reports):
    values = [x[metric] for x in r['results']]
    lines.append(f'| {r.get("method", os.path.basename(w))} | '
                 + ' | '.join(f'{v:.3f}' for v in values)
                 + f' | {np.mean(values):.3f} | {np.mean([v for e, v in zip(eps, values) if e > 0]):.3f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  print(table(sys.argv[1:]))
  if 'tvdi' in load(sys.argv[1])['results'][0]:
    print()
    print(table(sys.argv[1:], 'tvdi'))
