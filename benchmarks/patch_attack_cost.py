"""The per-patch attack's cost against the whole-volume attack (issue 32): wall time of PGD-<steps>
through the sliding window and of the per-patch PGD on the same volumes, with the model passes
each makes per step, at two volume sizes.

  python benchmarks/patch_attack_cost.py
  python benchmarks/patch_attack_cost.py --volumes=48x64x48,96x128x96 --steps=5 --batch=2

The model is the `configs/hippocampus3d_amat.py:cpu` 3-D U-Net (base width 8, depth 3, patch
32×48×32), freshly initialised (the cost does not depend on the weights), on random volumes (nor
on the content). Each attack runs once to compile, then is timed (best of --repeats).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from robust_med import attacks, evaluate, patchwise, sharding  # noqa: E402
from robust_med.models.sliding import SlidingWindow  # noqa: E402
from robust_med.models.unet import UNet, unet_features  # noqa: E402
from robust_med.sliding_window import window_starts  # noqa: E402
from robust_med.tasks import get_task_class  # noqa: E402


def run(config, shape: tuple[int, ...], steps: int, batch: int, repeats: int) -> list[dict]:
  task = get_task_class(config.task)(config)
  patch = tuple(config.data.patch_size)
  m = config.model
  model = SlidingWindow(UNet(num_classes=3, features=unet_features(m.base_width, m.depth,
                                                                   m.max_width)),
                        patch, overlap=m.sliding_overlap, windows_per_batch=m.windows_per_batch)
  rng = np.random.default_rng(0)
  arrays = {'image': rng.normal(size=(batch, *shape, 1)).astype(np.float32),
            'label': rng.integers(0, 3, size=(batch, *shape)).astype(np.int32),
            'in_image': np.ones((batch, *shape), bool), 'id': np.arange(batch)}
  params = model.init(jax.random.key(0), jnp.asarray(arrays['image'][:1]))['params']
  mesh = sharding.make_mesh(0)
  pgd = attacks.PGDSettings(steps=steps, norm='l2')
  windows = math.prod(len(window_starts(s, p, m.sliding_overlap)) for s, p in zip(shape, patch))
  tiles = patchwise.tiles_per_sample(shape, patch)
  rows = []
  for attack, passes in ((pgd, windows), (patchwise.PerPatch(pgd), tiles)):
    ev = evaluate.Evaluator(task, model, mesh, attack, batch_size=batch, progress=False)
    b = sharding.put_batch(arrays, mesh)
    once = lambda: jax.block_until_ready(ev.perturb(params, b, 5.0, None))
    once()  # compile
    seconds = common.best_time(once, repeats, warmup=0)
    rows.append({'volume': 'x'.join(map(str, shape)), 'patch': 'x'.join(map(str, patch)),
                 'attack': ev.attack.describe()['name'], 'passes_per_step': passes,
                 'voxels_per_step': passes * math.prod(patch),
                 'seconds': seconds, 's_per_volume_step': seconds / (batch * steps)})
  for r in rows:
    r['x_whole_volume'] = r['seconds'] / rows[0]['seconds']
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/hippocampus3d_amat.py:cpu')
  p.add_argument('--volumes', default='48x64x48,96x128x96')
  p.add_argument('--steps', type=int, default=5)
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--json', default='')
  args = p.parse_args()
  sharding.configure_host_devices(0)
  config = common.load_config(args.config)
  rows = []
  for spec in args.volumes.split(','):
    rows += run(config, tuple(int(v) for v in spec.split('x')), args.steps, args.batch,
                args.repeats)
  print(common.table(rows, ['volume', 'patch', 'attack', 'passes_per_step', 'seconds',
                            's_per_volume_step', 'x_whole_volume']), flush=True)
  common.write_json(args.json, {'benchmark': 'patch_attack_cost', 'steps': args.steps,
                                'batch': args.batch, 'rows': rows})


if __name__ == '__main__':
  main()
