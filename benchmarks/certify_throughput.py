"""Certification throughput: noisy forward passes per second of robust_med's CERTIFY against a
PyTorch implementation of Cohen et al.'s CERTIFY on the weight-identical twin, in one run.

  python benchmarks/certify_throughput.py                  # PneumoniaMNIST-sized ResNet, CPU
  python benchmarks/certify_throughput.py --images=8 --n=200       # a quick look

Both certify the same images with the same n₀ + n noisy copies each (`--n0`, `--n`) and the same
number of noisy inputs per forward pass (`--batch`): robust_med with `robust_med.certify.sample`
(jitted, on every host device, each image's copies drawn from its own key), PyTorch the way
Cohen et al.'s reference code does it (github.com/locuslab/smoothing, `core.Smooth.certify`,
read, not copied): one image at a time, its copies in batches, `argmax` counts, then the
Clopper–Pearson bound with scipy. The model: the config's `ResNetClassifier`, freshly initialised
(the cost does not depend on the weights), and its PyTorch twin (`torch_models.from_flax`).
Each side runs once to compile / warm up on one image, then is timed (best of --repeats).
Prints forward passes per second and the ratio; the target is ≥ 1.5× on CPU.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from robust_med import certify, sharding, smoothing  # noqa: E402
from robust_med.tasks import get_task_class  # noqa: E402


def torch_certify(model, images: np.ndarray, sigma: float, n0: int, n: int, alpha: float,
                  batch: int, num_classes: int, seed: int = 0):
  """Cohen et al.'s CERTIFY in PyTorch, image by image: (answer or −1, radius) per image."""
  import torch
  torch.manual_seed(seed)
  out = []
  with torch.no_grad():
    for image in images:
      x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]

      def counts(num):
        c = torch.zeros(num_classes, dtype=torch.long)
        left = num
        while left > 0:
          k = min(batch, left)
          left -= k
          noisy = x.repeat(k, 1, 1, 1) + sigma * torch.randn(k, *x.shape[1:])
          c += torch.bincount(model(noisy).argmax(1), minlength=num_classes)
        return c.numpy()
      select, est = counts(n0), counts(n)
      answer, radius, _ = smoothing.certify_votes(select[None], est[None], sigma, alpha)
      out.append((int(answer[0]), float(radius[0])))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/pneumonia_std_noise.py:cpu')
  p.add_argument('--data_root', default='../shared/data/pneumoniamnist_variant',
                 help='the config\'s data (its synthetic set when the folder is missing)')
  p.add_argument('--images', type=int, default=32)
  p.add_argument('--n0', type=int, default=100)
  p.add_argument('--n', type=int, default=1000)
  p.add_argument('--batch', type=int, default=400, help='noisy inputs per forward pass')
  p.add_argument('--sigma', type=float, default=0.25)
  p.add_argument('--alpha', type=float, default=0.001)
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--threads', type=int, default=0, help='PyTorch threads (0: one per core)')
  p.add_argument('--json', default='')
  args = p.parse_args()
  sharding.configure_host_devices(0)
  import torch
  import torch_models
  torch.set_num_threads(args.threads or sharding.available_cores())

  config = common.load_config(args.config)
  if args.data_root:
    config.data.root = args.data_root
  if not os.path.isdir(config.data.root):  # the images' content does not change the cost
    config.data.name, config.data.root, config.data.class_names = 'synthetic', '', ()
    config.data.num_train, config.data.num_val = 8, args.images
  task = get_task_class(config.task)(config)
  data, info = task.load_split('val')
  data = {k: v[:args.images] for k, v in data.items()}
  model = task.build_model(info)
  params = model.init(jax.random.key(0), data['image'][:1])['params']
  twin = torch_models.from_flax(model, params).eval()
  mesh = sharding.make_mesh(0)
  devices = mesh.devices.size
  # robust_med: images per pass × copies per image = the same noisy inputs per forward pass.
  chunk = max(1, args.batch // devices)
  settings = smoothing.SmoothingSettings(sigma=args.sigma, n=args.n, n0=args.n0,
                                         alpha=args.alpha, chunk=chunk)
  images_per_pass = devices
  sample = lambda d: certify.sample(task, model, params, d, mesh, settings,  # noqa: E731
                                    batch_size=images_per_pass)
  one = {k: v[:devices] for k, v in data.items()}
  sample(one)  # compile
  result = {}

  def ours():
    result['evidence'] = sample(data)
  seconds = common.best_time(ours, args.repeats, warmup=0)
  answer, radius, _ = smoothing.certify_votes(result['evidence']['select'],
                                              result['evidence']['counts'], args.sigma, args.alpha)
  classes = int(result['evidence']['counts'].shape[-1])
  torch_certify(twin, data['image'][:1], args.sigma, args.n0, min(args.n, args.batch), args.alpha,
                args.batch, classes)  # warm-up

  def theirs():
    result['torch'] = torch_certify(twin, data['image'], args.sigma, args.n0, args.n,
                                    args.alpha, args.batch, classes)
  torch_seconds = common.best_time(theirs, args.repeats, warmup=0)
  passes = args.images * (args.n0 + args.n)
  agree = np.mean([a == t[0] for a, t in zip(answer, result['torch'])])
  rows = [{'impl': 'robust_med (JAX, jitted, %d host devices)' % devices, 'seconds': seconds,
           'passes_per_s': passes / seconds, 'mean_radius': float(np.mean(radius))},
          {'impl': f'PyTorch CERTIFY ({torch.get_num_threads()} threads)',
           'seconds': torch_seconds, 'passes_per_s': passes / torch_seconds,
           'mean_radius': float(np.mean([t[1] for t in result['torch']]))}]
  print(f'{args.config}: {args.images} images {"x".join(map(str, data["image"].shape[1:]))}, '
        f'n0 = {args.n0}, n = {args.n}, {args.batch} noisy inputs per pass, σ = {args.sigma}')
  for r in rows:
    print(f'  {r["impl"]:45s} {r["seconds"]:8.2f} s  {r["passes_per_s"]:10.0f} passes/s  '
          f'mean radius {r["mean_radius"]:.3f}')
  ratio = rows[0]['passes_per_s'] / rows[1]['passes_per_s']
  print(f'  ratio robust_med / PyTorch: {ratio:.2f}x (target >= 1.5); same certified answer on '
        f'{agree:.0%} of the images')
  if args.json:
    common.write_json(args.json, {'config': args.config, 'images': args.images, 'n0': args.n0,
                                  'n': args.n, 'batch': args.batch, 'sigma': args.sigma,
                                  'rows': rows, 'ratio': ratio, 'agree': float(agree),
                                  **common.environment()})


if __name__ == '__main__':
  main()
