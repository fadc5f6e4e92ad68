"""Wall time of a full robustness report (every noise level × PGD-<eval.steps> + APGD-<apgd_steps>,
the worst case and the gradient-masking checks) for a head's config, and how much of it was
compiling.

  python benchmarks/evaluation.py                                       # segmentation demo
  python benchmarks/evaluation.py --config=configs/ceph_amat.py:synthetic
  python benchmarks/evaluation.py --workdir=runs/demo                   # a trained checkpoint
  python benchmarks/evaluation.py --compare_to=/tmp/b755cb3             # before/after ratios
  python benchmarks/evaluation.py --ensemble=square,transfer             # the full ensemble ÷ today's

`--compare_to` takes a checkout of an earlier commit (`git worktree add /tmp/b755cb3 b755cb3`,
the commit before issue 13) and runs, back to back and each in a fresh process, the benchmark
there (one device, no compilation cache), then here with an empty and then a warm persistent
compilation cache, and prints the three times and their ratios to the first.

Without --workdir the parameters are a fresh initialisation (the attack's cost does not depend
on them). The report is computed exactly as `robust_med.main` computes it after training (the
config's eval section, its eval split); nothing is written but the benchmark's JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from robust_med import evaluate, sharding  # noqa: E402
from robust_med.tasks import get_task_class  # noqa: E402

DEFAULT_CONFIG = 'configs/prostate_amat.py:synthetic'


def run(config_spec: str, workdir: str = '', max_samples: int = -1, batch_size: int = 0,
        cache_dir: str = '', host_devices: int = 0, chunk_steps: int = -1,
        ensemble: tuple[str, ...] = (), square_queries: int = 0) -> dict:
  compile_log = common.CompileLog.get()
  config = common.load_config(config_spec)
  if host_devices != 1:
    sharding.configure_host_devices(host_devices)
    config.mesh.num_devices = 0
  if max_samples >= 0:
    config.eval.max_samples = max_samples
  if batch_size:
    config.eval.batch_size = batch_size
  if chunk_steps >= 0:
    config.eval.chunk_steps = chunk_steps
  if square_queries:
    config.eval.square_queries = square_queries
  if cache_dir:
    from robust_med import compile_cache
    compile_cache.enable(cache_dir)
  config.progress_bar = False
  task = get_task_class(config.task)(config)
  data, info = task.load_split(config.data.eval_split)
  data = evaluate.evaluation_subset(data, config.eval.max_samples)
  mesh = sharding.make_mesh(config.mesh.num_devices)
  if workdir:
    model, params, _ = evaluate.restore_model(task, workdir, info, data['image'], mesh)
  else:
    model = task.build_model(info)
    params = model.init(jax.random.key(config.seed), data['image'][:1])['params']
  evaluator = evaluate.make_evaluator(task, model, mesh, config)
  with compile_log.window() as compiled:
    t = time.perf_counter()
    report = evaluate.robustness_report(evaluator, params, data, config.eval,
                                        clip=config.attack.clip)
    wall = time.perf_counter() - t
  if ensemble:
    # The same report with the added attacks, in the same process: Square joins eval.attacks,
    # and the transfer attack is crafted on the model itself (a source costs the same whatever
    # its weights).
    base = {'wall_s': wall, 'compile_s': compiled['total'],
            'attacks': [a['name'] for a in report['attacks']]}
    config.eval.attacks = tuple(config.eval.attacks) + tuple(a for a in ensemble
                                                             if a != 'transfer')
    transfer = None
    if 'transfer' in ensemble:
      transfer = lambda pgd: evaluate.TransferAttack(
          pgd, evaluate.Evaluator(task, model, mesh, pgd, batch_size=config.eval.batch_size,
                                  seed=config.eval.seed, progress=False), params, 'itself')
    with compile_log.window() as compiled:
      t = time.perf_counter()
      report = evaluate.robustness_report(evaluator, params, data, config.eval,
                                          clip=config.attack.clip, transfer=transfer)
      wall = time.perf_counter() - t
    base['ratio'] = wall / base['wall_s']
  levels = sorted(set([0.0, *map(float, config.eval.noise_levels)]))
  return {'config': config_spec, 'task': task.name, 'samples': len(data['id']),
          'input': list(data['image'].shape[1:]), 'noise_levels': levels,
          'attacks': [a['name'] for a in report['attacks']],
          'masking_checks': bool(config.eval.masking_checks),
          'eval_batch_size': config.eval.batch_size, 'chunk_steps': evaluator.chunk,
          'wall_s': wall,
          'compile_s': compiled['total'], 'xla_compile_s': compiled['xla'],
          'compiles': compiled['compiles'],
          'compile_by_function': {k: round(v, 3) for k, v in compiled['functions'].items()},
          'run_s': wall - compiled['total'],
          'primary_metric_under_attack': [r[report['metric']] for r in report['results']],
          **({'without_the_added_attacks': base} if ensemble else {})}


def compare(args) -> None:
  """Before (in `--compare_to`) and after (empty cache, then warm cache), back to back."""
  import json
  import shutil
  import subprocess
  import tempfile
  here = os.path.dirname(os.path.abspath(__file__))
  before_dir = os.path.join(os.path.abspath(args.compare_to), 'benchmarks')
  os.makedirs(before_dir, exist_ok=True)
  for f in ('common.py', 'evaluation.py'):
    shutil.copy(os.path.join(here, f), before_dir)
  work = tempfile.mkdtemp(prefix='robust_med_eval_')
  cache = os.path.join(work, 'cache')
  flags = [f'--config={args.config}', f'--max_samples={args.max_samples}',
           f'--batch_size={args.batch_size}', f'--chunk_steps={args.chunk_steps}']
  if args.workdir:
    flags.append(f'--workdir={os.path.abspath(args.workdir)}')
  runs = [('before', before_dir, ['--host_devices=1']),
          ('after, empty cache', here, [f'--host_devices={args.host_devices}',
                                         f'--cache_dir={cache}']),
          ('after, warm cache', here, [f'--host_devices={args.host_devices}',
                                        f'--cache_dir={cache}'])]
  rows = []
  for i, (name, where, extra) in enumerate(runs):
    out = os.path.join(work, f'{i}.json')
    cmd = [sys.executable, os.path.join(where, 'evaluation.py'), *flags, *extra, f'--json={out}']
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=os.path.dirname(where))
    with open(out) as f:
      rows.append({'run': name, **json.load(f)})
  base = rows[0]['wall_s']
  for r in rows:
    r['speedup'] = base / r['wall_s']
  print(common.table(rows, ['run', 'wall_s', 'compile_s', 'xla_compile_s', 'run_s', 'compiles',
                            'speedup']))
  print('metric under attack:', {r['run']: np.round(r['primary_metric_under_attack'], 4).tolist()
                                  for r in rows})
  common.write_json(args.json, {'benchmark': 'evaluation_compare', 'before': args.compare_to,
                                'runs': rows})
  shutil.rmtree(work, ignore_errors=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default=DEFAULT_CONFIG)
  p.add_argument('--workdir', default='', help='evaluate this run\'s latest checkpoint')
  p.add_argument('--max_samples', type=int, default=-1, help='config.eval.max_samples (-1: the '
                 "config's)")
  p.add_argument('--batch_size', type=int, default=0, help="config.eval.batch_size (0: the "
                 "config's)")
  p.add_argument('--cache_dir', default='', help='JAX persistent compilation cache folder (as '
                 'robust_med\'s command-line runs use config.compilation_cache_dir); empty: off. '
                 'Run twice for the warm figure.')
  p.add_argument('--host_devices', type=int, default=0, help='CPU only: config.mesh.host_devices '
                 '(0 = one device per core, the default; 1 = one device)')
  p.add_argument('--chunk_steps', type=int, default=-1, help="config.eval.chunk_steps (-1: the "
                 "config's; 0: auto)")
  p.add_argument('--ensemble', default='', help='comma-separated attacks to add (square, apgd_t, '
                 'transfer): time the report without and then with them, in one process, and '
                 'print the ratio (target ≤ 2)')
  p.add_argument('--square_queries', type=int, default=0, help="config.eval.square_queries (0: "
                 "the config's)")
  p.add_argument('--json', default='', help='write the figures here')
  p.add_argument('--compare_to', default='', help='a checkout of an earlier commit (e.g. b755cb3, '
                 'before issue 13): run this benchmark there (1 device, no cache), then here with '
                 'an empty and a warm compilation cache, each in a fresh process, and print the '
                 'ratios')
  args = p.parse_args()
  if args.compare_to:
    compare(args)
    return
  r = run(args.config, args.workdir, args.max_samples, args.batch_size, args.cache_dir,
          args.host_devices, args.chunk_steps,
          tuple(a for a in args.ensemble.split(',') if a), args.square_queries)
  r['devices'] = len(jax.devices())
  r['cache_dir'] = args.cache_dir
  print(f"{r['config']}: {r['samples']} samples {r['input']}, levels {r['noise_levels']}, "
        f"attacks {r['attacks']}, checks {r['masking_checks']}")
  print(f"full report {r['wall_s']:.1f} s, of which compiling {r['compile_s']:.1f} s "
        f"({r['compiles']} compiles, XLA {r['xla_compile_s']:.1f} s), running {r['run_s']:.1f} s")
  for name, s in list(r['compile_by_function'].items())[:8]:
    print(f'  compile {name:40s} {s:6.1f} s')
  print('metric under attack:', np.round(r['primary_metric_under_attack'], 4).tolist())
  if 'without_the_added_attacks' in r:
    b = r['without_the_added_attacks']
    print(f"without {args.ensemble}: {b['wall_s']:.1f} s ({', '.join(b['attacks'])}; compiling "
          f"{b['compile_s']:.1f} s); with them {r['wall_s']:.1f} s: ratio {b['ratio']:.2f} "
          '(target <= 2)')
  common.write_json(args.json, {'benchmark': 'evaluation', **r})


if __name__ == '__main__':
  main()
