"""Data-parallel scaling of the train step over 1, 2, 4, 8 devices, and the memory of AMAT's
margins for very large training sets.

Each device count runs in its own process (on CPU the devices are simulated with
XLA_FLAGS=--xla_force_host_platform_device_count=N, which measures the overhead of the sharded
step and checks equality, not speed-up: the simulated devices share the same cores). Every run
takes the same global batches from the same initial state; the final parameters and margins are
compared with the 1-device run's.

The margins are one float32 per training sample, sharded along the data axis: the script builds
the sharded array for `--margins` samples on 8 and 256 (simulated) devices and reads the bytes each
device holds.

  python benchmarks/scaling.py [--devices=1,2,4,8] [--steps=6] [--json=PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CONFIG = 'configs/prostate_amat.py:synthetic'


def worker(devices: int, steps: int, batch_size: int, out: str) -> None:
  """One device count: time `steps` AMAT steps (after one compiled warm-up step) and save the
  final parameters and margins."""
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from robust_med import methods, sharding, train
  from robust_med.tasks import get_task_class
  c = common.load_config(CONFIG)
  c.mesh.num_devices = devices
  c.batch_size = batch_size
  task = get_task_class(c.task)(c)
  data, info = task.load_split('train')
  model = task.build_model(info)
  mesh = sharding.make_mesh(devices)
  tx = train.make_optimizer(c.optimizer, 1000)
  state = train.init_state(model, tx, data['image'], num_train=len(data['id']), num_xi=2,
                           initial_margin=c.method.delta_eps, seed=0, mesh=mesh)
  state = state.replace(xi=jax.device_put(jnp.full((2,), 0.5), sharding.replicated(mesh)))
  step = train.jit_train_step(train.make_train_step(
      task, model, methods.build_method(c.method, c.attack), tx), state, mesh)
  batches = [sharding.put_batch({k: v[i * batch_size:(i + 1) * batch_size]
                                 for k, v in data.items()}, mesh) for i in range(steps + 1)]
  t = time.perf_counter()
  state, m = step(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for b in batches[1:]:
    state, m = step(state, b)
  jax.block_until_ready((state, m))
  step_s = (time.perf_counter() - t) / steps
  flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])
  np.savez(out, params=flat, margins=np.asarray(state.margins)[:len(data['id'])])
  with open(out + '.json', 'w') as f:
    json.dump({'devices': devices, 'step_s': step_s, 'compile_s': compile_s}, f)


def margins_memory(n: int, devices: int) -> dict:
  """Bytes per device of the sharded (n,) float32 margins on `devices` simulated devices."""
  code = f'''
import json, jax, jax.numpy as jnp
from robust_med import sharding
mesh = sharding.make_mesh({devices})
m = jax.device_put(jnp.zeros((sharding.round_up({n}, {devices}),), jnp.float32),
                   sharding.data_sharding(mesh))
sizes = [s.data.nbytes for s in m.addressable_shards]
print(json.dumps({{'total_bytes': m.nbytes, 'per_device_bytes': max(sizes)}}))
'''
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       check=True, cwd=common._ROOT)
  return {'samples': n, 'devices': devices, **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--devices', default='1,2,4,8')
  p.add_argument('--steps', type=int, default=6)
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--margins', type=int, default=10_000_000)
  p.add_argument('--json', default='')
  p.add_argument('--worker', type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument('--out', default='', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args.worker, args.steps, args.batch_size, args.out)
    return
  import tempfile

  import numpy as np
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    ref = None
    for n in map(int, args.devices.split(',')):
      out = os.path.join(tmp, f'd{n}.npz')
      env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}')
      subprocess.run([sys.executable, os.path.abspath(__file__), f'--worker={n}',
                      f'--steps={args.steps}', f'--batch_size={args.batch_size}',
                      f'--out={out}'], env=env, check=True, cwd=common._ROOT)
      with open(out + '.json') as f:
        row = json.load(f)
      result = np.load(out)
      if ref is None:
        ref = result
      row['params_max_abs_diff_vs_1'] = float(np.max(np.abs(result['params'] - ref['params'])))
      row['params_equal_vs_1'] = bool(np.array_equal(result['params'], ref['params']))
      row['margins_equal_vs_1'] = bool(np.array_equal(result['margins'], ref['margins']))
      rows.append(row)
      print(common.table([row], list(row)).splitlines()[-1], flush=True)
  base = rows[0]['step_s']
  for r in rows:
    r['speedup_vs_1'] = base / r['step_s']
  print(common.table(rows, list(rows[0])))
  memory = [margins_memory(args.margins, d) for d in (8, 256)]
  for m in memory:
    print(f"margins of {m['samples']:,} samples on {m['devices']} devices: "
          f"{m['total_bytes'] / 2**20:.1f} MiB in all, {m['per_device_bytes'] / 2**20:.3f} MiB "
          'per device')
  common.write_json(args.json, {'benchmark': 'scaling', 'config': CONFIG,
                                'batch_size': args.batch_size, 'rows': rows,
                                'margins_memory': memory})


if __name__ == '__main__':
  main()
