"""robust_med's group and instance norm (`robust_med.models.norm`) against Flax's, in one run.

  python benchmarks/norm_speed.py                      # the three CPU-sized models, 2 host devices
  python benchmarks/norm_speed.py --batch=64 --repeats=3

For the classification ResNet, the segmentation U-Net and the YOLO-style detector of the `:cpu`
configs, each built twice (its norms robust_med's, then Flax's `nn.GroupNorm`/`nn.InstanceNorm`,
the same parameters), times the jitted forward pass and the forward + input gradient (what an
attack step costs) on a batch sharded over the host devices, and prints images per second and the
ratio. The two layers compute the same values (tests/test_norm.py).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from robust_med import sharding  # noqa: E402
from robust_med.models import resnet, unet, yolo  # noqa: E402
from robust_med.tasks import get_task_class  # noqa: E402

CONFIGS = {'classification': 'configs/pneumonia_std.py:cpu',
           'segmentation': 'configs/hippocampus_std.py:cpu',
           'detection': 'configs/bccd_std.py:cpu'}
FLAX_NORMS = [(resnet, 'GroupNorm', nn.GroupNorm), (unet, 'InstanceNorm', nn.InstanceNorm),
              (yolo, 'GroupNorm', nn.GroupNorm)]


def synthetic_input(config, batch: int) -> np.ndarray:
  """A batch of the config's input shape (the values do not change the cost)."""
  config.data.name, config.data.root = 'synthetic', ''
  config.data.num_train, config.data.num_val = 4, 4
  if 'class_names' in config.data:
    config.data.class_names = ()
  task = get_task_class(config.task)(config)
  data, info = task.load_split('val')
  return task, info, np.repeat(data['image'][:1], batch, axis=0)


def time_model(task, info, images, mesh, repeats: int) -> dict:
  model = task.build_model(info)
  params = model.init(jax.random.key(0), images[:1])['params']
  x = sharding.put_batch({'image': images}, mesh)['image']
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  grad = jax.jit(jax.grad(lambda x, p: jnp.sum(jax.tree.leaves(model.apply({'params': p}, x))[0]
                                               ** 2)))
  jax.block_until_ready(forward(params, x))
  jax.block_until_ready(grad(x, params))
  n = len(images)
  return {'forward': n / common.best_time(lambda: jax.block_until_ready(forward(params, x)),
                                          repeats, warmup=0),
          'input_grad': n / common.best_time(lambda: jax.block_until_ready(grad(x, params)),
                                             repeats, warmup=0)}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--heads', default='classification,segmentation,detection')
  p.add_argument('--batch', type=int, default=0, help='images per pass (default: the config\'s '
                 'eval.batch_size)')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--json', default='')
  args = p.parse_args()
  sharding.configure_host_devices(0)
  mesh = sharding.make_mesh(0)
  rows = []
  for head in args.heads.split(','):
    config = common.load_config(CONFIGS[head])
    batch = sharding.round_up(args.batch or config.eval.batch_size, mesh.devices.size)
    task, info, images = synthetic_input(config, batch)
    ours = time_model(task, info, images, mesh, args.repeats)
    saved = [(module, name, getattr(module, name)) for module, name, _ in FLAX_NORMS]
    try:
      for module, name, layer in FLAX_NORMS:
        setattr(module, name, layer)
      theirs = time_model(task, info, images, mesh, args.repeats)
    finally:
      for module, name, layer in saved:
        setattr(module, name, layer)
    for what in ('forward', 'input_grad'):
      rows.append({'head': head, 'config': CONFIGS[head], 'batch': batch, 'pass': what,
                   'robust_med_per_s': ours[what], 'flax_per_s': theirs[what],
                   'ratio': ours[what] / theirs[what]})
  print(f'{mesh.devices.size} host devices; images per second')
  for r in rows:
    print(f'  {r["head"]:15s} batch {r["batch"]:4d} {r["pass"]:10s} robust_med norm '
          f'{r["robust_med_per_s"]:8.0f}  Flax norm {r["flax_per_s"]:8.0f}  ratio '
          f'{r["ratio"]:.2f}x')
  if args.json:
    common.write_json(args.json, {'rows': rows, **common.environment()})


if __name__ == '__main__':
  main()
