"""Train-step time of robust_med's 3-D U-Net against MONAI's DynUNet of the same size, on CPU.

  pip install -e '.[bench]'
  python benchmarks/monai_unet3d.py [--config=configs/hippocampus3d_std.py:cpu] [--batch_size=8]

Both sides: nnU-Net's network at the config's widths (model.base_width doubled per level,
model.depth levels; 3×3×3 conv – instance norm (affine) – leaky ReLU 0.01, twice per stage,
strided-conv downsampling, transposed-conv upsampling, a 1×1×1 head), one batch of
data.patch_size patches, softmax cross-entropy + soft Dice, Adam. robust_med runs its own STD
train step (the jitted step `robust_med.main` runs, over the config's mesh); MONAI runs
`DynUNet` (res_block=False, no deep supervision) with `DiceCELoss` in eager PyTorch, with
PyTorch's default threads. The parameter counts are printed (they must be equal), then the best
of --repeats steps each, and the ratio MONAI ÷ robust_med.
"""

from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import common  # noqa: E402  (puts the repository root on the path)

# benchmarks/profile.py would shadow the standard library's `profile`, which torch imports.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != _HERE]

import jax  # noqa: E402
import numpy as np  # noqa: E402


def robust_med_step(config, batch_np):
  """robust_med's compiled STD step, its state and the device batch."""
  from robust_med import methods, sharding, train
  from robust_med.tasks import get_task_class
  task = get_task_class(config.task)(config)
  _, info = task.load_split('val')  # The info only (classes, channels); a few phantoms.
  model = task.build_model(info)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  tx = train.make_optimizer(config.optimizer, 1000)
  state = train.init_state(model, tx, batch_np['image'][:1], num_train=len(batch_np['id']),
                           num_xi=2, initial_margin=1.0, seed=0, mesh=mesh)
  step = train.jit_train_step(train.make_train_step(
      task, model, methods.build_method(config.method, config.attack), tx,
      *train.augment_settings(config)), state, mesh)
  batch = sharding.put_batch(batch_np, mesh)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  return step, state, batch, params, mesh.devices.size


def monai_step(config, batch_np, num_classes: int):
  import torch
  from monai.losses import DiceCELoss
  from monai.networks.nets import DynUNet
  from robust_med.models.unet import unet_features
  m = config.model
  filters = list(unet_features(m.base_width, m.depth, m.max_width))
  net = DynUNet(spatial_dims=3, in_channels=batch_np['image'].shape[-1], out_channels=num_classes,
                kernel_size=[3] * len(filters), strides=[1] + [2] * (len(filters) - 1),
                upsample_kernel_size=[2] * (len(filters) - 1), filters=filters,
                norm_name=('instance', {'affine': True}),
                act_name=('leakyrelu', {'negative_slope': 0.01, 'inplace': True}),
                res_block=False, deep_supervision=False)
  loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  x = torch.from_numpy(np.moveaxis(batch_np['image'], -1, 1).copy())
  y = torch.from_numpy(batch_np['label'][:, None].astype(np.int64))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    opt.step()
    return float(loss)

  params = sum(p.numel() for p in net.parameters())
  return step, params, torch.get_num_threads()


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/hippocampus3d_std.py:cpu')
  p.add_argument('--batch_size', type=int, default=8)
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--json', default='')
  args = p.parse_args()
  config = common.load_config(args.config)
  config.data.name, config.data.root = 'synthetic', ''  # Phantoms: no data needed.
  config.data.num_val = args.batch_size
  config.batch_size = args.batch_size
  patch = tuple(int(s) for s in config.data.patch_size)
  config.data.volume_shape = patch
  num_classes = int(config.data.num_classes)
  rng = np.random.default_rng(0)
  batch = {'image': rng.normal(size=(args.batch_size, *patch, 1)).astype(np.float32),
           'label': rng.integers(0, num_classes, (args.batch_size, *patch)).astype(np.int32),
           'in_image': np.ones((args.batch_size, *patch), bool),
           'id': np.arange(args.batch_size, dtype=np.int32)}
  step, state, dev_batch, ours_params, devices = robust_med_step(config, batch)
  holder = {'state': state}

  def ours():
    holder['state'], metrics = step(holder['state'], dev_batch)
    jax.block_until_ready(metrics)

  ours_s = common.best_time(ours, args.repeats)
  theirs, theirs_params, threads = monai_step(config, batch, num_classes)
  theirs_s = common.best_time(theirs, args.repeats)
  rows = [{'library': 'robust_med (jit, STD step)', 'params': ours_params, 'step_s': ours_s,
           'volumes_per_s': args.batch_size / ours_s, 'note': f'{devices} device(s)'},
          {'library': 'MONAI DynUNet (eager)', 'params': theirs_params, 'step_s': theirs_s,
           'volumes_per_s': args.batch_size / theirs_s, 'note': f'{threads} torch threads'}]
  print(f'{args.config}: batch {args.batch_size} × {patch}, {num_classes} classes, widths '
        f'{config.model.base_width}×2^level, depth {config.model.depth}')
  print(common.table(rows, ['library', 'params', 'step_s', 'volumes_per_s', 'note']))
  print(f'MONAI ÷ robust_med step time: {theirs_s / ours_s:.2f}'
        + ('' if ours_params == theirs_params else
           f' (parameter counts differ: {ours_params} vs {theirs_params})'))
  if args.json:
    common.write_json(args.json, {'config': args.config, 'batch_size': args.batch_size,
                                  'patch': list(patch), 'rows': rows,
                                  'ratio_monai_over_robust_med': theirs_s / ours_s})


if __name__ == '__main__':
  main()
