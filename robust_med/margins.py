"""Margin telemetry for methods with per-sample margins (AMAT): statistics and figures.

Margin telemetry for methods with per-sample margins (AMAT): are the margins still moving?

Every logged training step records statistics of all N margins (`margin_stats`); every epoch
records a histogram snapshot (`histogram`); `plot` draws both into margins.png next to the report;
`final_stats` reads the last logged statistics back (the sweep's summary shows them).
"""

from __future__ import annotations

import json
import os

import numpy as np

STATS = ('mean', 'median', 'p10', 'p90', 'max')


def margin_stats(margins: np.ndarray) -> dict[str, float]:
  """{'margin/mean', 'margin/median', 'margin/p10', 'margin/p90', 'margin/min', 'margin/max'} of
  all margins."""
  m = np.asarray(margins, np.float64)
  p10, median, p90 = np.percentile(m, [10, 50, 90])
  return {'margin/mean': float(m.mean()), 'margin/median': float(median),
          'margin/p10': float(p10), 'margin/p90': float(p90), 'margin/min': float(m.min()),
          'margin/max': float(m.max())}


def histogram(margins: np.ndarray, bins: int = 30) -> dict[str, list[float]]:
  """A histogram snapshot of all margins: {'counts': [...], 'edges': [...]} (bins + 1 edges)."""
  counts, edges = np.histogram(np.asarray(margins, np.float64), bins=bins)
  return {'counts': counts.tolist(), 'edges': edges.tolist()}


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl` ([] when there is none)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def final_stats(workdir: str) -> dict[str, float]:
  """The margin statistics of the last logged training step of the run in `workdir` (with the
  step and the last step's enlarged and refined fractions); {} for runs without margins."""
  train = [r for r in read_metrics(workdir) if r.get('type') == 'train' and 'margin/mean' in r]
  if not train:
    return {}
  last = train[-1]
  keys = [f'margin/{s}' for s in STATS] + ['grow_fraction', 'refine_fraction', 'refine_delta']
  return {'step': last['step'], **{k: last[k] for k in keys if k in last}}


def plot(workdir: str, path: str) -> bool:
  """margins.png: the margin histogram at the end of each epoch, and the mean, median, p10-p90
  band and max of the margins against the training step. False (nothing written) when the run
  logged no margins."""
  records = read_metrics(workdir)
  train = [r for r in records if r.get('type') == 'train' and 'margin/mean' in r]
  snapshots = [r for r in records if r.get('type') == 'margins']
  if not train:
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from robust_med.reports import save_figure
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
  colors = plt.get_cmap('viridis')(np.linspace(0, 1, max(len(snapshots), 1)))
  for color, snap in zip(colors, snapshots):
    edges = np.asarray(snap['edges'])
    left.stairs(snap['counts'], edges, color=color, label=f'epoch {snap["epoch"]}')
  left.set_xlabel('margin E(i)')
  left.set_ylabel('samples')
  left.set_title('margin histogram at the end of each epoch', fontsize=9)
  if snapshots:
    left.legend(fontsize=6, ncol=2)
  steps = [r['step'] for r in train]
  right.fill_between(steps, [r['margin/p10'] for r in train], [r['margin/p90'] for r in train],
                     alpha=0.25, label='p10-p90')
  for key, style in (('mean', '-'), ('median', '--'), ('max', ':')):
    right.plot(steps, [r[f'margin/{key}'] for r in train], style, label=key)
  right.set_xlabel('training step')
  right.set_ylabel('margin')
  right.set_title('margins during training', fontsize=9)
  right.legend(fontsize=7)
  for ax in (left, right):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path)
  return True
