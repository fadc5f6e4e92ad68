"""Compile time of a whole `robust_med.main` run (training and the robustness report): every jitted
step it compiles, in total and per function, with an empty and then a warm persistent compilation
cache, each run in a fresh process.

  python benchmarks/demo_compile.py                                  # the README's demo command
  python benchmarks/demo_compile.py --config=configs/ceph_amat.py:synthetic
  python benchmarks/demo_compile.py -- --config.num_epochs=2         # overrides for both runs

The first run is what a user's first `python -m robust_med.main --config=...:synthetic` pays; the
second is any later run of the same config (a resume, a sweep's next run, the same command again),
which loads the compiled steps from `config.compilation_cache_dir`. Compile seconds are JAX's own
trace + lowering + XLA-compile durations (`jax.monitoring`), summed per function.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)

DEFAULT_CONFIG = 'configs/prostate_amat.py:synthetic'


def one_run(config: str, workdir: str, cache_dir: str, overrides: list[str]) -> dict:
  """`robust_med.main` in this process, with the compile log listening."""
  log = common.CompileLog.get()
  from robust_med import main as main_lib
  argv = ['robust_med.main', f'--config={config}', f'--workdir={workdir}',
          f'--config.compilation_cache_dir={cache_dir}', '--config.progress_bar=False',
          *overrides]
  sys.argv = argv  # absl's config flag finds its overrides (--config.x) in sys.argv.
  with log.window() as compiled:
    t = time.perf_counter()
    try:
      main_lib.main(argv)
    except SystemExit as e:  # absl's app.run ends with sys.exit.
      if e.code not in (0, None):
        raise
    wall = time.perf_counter() - t
  return {'config': config, 'overrides': overrides, 'wall_s': wall,
          'compile_s': compiled['total'], 'xla_compile_s': compiled['xla'],
          'compiles': compiled['compiles'],
          'compile_by_function': {k: round(v, 3) for k, v in compiled['functions'].items()}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default=DEFAULT_CONFIG)
  p.add_argument('--json', default='', help='write the figures here')
  p.add_argument('--target', type=float, default=10.0, help='compile seconds in total to meet')
  p.add_argument('--one', default='', help=argparse.SUPPRESS)  # internal: workdir,cache,out
  p.add_argument('overrides', nargs='*', help='config overrides after --, for both runs')
  args = p.parse_args()
  if args.one:
    workdir, cache, out = args.one.split(',')
    with open(out, 'w') as f:
      json.dump(one_run(args.config, workdir, cache, args.overrides), f)
    return
  work = tempfile.mkdtemp(prefix='robust_med_compile_')
  cache = os.path.join(work, 'cache')
  rows = []
  try:
    for i, name in enumerate(('empty cache', 'warm cache')):
      out = os.path.join(work, f'{i}.json')
      cmd = [sys.executable, os.path.abspath(__file__), f'--config={args.config}',
             f"--one={os.path.join(work, f'run{i}')},{cache},{out}", '--', *args.overrides]
      print('$', ' '.join(cmd), flush=True)
      subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(
          __file__))))
      with open(out) as f:
        rows.append({'run': name, **json.load(f)})
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(common.table(rows, ['run', 'wall_s', 'compile_s', 'xla_compile_s', 'compiles']))
  for r in rows:
    print(f"{r['run']}: " + ', '.join(f'{k} {v:.1f} s' for k, v in
                                      list(r['compile_by_function'].items())[:8]))
  for r in rows:
    ok = 'ok' if r['compile_s'] <= args.target else 'MISSED'
    print(f"{r['run']}: compiling {r['compile_s']:.1f} s in total of {r['wall_s']:.1f} s "
          f"(target <= {args.target:g} s: {ok})")
  common.write_json(args.json, {'benchmark': 'demo_compile', 'rows': rows})


if __name__ == '__main__':
  main()
