"""Step time of STD, SAT, AMAT (paper refine and boundary refine) and RTDA at equal PGD
iterations, the AMAT/SAT ratios (target ≤ 1.02), each step's achieved FLOP/s (XLA's cost analysis
÷ measured time) as a fraction of the measured peak (`peak.py`), and its peak memory (XLA's
memory analysis), for any head.

  python benchmarks/train_step.py --heads=all --json=benchmarks/results/train_step_cpu.json

Also times the attack loop unrolled vs `lax.fori_loop` on this backend, which is how
`robust_med.attacks.default_unroll` was chosen.

  python benchmarks/train_step.py                      # synthetic 48×48, U-Net 8×3
  python benchmarks/train_step.py --pgd_steps=20 --batch_size=32 --patch=128 --width=32 --depth=5
  python benchmarks/train_step.py --config=configs/ceph_amat.py:synthetic --target=1.02
  python benchmarks/train_step.py --config=configs/bccd_amat.py:synthetic --target=1.02

With `--method_configs` it times the method section of each listed config file instead (the whole
section: budgets, weights, augmentation; `--pgd_steps` is ignored, each keeps the config's
attack), and prints each step time relative to `--reference` (the classification head's eight
methods, RTDA's cost relative to AT):

  python benchmarks/train_step.py --config=configs/busi_rtda.py:cpu --reference=at \
      --method_configs=configs/busi_{std,at,gradreg,aug,at_aug,at_gradreg,rtda,amat}.py:cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import peak  # noqa: E402

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import attacks, config_base, methods, precision, sharding, train
from robust_med.tasks import get_task_class


def _config(args, method: str):
  """The config of `--config` (default: the synthetic segmentation phantoms), set to `method`."""
  if args.config:
    path, _, arg = args.config.partition(':')
    spec = importlib.util.spec_from_file_location('benchmark_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
  else:
    c = config_base.base_config()
    c.data.name = 'synthetic'
    c.data.patch_size = (48, 48)
    c.model.base_width, c.model.depth = 8, 3
  if args.data_root:
    c.data.root = args.data_root
  if args.patch:  # A head with a square letterbox (detection) has data.image_size instead.
    if 'image_size' in c.data:
      c.data.image_size = args.patch
    else:
      c.data.patch_size = (args.patch, args.patch)
  if c.data.name == 'synthetic':
    c.data.num_train, c.data.num_val = args.batch_size * 2, args.batch_size
  c.model.base_width = args.width or c.model.base_width
  c.model.depth = args.depth or c.model.depth
  if method.endswith('.py') or '.py:' in method:  # A config file's whole method section.
    from robust_med import sweep
    for k, v in sweep.load_config_file(method).method.items():
      c.method[k] = v
  else:
    c.method.name, _, refine = method.partition(':')  # 'amat:boundary' = AMAT, boundary refine.
    c.method.refine = refine or 'paper'
    c.method.eps = c.method.delta_eps = 1.0
    c.attack.steps = args.pgd_steps
  c.batch_size = args.batch_size
  c.mesh.num_devices = args.devices
  c.model.compute_dtype = getattr(args, 'compute_dtype', 'float32')
  if getattr(args, 'unroll', ''):
    c.attack.unroll = args.unroll
  return c


def _input_size(c) -> tuple[int, int]:
  side = c.data.get('image_size', None)
  return (side, side) if side else tuple(c.data.patch_size)


def compiled_step(args, method: str):
  """A compiled train step of `method`, its state and a batch, ready to time."""
  config = _config(args, method)
  task = get_task_class(config.task)(config)
  data, info = task.load_split('train')
  model = precision.compute_dtype(task.build_model(info), config.model.compute_dtype)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  tx = train.make_optimizer(config.optimizer, 1000)
  terms = len(task.loss_term_names)
  state = train.init_state(model, tx, data['image'], num_train=len(data['id']), num_xi=terms,
                           initial_margin=1.0, seed=0, mesh=mesh)
  state = state.replace(xi=jax.device_put(jnp.full((terms,), 0.5), sharding.replicated(mesh)))
  jitted = train.jit_train_step(
      train.make_train_step(task, model, methods.build_method(config.method, config.attack), tx,
                            *train.augment_settings(config)), state, mesh)
  batch = sharding.put_batch({k: v[:args.batch_size] for k, v in data.items()}, mesh)
  t = time.perf_counter()
  step = jitted.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  COSTS[method] = {'compile_s': compile_s, 'flops': peak.flops_of(step),
                   'memory_bytes': _peak_memory(step)}
  state, m = step(state, batch)
  jax.block_until_ready(m)
  return step, state, batch


COSTS: dict[str, dict] = {}


def _peak_memory(compiled) -> int:
  """XLA's estimate of a step's peak device memory: arguments + outputs + temporaries −
  donated (aliased) bytes."""
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def time_methods(args, names=('std', 'sat', 'amat', 'amat:boundary')) -> dict[str, float]:
  """Best-of-`repeats` seconds per train step, methods interleaved so load hits all alike, in an
  order rotated every repeat: a step runs measurably slower or faster right after another
  method's (segmentation, SAT then AMAT: AMAT/SAT 1.09; AMAT then SAT: 0.95), so each method
  takes each place in turn."""
  runs = {m: list(compiled_step(args, m)) for m in names}
  times = {m: [] for m in names}
  order = list(runs)
  for r in range(args.repeats):
    for m in order[r % len(order):] + order[:r % len(order)]:
      run = runs[m]
      step, state, batch = run
      t = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready((state, metrics))
      times[m].append(time.perf_counter() - t)
      run[1] = state
  TIMES.clear()
  TIMES.update(times)
  return {m: float(np.min(t)) for m, t in times.items()}


TIMES: dict[str, list[float]] = {}  # Every repeat's seconds of the last `time_methods` call.


def paired_ratio(a: str, b: str) -> float:
  """Median over repeats of (a's step time ÷ b's) within the same repeat: the steps of one
  repeat run back to back, so a machine's slow and fast phases (±20 % on a shared VM) cancel,
  where a ratio of two best-of times keeps them."""
  return float(np.median(np.asarray(TIMES[a]) / np.asarray(TIMES[b])))


def time_attack_loop(args, unroll: bool) -> tuple[float, float]:
  """(compile seconds, run seconds) of PGD on the U-Net, unrolled or as a fori_loop."""
  config = _config(args, 'std')
  task = get_task_class(config.task)(config)
  data, info = task.load_split('train')
  model = task.build_model(info)
  params = model.init(jax.random.key(0), data['image'][:1])['params']
  batch = {k: jnp.asarray(v[:args.batch_size]) for k, v in data.items()}
  loss = lambda x: methods.total(task.loss_terms(model.apply({'params': params}, x), batch))
  fn = jax.jit(lambda x: attacks.pgd(loss, x, 1.0, steps=args.pgd_steps, unroll=unroll))
  t = time.perf_counter()
  jax.block_until_ready(fn(batch['image']))
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.repeats):
    jax.block_until_ready(fn(batch['image']))
  return compile_s, (time.perf_counter() - t) / args.repeats


def time_method_configs(args) -> None:
  """Step time of each config file's method section, and its ratio to the reference's."""
  import os
  files = [f for v in args.method_configs for f in v.split(',') if f]
  c = _config(args, files[0])
  print(f'backend={jax.default_backend()} devices={len(jax.devices())} task={c.task} '
        f'data={c.data.name} batch={args.batch_size} input={_input_size(c)} '
        f'model={c.model.base_width}x{c.model.depth} train attack PGD-{c.attack.steps} '
        f'{c.attack.norm}')
  name = lambda f: os.path.splitext(os.path.basename(f.partition(':')[0]))[0].split('_', 1)[-1]
  times = {name(f): t for f, t in time_methods(args, files).items()}
  ref = times.get(args.reference)
  for m, t in times.items():
    ratio = f'  {m}/{args.reference} = {t / ref:.2f}' if ref else ''
    print(f'{m:12s} step {t * 1000:9.1f} ms{ratio}')


HEADS = {'segmentation': 'configs/prostate_amat.py:synthetic',
         'landmarks': 'configs/ceph_amat.py:synthetic',
         'detection': 'configs/bccd_amat.py:synthetic',
         'classification': 'configs/pneumonia_amat.py:synthetic'}
HEAD_METHODS = ('std', 'sat', 'amat', 'amat:boundary', 'rtda')


def time_heads(args) -> None:
  """Every head's synthetic config: step time, compile time, FLOP/s fraction of the measured peak
  and peak memory of each method; the AMAT/SAT ratios against `--target`."""
  peak_flop_s = peak.measure()['peak_flop_s']
  heads = list(HEADS) if args.heads == 'all' else args.heads.split(',')
  rows = []
  print(f'backend={jax.default_backend()} devices={len(jax.devices())} batch={args.batch_size} '
        f'pgd_steps={args.pgd_steps} compute={args.compute_dtype}; measured peak {peak_flop_s / 1e9:.1f} GFLOP/s')
  columns = ['head', 'input', 'method', 'step_ms', 'vs_sat', 'vs_sat_paired', 'compile_s',
             'gflop_per_step',
             'gflop_s', 'of_peak', 'memory_mb']
  print(common.table([], columns))
  for head in heads:
    args.config = HEADS[head]
    COSTS.clear()
    times = time_methods(args, HEAD_METHODS)
    c = _config(args, 'std')
    for m, t in times.items():
      cost = COSTS[m]
      row = {'head': head, 'input': list(_input_size(c)), 'method': m, 'step_ms': t * 1e3,
             'vs_sat': t / times['sat'], 'vs_sat_paired': paired_ratio(m, 'sat'),
             'compile_s': cost['compile_s'],
             'gflop_per_step': cost['flops'] / 1e9, 'gflop_s': cost['flops'] / t / 1e9,
             'of_peak': cost['flops'] / t / peak_flop_s,
             'memory_mb': cost['memory_bytes'] / 2**20}
      rows.append(row)
      print(common.table([row], columns).splitlines()[-1], flush=True)
  for row in rows:
    if row['method'].startswith('amat'):
      ok = 'ok' if row['vs_sat_paired'] <= args.target else 'MISSED'
      print(f"{row['head']:15s} {row['method']:14s}/SAT = {row['vs_sat_paired']:.3f} (median of "
            f"paired repeats; best-of ratio {row['vs_sat']:.3f}) (target <= {args.target:g}: {ok})")
  common.write_json(args.json, {'benchmark': 'train_step', 'batch_size': args.batch_size,
                                'pgd_steps': args.pgd_steps, 'compute_dtype': args.compute_dtype, 'peak': peak.measure(),
                                'rows': rows})


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--pgd_steps', type=int, default=10)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--config', default='', help='a config file[:variant] (default: synthetic '
                 'segmentation phantoms, 48×48, U-Net 8×3)')
  p.add_argument('--patch', type=int, default=0, help='square input size (0: the config\'s)')
  p.add_argument('--width', type=int, default=0, help='model.base_width (0: the config\'s)')
  p.add_argument('--depth', type=int, default=0, help='model.depth (0: the config\'s)')
  p.add_argument('--target', type=float, default=1.02, help='the AMAT/SAT ratio to meet')
  p.add_argument('--devices', type=int, default=0)
  p.add_argument('--compute_dtype', default='float32', help='config.model.compute_dtype: '
                 'float32 or bfloat16 (the network in bf16; meant for GPUs)')
  p.add_argument('--unroll', default='', help="config.attack.unroll: 'auto', 'unrolled' or "
                 "'loop' (default: the config's)")
  p.add_argument('--repeats', type=int, default=10)
  p.add_argument('--data_root', default='', help='config.data.root (default: the config\'s)')
  p.add_argument('--method_configs', action='append', default=[],
                 help='config files whose method sections to time instead of STD/SAT/AMAT: '
                 'comma-separated, or the flag repeated (as shell braces write it)')
  p.add_argument('--reference', default='at', help='with --method_configs: the run the others are '
                 'compared with (a file\'s name after the dataset prefix, e.g. at)')
  p.add_argument('--heads', default='', help="'all' or a comma-separated list of "
                 f"{list(HEADS)}: time every method on each head's synthetic config")
  p.add_argument('--json', default='', help='with --heads: write the figures here')
  args = p.parse_args()
  if args.heads:
    time_heads(args)
    return
  if args.method_configs:
    time_method_configs(args)
    return
  c = _config(args, 'std')
  print(f'backend={jax.default_backend()} devices={len(jax.devices())} task={c.task} '
        f'data={c.data.name} batch={args.batch_size} input={_input_size(c)} '
        f'model={c.model.base_width}x{c.model.depth} pgd_steps={args.pgd_steps}')
  times = time_methods(args)
  for m, t in times.items():
    print(f'{m:13s} step {t * 1000:9.1f} ms')
  for m in ('amat', 'amat:boundary'):
    print(f'{m}/SAT step-time ratio: {times[m] / times["sat"]:.3f} (target <= {args.target:g})')
  for unroll in (True, False):
    c, r = time_attack_loop(args, unroll)
    print(f'PGD-{args.pgd_steps} {"unrolled " if unroll else "fori_loop"}: compile {c:6.1f} s, '
          f'run {r * 1000:8.1f} ms')
  print(f'default on this backend: unroll={attacks.default_unroll()}')


if __name__ == '__main__':
  main()
