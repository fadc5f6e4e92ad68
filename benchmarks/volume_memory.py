"""Peak memory of training the 3-D demo from memory and from records, with 1× and 8× the volumes.

  python benchmarks/volume_memory.py                               # the demo's 16×24×16 grid
  python benchmarks/volume_memory.py --volume_shape=32,48,32       # volumes 8× larger

Each (data size, pipeline) trains in a fresh process: `configs/hippocampus3d_std.py:synthetic`
with data.num_train = 64 × scale, for --steps steps (the same for every size: the memory at stake
is the data's, not the run's length), and reports its own peak resident set size (ru_maxrss).
The records are prepared beforehand in another process, so their writing is not measured. The
bound this benchmark states and checks: from records, 8× the volumes raise the peak by less than
--bound_mb (the prefetched batches do not depend on the number of volumes); from memory, the peak
grows with the data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

CONFIG = 'configs/hippocampus3d_std.py:synthetic'
BASE_VOLUMES = 64


def child(args) -> None:
  """Trains --steps steps and prints the peak RSS as JSON (run in its own process)."""
  import resource

  import numpy as np

  from robust_med import train
  config = configure(args)
  trainer = train.Trainer(config, args.workdir)
  trainer.total_steps = args.steps
  trainer.train()
  print(json.dumps({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    'in_memory': trainer.train_data is not None,
                    'loss_finite': bool(np.isfinite(trainer.last_loss))}))


def configure(args):
  config = common.load_config(CONFIG)
  config.data.num_train = BASE_VOLUMES * args.scale
  config.data.volume_shape = tuple(int(s) for s in args.volume_shape.split(','))
  config.data.pipeline = args.pipeline
  config.data.records_dir = args.records_dir
  config.eval.every_epochs = 0
  config.progress_bar = False
  return config


def data_mb(args) -> float:
  shape = [int(s) for s in args.volume_shape.split(',')]
  voxels = int(__import__('numpy').prod(shape))
  return BASE_VOLUMES * args.scale * voxels * (4 + 4 + 1) / 2 ** 20  # image, label, in_image


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--volume_shape', default='16,24,16')
  p.add_argument('--steps', type=int, default=8)
  p.add_argument('--scales', default='1,8')
  p.add_argument('--bound_mb', type=float, default=64.0)
  p.add_argument('--out', default='')
  # Internal: one measurement in a child process.
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--prepare', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--scale', type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument('--pipeline', default='memory', help=argparse.SUPPRESS)
  p.add_argument('--records_dir', default='', help=argparse.SUPPRESS)
  p.add_argument('--workdir', default='', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child and args.prepare:
    from robust_med.data import records
    args.pipeline = 'grain'
    records.prepare(configure(args), args.records_dir)
    return None
  if args.child:
    return child(args)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for scale in [int(s) for s in args.scales.split(',')]:
      records_dir = os.path.join(tmp, f'records{scale}')
      base = [sys.executable, __file__, '--volume_shape', args.volume_shape,
              '--scale', str(scale), '--records_dir', records_dir]
      subprocess.run(base + ['--child', '--prepare'], check=True, capture_output=True)
      for pipeline in ('memory', 'grain'):
        out = subprocess.run(base + ['--child', '--pipeline', pipeline, '--steps',
                                     str(args.steps), '--workdir',
                                     os.path.join(tmp, f'run{scale}{pipeline}')],
                             check=True, capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update(scale=scale, pipeline=pipeline, volumes=BASE_VOLUMES * scale,
                   data_mb=data_mb(argparse.Namespace(volume_shape=args.volume_shape,
                                                      scale=scale)))
        rows.append(row)
        print(json.dumps(row), flush=True)
  print(common.table(rows, ['pipeline', 'volumes', 'data_mb', 'peak_rss_mb', 'in_memory']))
  lo, hi = min(r['scale'] for r in rows), max(r['scale'] for r in rows)
  peak = {(r['pipeline'], r['scale']): r['peak_rss_mb'] for r in rows}
  growth = {k: peak[(k, hi)] - peak[(k, lo)] for k in ('memory', 'grain')}
  data_growth = rows[-1]['data_mb'] - rows[0]['data_mb']
  verdict = growth['grain'] < args.bound_mb
  print(f'{hi}× the volumes ({data_growth:.1f} MB more data): peak RSS +{growth["memory"]:.1f} MB '
        f'from memory, +{growth["grain"]:.1f} MB from records (bound {args.bound_mb:g} MB: '
        f'{"held" if verdict else "NOT held"})')
  if args.out:
    common.write_json(args.out, {'config': CONFIG, 'volume_shape': args.volume_shape,
                                 'steps': args.steps, 'rows': rows, 'growth_mb': growth,
                                 'data_growth_mb': data_growth, 'bound_mb': args.bound_mb,
                                 'bound_held': verdict})


if __name__ == '__main__':
  main()
