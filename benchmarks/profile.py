"""Where a train step's time goes: a `jax.profiler` trace of a few steps of each method, its XLA
operations summed by kind (convolutions, fusions, gathers and scatters, copies, collectives, ...)
and the largest single operations, read back with `jax.profiler.ProfileData` (no TensorBoard).

  python benchmarks/profile.py                                     # segmentation demo, SAT vs AMAT
  python benchmarks/profile.py --config=configs/bccd_amat.py:synthetic --methods=sat,amat
  python benchmarks/profile.py --keep=/tmp/trace    # keep the trace for TensorBoard / Perfetto

Same step as `train_step.py` (its flags: --pgd_steps, --batch_size, --patch, --width, --depth).
The kind is the operation's name without its number (XLA names ops by kind: `convolution.12`,
`fusion.3`, `scatter.1`); fusions are named by XLA after what they compute when it can
(`loop_add_fusion`, `input_reduce_fusion`, ...). Totals are summed over every thread, so on a
CPU they can exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import train_step  # noqa: E402

import jax  # noqa: E402

# Trace events that are not XLA operations (the host-side runtime around them).
_NOT_OPS = re.compile(r'^(\$|ThunkExecutor|PjRt|CommonPjRt|TfrtCpu|Execute|XlaModule|'
                      r'ThreadpoolListener|TraceMe|end_to_end|Thunk:|ExecuteHelper|PjitFunction|'
                      r'jit_|train$)')


def kind(name: str) -> str:
  """'convolution.12' -> 'convolution'; 'loop_add_fusion.3' -> 'loop_add_fusion'."""
  return re.sub(r'(\.\d+)+$', '', name)


def op_events(log_dir: str):
  """(op name, duration seconds) of every XLA-operation event of the trace in `log_dir`."""
  paths = glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    raise SystemExit(f'no trace written under {log_dir}')
  data = jax.profiler.ProfileData.from_file(max(paths, key=os.path.getmtime))
  for plane in data.planes:
    if not re.search(r'(CPU|GPU|TPU|device)', plane.name):
      continue
    for line in plane.lines:
      if line.name in ('XLA Modules', 'Steps', 'Framework Ops', 'Framework Name Scope'):
        continue  # Whole-program or Python-level spans: the ops are on the other lines.
      for event in line.events:
        if not _NOT_OPS.match(event.name):
          yield event.name, event.duration_ns * 1e-9


def profile(args, method: str, steps: int, keep: str = '') -> dict:
  step, state, batch = train_step.compiled_step(args, method)
  for _ in range(2):  # Warm up outside the trace.
    state, m = step(state, batch)
  jax.block_until_ready((state, m))
  log_dir = keep or tempfile.mkdtemp(prefix='robust_med_profile_')
  with jax.profiler.trace(log_dir):
    for i in range(steps):
      with jax.profiler.StepTraceAnnotation('train', step_num=i):
        state, m = step(state, batch)
    jax.block_until_ready((state, m))
  by_kind: dict[str, float] = collections.defaultdict(float)
  count: dict[str, int] = collections.defaultdict(int)
  by_op: dict[str, float] = collections.defaultdict(float)
  for name, seconds in op_events(log_dir):
    by_kind[kind(name)] += seconds / steps
    count[kind(name)] += 1
    by_op[name] += seconds / steps
  return {'method': method, 'steps': steps, 'trace': log_dir if keep else '',
          'op_seconds_per_step': sum(by_kind.values()),
          'by_kind': dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
          'count_per_step': {k: count[k] / steps for k in by_kind},
          'top_ops': dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:args.top])}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/prostate_amat.py:synthetic')
  p.add_argument('--methods', default='sat,amat')
  p.add_argument('--steps', type=int, default=3, help='traced steps per method')
  p.add_argument('--top', type=int, default=12, help='kinds and single ops listed')
  p.add_argument('--keep', default='', help='write the traces here (one folder per method)')
  p.add_argument('--pgd_steps', type=int, default=10)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--patch', type=int, default=0)
  p.add_argument('--width', type=int, default=0)
  p.add_argument('--depth', type=int, default=0)
  p.add_argument('--devices', type=int, default=1)
  p.add_argument('--compute_dtype', default='float32')
  p.add_argument('--data_root', default='')
  p.add_argument('--json', default='')
  args = p.parse_args()
  results = []
  for method in args.methods.split(','):
    keep = os.path.join(args.keep, method.replace(':', '_')) if args.keep else ''
    r = profile(args, method, args.steps, keep)
    results.append(r)
    print(f'\n{method}: XLA ops {r["op_seconds_per_step"] * 1e3:.1f} ms per step (summed over '
          f'threads), by kind:')
    rows = [{'kind': k, 'ms_per_step': v * 1e3, 'share': v / r['op_seconds_per_step'],
             'ops_per_step': r['count_per_step'][k]}
            for k, v in list(r['by_kind'].items())[:args.top]]
    print(common.table(rows, ['kind', 'ms_per_step', 'share', 'ops_per_step']))
  if len(results) > 1:  # What the other methods add to the first, kind by kind.
    base = results[0]
    for r in results[1:]:
      extra = {k: v - base['by_kind'].get(k, 0.0) for k, v in r['by_kind'].items()}
      extra = dict(sorted(extra.items(), key=lambda kv: -kv[1])[:args.top])
      print(f'\n{r["method"]} − {base["method"]}: '
            f'{(r["op_seconds_per_step"] - base["op_seconds_per_step"]) * 1e3:+.1f} ms per step; '
            'largest additions by kind (ms): '
            + ', '.join(f'{k} {v * 1e3:+.2f}' for k, v in extra.items()))
  common.write_json(args.json, {'benchmark': 'profile', 'config': args.config,
                                'pgd_steps': args.pgd_steps, 'batch_size': args.batch_size,
                                'results': results})


if __name__ == '__main__':
  main()
