"""Copies a sweep's evidence into experiments/results: the plan, every finished run's report,
config and training log (compact JSON, no checkpoints) and the summaries.

  python experiments/collect_runs.py SWEEP_DIR DEST [SUFFIX]

With SUFFIX (e.g. `_seed2`) the runs of a one-seed sweep trained with `--config.seed=2` join a
multi-seed sweep's folder under the names `--seeds` gives them (`std` → `std_seed2`), its plan
and summaries left as they are; then rewrite the summary from everything there:
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


if __name__ == '__main__':
  main(*sys.argv[1:])
