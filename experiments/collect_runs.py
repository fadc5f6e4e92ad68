"""Copies a sweep's evidence into experiments/results: the plan, every finished run's report,
config and training log (compact JSON, no checkpoints) and the summaries.

  python experiments/collect_runs.py SWEEP_DIR DEST [SUFFIX]

With SUFFIX (e.g. `_seed2`) the runs of a one-seed sweep trained with `--config.seed=2` join a
multi-seed sweep's folder under the names `--seeds` gives them (`std` → `std_seed2`), and their
entries join its plan (`sweep.json`) under those names with their training seed (`config.seed`;
a one-seed plan's own entries get theirs too, so seed 0's one-seed sweep can start the folder);
its summaries are left as they are: rewrite them from everything there:
  python -m robust_med.sweep --workdir=DEST --summarize
"""
import json
import os
import shutil
import sys

SUMMARIES = ('sweep.json', 'summary.md', 'summary.csv', 'comparisons.csv', 'curves.png',
             'training.png')


def main(src: str, dst: str, suffix: str = '') -> None:
  os.makedirs(dst, exist_ok=True)
  for name in () if suffix else SUMMARIES:
    if os.path.exists(os.path.join(src, name)):
      shutil.copy(os.path.join(src, name), dst)
  for run in sorted(os.listdir(src)):
    d = os.path.join(src, run)
    if not os.path.isfile(os.path.join(d, 'robustness.json')):
      continue  # unfinished
    out = os.path.join(dst, run + suffix)
    os.makedirs(out, exist_ok=True)
    for name in ('robustness.json', 'config.json'):
      with open(os.path.join(d, name)) as f:
        obj = json.load(f)
      with open(os.path.join(out, name), 'w') as f:
        json.dump(obj, f, separators=(',', ':'))
    shutil.copy(os.path.join(d, 'metrics.jsonl'), out)
    print(f'{d} → {out}')
  if suffix:
    join_plan(src, dst, suffix)


def join_plan(src: str, dst: str, suffix: str) -> None:
  """DEST's plan with SRC's finished runs' entries added (or replaced) as `<name><suffix>`, every
  entry carrying its training seed."""
  paths = [os.path.join(d, 'sweep.json') for d in (src, dst)]
  if not all(os.path.exists(p) for p in paths):
    return
  plans = []
  for p in paths:
    with open(p) as f:
      plans.append(json.load(f))
  theirs, ours = plans
  done = {r for r in os.listdir(src) if os.path.isfile(os.path.join(src, r, 'robustness.json'))}
  renamed = {r['name']: r['name'] + suffix for r in theirs['runs']}
  added = []
  for r in theirs['runs']:
    if r['name'] in done:
      after = [renamed.get(a, a) for a in r.get('after', [])]
      added.append({**r, 'name': renamed[r['name']], 'after': after})
  names = {r['name'] for r in added}
  runs = [r for r in ours['runs'] if r['name'] not in names] + added
  for r in runs:
    r.setdefault('seed', r.get('config', {}).get('seed', ours['shared'].get('seed', 0)))
  with open(paths[1], 'w') as f:
    json.dump({**ours, 'runs': runs}, f, indent=2)


if __name__ == '__main__':
  main(*sys.argv[1:])
