"""Start-up and step time of the README demo's training with TensorBoard events on and off.

  python benchmarks/tensorboard_overhead.py                       # the demo config, 3 epochs
  python benchmarks/tensorboard_overhead.py --epochs=2 --repeats=3

Runs the demo's training (`configs/prostate_amat.py:synthetic`, AMAT) in this process, with
`config.log.tensorboard` on and off in turn (on, off, on, off, ...; a first untimed run warms the
compilation cache, so neither setting pays compilation), and reports per setting the median over
the repeats of: start-up (building the `Trainer`: data, model, mesh and, when on, the event
writer), the step time (seconds per step of every logged interval but the first, from
`metrics.jsonl`), the epoch time after the first epoch, and the whole `train()` call, which
includes the event writes at each log, each epoch's histogram and the flushes. The ratio on ÷ off
is the figure; noise is the spread between repeats of one setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

CONFIG = 'configs/prostate_amat.py:synthetic'


def one_run(config, workdir: str) -> dict:
  from robust_med import train
  t = time.perf_counter()
  trainer = train.Trainer(config, workdir)
  startup = time.perf_counter() - t
  t = time.perf_counter()
  trainer.train()
  train_s = time.perf_counter() - t
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  steps = [1 / r['steps_per_second'] for r in records if r['type'] == 'train'][1:]
  epochs = [r['seconds'] for r in records if r['type'] == 'epoch'][1:]
  return {'startup_s': startup, 'step_s': statistics.median(steps),
          'epoch_s': statistics.median(epochs), 'train_s': train_s,
          'tb_files': sum(len(fs) for _, _, fs in os.walk(os.path.join(workdir, 'tb')))}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=CONFIG)
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default='benchmarks/results/cpu/tensorboard_overhead.json')
  args = parser.parse_args()
  base = common.load_config(args.config)
  base.unlock()
  base.num_epochs, base.progress_bar = args.epochs, False
  base.eval.every_epochs = 0  # the training loop alone; examples images ride on the curve
  results = {'on': [], 'off': []}
  with tempfile.TemporaryDirectory() as tmp:
    order = ['on'] + ['on', 'off'] * args.repeats  # the first run warms the compile cache
    for i, setting in enumerate(order):
      config = base.copy_and_resolve_references()
      config.log.tensorboard = setting == 'on'
      row = one_run(config, os.path.join(tmp, f'{i}_{setting}'))
      print(f'{setting}: ' + ', '.join(f'{k} {v:.4g}' for k, v in row.items()), flush=True)
      if i:
        results[setting].append(row)
  med = {s: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
         for s, rows in results.items()}
  spread = {s: {k: (min(r[k] for r in rows), max(r[k] for r in rows)) for k in rows[0]}
            for s, rows in results.items()}
  rows = [{'figure': k, 'on (median)': med['on'][k], 'off (median)': med['off'][k],
           'on ÷ off': med['on'][k] / med['off'][k] if med['off'][k] else None,
           'off range': f'{spread["off"][k][0]:.4g}–{spread["off"][k][1]:.4g}'}
          for k in ('startup_s', 'step_s', 'epoch_s', 'train_s')]
  print(common.table(rows, list(rows[0])))
  common.write_json(args.json, {'config': args.config, 'epochs': args.epochs,
                               'repeats': args.repeats, 'runs': results, 'median': med,
                               'environment': common.environment()})


if __name__ == '__main__':
  main()
