"""Measured peak FLOP/s of this backend: a large float32 matmul and a large convolution, best of
a few runs; the yardstick the other benchmarks divide achieved FLOP/s by.

  python benchmarks/peak.py [--json=PATH]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def flops_of(compiled) -> float:
  """XLA's own count of floating-point operations of a compiled function (0 when unknown)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per device program.
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def _measure(fn, *args, repeats: int) -> dict:
  compiled = jax.jit(fn).lower(*args).compile()
  flops = flops_of(compiled)
  seconds = common.best_time(lambda: jax.block_until_ready(compiled(*args)), repeats)
  return {'flops': flops, 'seconds': seconds, 'flop_s': flops / seconds}


@functools.cache
def measure(repeats: int = 5) -> dict:
  """{'matmul': {...}, 'conv': {...}, 'peak_flop_s': the larger} on the default backend."""
  gpu = jax.default_backend() != 'cpu'
  n = 8192 if gpu else 2048
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = _measure(lambda x, y: x @ y, a, a, repeats=repeats)
  b, hw, c = (128, 64, 256) if gpu else (16, 64, 64)
  x = jax.random.normal(jax.random.key(1), (b, hw, hw, c), jnp.float32)
  k = jax.random.normal(jax.random.key(2), (3, 3, c, c), jnp.float32)
  conv = _measure(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')), x, k, repeats=repeats)
  return {'matmul': dict(matmul, shape=[n, n, n]),
          'conv': dict(conv, shape=[b, hw, hw, c, 3, 3, c]),
          'peak_flop_s': max(matmul['flop_s'], conv['flop_s'])}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--json', default='')
  args = p.parse_args()
  r = measure()
  for name in ('matmul', 'conv'):
    print(f"{name:7s} {r[name]['shape']}: {r[name]['flop_s'] / 1e9:8.1f} GFLOP/s")
  print(f"peak (the larger): {r['peak_flop_s'] / 1e9:.1f} GFLOP/s on {jax.default_backend()}")
  common.write_json(args.json, {'benchmark': 'peak', **r})


if __name__ == '__main__':
  main()
