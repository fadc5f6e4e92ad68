"""The segmentation demo trained from memory and from records through grain: the same final
state, bit for bit (issue 13's "the TFDS/grain path trains the segmentation demo to the same final
parameters as the in-memory path"; tests/test_records.py checks a tiny AMAT run in CI).

  python experiments/grain_vs_memory.py --workdir=/tmp/grain_vs_memory [--config=...]

Prepares the records of the config's dataset, trains the config (the demo: AMAT with an STD
warm-up for ξ) once with config.data.pipeline = 'memory' and once with 'grain', without the
evaluation after training, and compares every array of the final train states (parameters,
optimizer state, margins, ξ). Each run resumes from its workdir when killed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from robust_med import sharding, sweep, train  # noqa: E402
from robust_med.data import records  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/prostate_amat.py:synthetic')
  p.add_argument('--workdir', required=True)
  p.add_argument('--worker_count', type=int, default=1, help='grain worker processes')
  p.add_argument('--json', default='')
  args = p.parse_args()
  base = sweep.load_config_file(args.config)
  sharding.configure_host_devices(base.mesh.host_devices, base.batch_size)
  folder = os.path.join(args.workdir, 'records')
  counts = records.prepare(base, folder)
  states, seconds = {}, {}
  for pipe in ('memory', 'grain'):
    config = sweep.load_config_file(args.config)
    config.data.pipeline, config.data.records_dir = pipe, folder
    config.data.worker_count = args.worker_count if pipe == 'grain' else 0
    config.progress_bar = False
    t = time.perf_counter()
    states[pipe] = jax.device_get(train.Trainer(config, os.path.join(args.workdir, pipe)).train())
    seconds[pipe] = time.perf_counter() - t
  leaves = {k: jax.tree_util.tree_flatten_with_path(s)[0] for k, s in states.items()}
  differ = [jax.tree_util.keystr(path) for (path, a), (_, b)
            in zip(leaves['memory'], leaves['grain'])
            if not np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)]
  result = {'config': args.config, 'records': counts, 'devices': len(jax.devices()),
            'steps': int(states['memory'].step), 'arrays': len(leaves['memory']),
            'arrays_that_differ': differ, 'bit_equal': not differ,
            'train_seconds': seconds, 'grain_worker_count': args.worker_count,
            'margins_moved': bool(np.ptp(np.asarray(states['memory'].margins)) > 0)}
  print(json.dumps(result, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  main()
