"""Attack throughput (images/s) of robust_med against torchattacks on the same network.

For each head, the head's model (built from its synthetic config, at the shapes below) is
attacked by robust_med's PGD-20 (L2 and L∞) and APGD-100 (L∞), and its PyTorch twin
(`benchmarks/torch_models.py`: same layers, the Flax weights copied in) by torchattacks'
`PGDL2`, `PGD` and `APGD` and ART's `ProjectedGradientDescentPyTorch` (PGD only), on the same
batch, at the same budgets and step sizes, both clipping
to [0, 1]. Before timing, the twin's outputs are checked against Flax's (max |Δ| ≤ 1e-4) and so
is the attacked loss.

The attacked loss is the same per-sample function in both frameworks, L(x) = Σ over the model's
outputs of mean((f(x) − t)²), with fixed random targets t (a regression loss every head's output
admits). torchattacks attacks a classifier's cross-entropy, so the twin is wrapped to output
the logits [0, L(x)] with label 0: its cross-entropy softplus(L) is increasing in L, its
gradient a positive multiple of ∇L per sample, so PGD's normalised steps (sign or g/‖g‖) and
APGD's loss comparisons are those of L itself — the same iterates, the same work. APGD runs
through `attack_single_run` (torchattacks' `forward` attacks only correctly classified samples).

robust_med's PGD-20 is one jitted call in the loop form the head's config picks
(`config.attack.unroll`: 'auto' unrolls on CPU; the detector's configs loop, its unrolled
compile being minutes); APGD-100 runs as the evaluator runs it: one jitted `fori_loop` over its 100
steps (`config.eval.chunk_steps` = 0, the default), or a host loop over jitted chunks of that many
unrolled steps. On CPU the host runs as one device per core (`config.mesh.host_devices = 0`; XLA:CPU runs
one device's convolutions on about one core) and the batch is split over them, as the trainer
and evaluator split it over their mesh; the one-device figure is printed beside it. torch uses
its default intra-op threads (one per core). Compile time is measured separately and excluded
from throughput (printed).

  pip install -e '.[bench]' && pip install --no-deps torchattacks
  python benchmarks/attack_throughput.py                      # every head, JSON to --json
  python benchmarks/attack_throughput.py --heads=segmentation --repeats=5
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from robust_med import apgd, attacks  # noqa: E402
from robust_med.tasks import get_task_class  # noqa: E402

# name: (config, batch, square side or 0 for the config's, model overrides)
CASES = {
    'segmentation': ('configs/prostate_amat.py:synthetic', 16, 64,
                     {'base_width': 16, 'depth': 4}),
    'segmentation-demo': ('configs/prostate_amat.py:synthetic', 32, 48, {}),
    'landmarks': ('configs/ceph_amat.py:synthetic', 8, 0, {}),
    'detection': ('configs/bccd_amat.py:synthetic', 8, 0, {}),
    'classification': ('configs/pneumonia_amat.py:synthetic', 16, 0, {}),
}
EPS = {'l2': 1.0, 'linf': 8 / 255}


def build_case(name: str):
  """(flax model, params, x in [0, 1] NHWC, targets) for a benchmark case."""
  spec, batch, side, model_overrides = CASES[name]
  c = common.load_config(spec)
  for k, v in model_overrides.items():
    c.model[k] = v
  if side:
    if 'image_size' in c.data:
      c.data.image_size = side
    else:
      c.data.patch_size = (side, side)
  if c.data.name == 'synthetic':
    c.data.num_train = max(batch, 8)
  task = get_task_class(c.task)(c)
  data, info = task.load_split('train')
  model = task.build_model(info)
  x = np.asarray(data['image'][:batch], np.float32)
  lo = x.min(axis=(1, 2, 3), keepdims=True)
  hi = x.max(axis=(1, 2, 3), keepdims=True)
  x = (x - lo) / np.maximum(hi - lo, 1e-6)              # into [0, 1], as torchattacks assumes
  params = model.init(jax.random.key(0), jnp.asarray(x[:1]))['params']
  out = jax.eval_shape(lambda p, z: model.apply({'params': p}, z), params, jnp.asarray(x))
  rng = np.random.default_rng(0)
  targets = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), out)
  return model, params, x, targets, c


def jax_loss(model, params, targets):
  def loss(z):
    out = model.apply({'params': params}, z)
    per_leaf = jax.tree.map(lambda o, t: jnp.mean(jnp.square(o - t).reshape(o.shape[0], -1), 1),
                            out, targets)
    return sum(jax.tree.leaves(per_leaf))
  return loss


def torch_loss_logits(twin, targets):
  """The twin wrapped to output [0, L(x)] per sample (see the module docstring); `.loss(x)` is
  L(x) itself. torch is imported here so that robust_med-only runs need none."""
  import torch

  class LossLogits(torch.nn.Module):

    def __init__(self):
      super().__init__()
      self.twin = twin
      # Targets in the twin's layout (NCHW for 4-D outputs).
      self.targets = jax.tree.map(
          lambda t: torch.from_numpy(t.transpose(0, 3, 1, 2).copy() if t.ndim == 4 else t),
          targets)

    def loss(self, x):
      out = self.twin(x)
      if isinstance(out, dict):
        return sum(((out[k] - self.targets[k]) ** 2).flatten(1).mean(1) for k in sorted(out))
      return ((out - self.targets) ** 2).flatten(1).mean(1)

    def forward(self, x):
      value = self.loss(x)
      return torch.stack([torch.zeros_like(value), value], 1)

  return LossLogits().eval()


def loop_form(c) -> tuple[bool | None, int]:
  """(PGD's unroll choice, the evaluator's chunk length: 0 = one loop) of a head's config."""
  return (attacks.UNROLL_CHOICES[c.attack.get('unroll', 'auto')], c.eval.get('chunk_steps', 0))


def time_jax(model, params, x, targets, norm, attack, repeats, devices=1, c=None):
  """(compile seconds, best run seconds, final per-sample losses) of robust_med's attack, the
  batch split over a data-parallel mesh of the first `devices` devices."""
  from robust_med import sharding
  eps = EPS[norm]
  mesh = sharding.make_mesh(devices)
  xj = jax.device_put(jnp.asarray(x), sharding.data_sharding(mesh))
  params = jax.device_put(params, sharding.replicated(mesh))
  if attack == 'pgd':
    steps = 20
    unroll = loop_form(c)[0] if c is not None else None
    fn = jax.jit(lambda p, z: attacks.pgd(jax_loss(model, p, targets), z, eps, norm=norm,
                                          steps=steps, step_size=2.5 * eps / steps,
                                          clip=(0.0, 1.0), unroll=unroll))
    run = lambda: jax.block_until_ready(fn(params, xj))
  else:
    settings = apgd.APGDSettings(norm=norm, steps=100, clip=(0.0, 1.0))
    run = chunked_runner(settings, model, params, xj, targets, eps,
                         chunk=loop_form(c)[1] if c is not None else 0)
  t = time.perf_counter()
  x_adv = run()
  compile_s = time.perf_counter() - t
  best = common.best_time(run, repeats, warmup=0)
  return compile_s, best, np.asarray(jax_loss(model, params, targets)(x_adv))


def chunked_runner(settings, model, params, x, targets, eps, chunk: int = 0):
  """APGD as the evaluator runs it: one jitted fori_loop (`chunk` 0), or jitted chunks of
  `chunk` unrolled steps in a host loop."""
  eps_v = jnp.full(x.shape[:1], eps, x.dtype)
  unroll = chunk > 0
  chunk = chunk or settings.steps
  init = jax.jit(lambda p, z, k: settings.init(jax_loss(model, p, targets), z, eps_v, k))

  @jax.jit
  def _chunk(p, z, state, start):
    loss = jax_loss(model, p, targets)
    body = lambda j, s: settings.step(loss, z, s, eps_v, start + j)
    return attacks.loop(body, state, chunk, unroll)
  result = jax.jit(settings.result)

  def run():
    state = init(params, x, jax.random.key(0))
    for start in range(0, settings.steps, chunk):
      state = _chunk(params, x, state, jnp.int32(start))
    return jax.block_until_ready(result(x, state))
  return run


def time_torch(wrapped, x, norm, attack, repeats):
  """(best run seconds, final per-sample losses) of torchattacks' attack on the twin."""
  import torch
  import torchattacks
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  y = torch.zeros(len(x), dtype=torch.long)
  eps = EPS[norm]
  if attack == 'pgd':
    cls = torchattacks.PGDL2 if norm == 'l2' else torchattacks.PGD
    atk = cls(wrapped, eps=eps, alpha=2.5 * eps / 20, steps=20, random_start=False)
    run = lambda: atk(xt, y)
  else:
    atk = torchattacks.APGD(wrapped, norm='L2' if norm == 'l2' else 'Linf', eps=eps, steps=100,
                            n_restarts=1, loss='ce', seed=0)
    run = lambda: atk.attack_single_run(xt, y)[0]
  adv = run()
  best = common.best_time(run, repeats, warmup=0)
  with torch.no_grad():
    losses = wrapped.loss(adv).numpy()
  return best, losses


def time_art(wrapped, x, norm, repeats):
  """(best run seconds, final per-sample losses) of ART's `ProjectedGradientDescentPyTorch`
  (PGD-20; ART's APGD is a NumPy loop around the estimator, not timed here) on the wrapped twin,
  or None when ART is not installed."""
  try:
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier
  except ImportError:
    return None
  import torch
  xt = x.transpose(0, 3, 1, 2).copy()
  eps = EPS[norm]
  classifier = PyTorchClassifier(model=wrapped, loss=torch.nn.CrossEntropyLoss(),
                                 input_shape=xt.shape[1:], nb_classes=2, clip_values=(0.0, 1.0),
                                 device_type='cpu')
  atk = ProjectedGradientDescentPyTorch(classifier, norm=2 if norm == 'l2' else np.inf, eps=eps,
                                        eps_step=2.5 * eps / 20, max_iter=20, num_random_init=0,
                                        batch_size=len(x), verbose=False)
  y = np.zeros(len(x), np.int64)
  run = lambda: atk.generate(xt, y=y)
  adv = run()
  best = common.best_time(run, repeats, warmup=0)
  with torch.no_grad():
    losses = wrapped.loss(torch.from_numpy(np.asarray(adv, np.float32))).numpy()
  return best, losses


def run_case(name, attacks_to_run, repeats, torch_ok):
  model, params, x, targets, c = build_case(name)
  rows = []
  wrapped = None
  if torch_ok:
    import torch_models
    twin = torch_models.from_flax(model, params)
    # Outputs agree to 1e-4 relative to their scale (float32 rounding grows with depth and
    # output magnitude; torch_models.check_equal's absolute 1e-4 suits its small self-check).
    flax_out, torch_out = torch_models.outputs(model, params, x, twin=twin)
    scale = max(1.0, max(float(np.max(np.abs(a))) for a in jax.tree.leaves(flax_out)))
    diff = torch_models.max_abs_diff(flax_out, torch_out) / scale
    if diff > 1e-4:
      raise SystemExit(f'{name}: the twin\'s outputs differ from Flax\'s by {diff:.2e} '
                       '(relative to their largest magnitude)')
    wrapped = torch_loss_logits(twin, targets)
    import torch
    with torch.no_grad():
      torch_loss = wrapped.loss(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    jax_l = np.asarray(jax_loss(model, params, targets)(jnp.asarray(x)))
    loss_diff = float(np.max(np.abs(torch_loss - jax_l) / np.maximum(1.0, np.abs(jax_l))))
    if loss_diff > 1e-4:
      raise SystemExit(f'{name}: the twin\'s loss differs from Flax\'s by {loss_diff:.2e}')
  devices = len(jax.devices())
  for attack, norm in attacks_to_run:
    label = f'{"PGD-20" if attack == "pgd" else "APGD-100"} {norm}'
    compile_s, jax_s, jax_adv = time_jax(model, params, x, targets, norm, attack, repeats,
                                         devices, c)
    unroll, chunk = loop_form(c)
    loop = ('unrolled' if (attacks.default_unroll(20) if unroll is None else unroll)
            else 'fori_loop') if attack == 'pgd' else (f'chunks of {chunk}' if chunk
                                                        else 'fori_loop')
    row = {'head': name, 'model': type(model).__name__, 'input': list(x.shape), 'attack': label,
           'devices': devices, 'loop': loop, 'robust_med_s': jax_s, 'robust_med_img_s': len(x) / jax_s,
           'robust_med_compile_s': compile_s,
           'robust_med_adv_loss': float(jax_adv.mean())}
    if devices > 1:
      _, one_s, _ = time_jax(model, params, x, targets, norm, attack, repeats, 1, c)
      row['robust_med_1dev_img_s'] = len(x) / one_s
    if wrapped is not None:
      torch_s, torch_adv = time_torch(wrapped, x, norm, attack, repeats)
      row.update(torchattacks_s=torch_s, torchattacks_img_s=len(x) / torch_s,
                 ratio=torch_s / jax_s, torchattacks_adv_loss=float(torch_adv.mean()),
                 twin_max_abs_diff=diff, twin_loss_rel_diff=loss_diff)
      art = time_art(wrapped, x, norm, repeats) if attack == 'pgd' else None
      if art is not None:
        row.update(art_s=art[0], art_img_s=len(x) / art[0], art_ratio=art[0] / jax_s,
                   art_adv_loss=float(art[1].mean()))
    print(common.table([row], COLUMNS).splitlines()[-1], flush=True)
    rows.append(row)
  return rows


COLUMNS = ['head', 'input', 'attack', 'loop', 'devices', 'robust_med_img_s', 'robust_med_1dev_img_s',
           'torchattacks_img_s', 'ratio', 'art_img_s', 'art_ratio',
           'robust_med_compile_s', 'robust_med_adv_loss', 'torchattacks_adv_loss', 'art_adv_loss']


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--heads', default=','.join(CASES))
  p.add_argument('--attacks', default='pgd:l2,pgd:linf,apgd:linf')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--json', default='')
  p.add_argument('--host_devices', type=int, default=0, help='CPU only: run the host as this many '
                 'devices and split each batch over them (config.mesh.host_devices; 0 = one per '
                 'core, 1 = one device); also timed on one device when more than one')
  args = p.parse_args()
  from robust_med import sharding
  sharding.configure_host_devices(args.host_devices, min(b for _, b, _, _ in CASES.values()))
  try:
    import torch
    import torchattacks  # noqa: F401
    torch_ok = True
  except ImportError:
    print('torch/torchattacks not installed: robust_med only (pip install -e .[bench] && '
          'pip install --no-deps torchattacks)')
    torch_ok = False
  todo = [tuple(a.split(':')) for a in args.attacks.split(',')]
  print(common.table([], COLUMNS))
  rows = []
  for name in args.heads.split(','):
    rows += run_case(name, todo, args.repeats, torch_ok)
  print('\nratio = robust_med images/s ÷ torchattacks images/s (≥ 1: robust_med faster); '
        'art_ratio: the same against ART')
  common.write_json(args.json, {'benchmark': 'attack_throughput', 'rows': rows, 'eps': EPS})


if __name__ == '__main__':
  main()
