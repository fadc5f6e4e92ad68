"""CPU host devices: `sharding.configure_host_devices` (config.mesh.host_devices)."""

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import REPO

CODE = '''
import json, sys
from robust_med import sharding
n = sharding.configure_host_devices(int(sys.argv[1]), int(sys.argv[2]))
import jax
print(json.dumps({"returned": n, "devices": len(jax.devices()),
                  "cores": sharding.available_cores()}))
'''


def host_devices(n, batch_size, xla_flags=''):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(JAX_PLATFORMS='cpu', **({'XLA_FLAGS': xla_flags} if xla_flags else {}))
  out = subprocess.run([sys.executable, '-c', CODE, str(n), str(batch_size)], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('n, batch, want', [(3, 0, 3), (1, 8, 1)])
def test_the_cpu_runs_as_the_requested_number_of_devices(n, batch, want):
  r = host_devices(n, batch)
  assert r['devices'] == want and r['returned'] == (None if n == 1 else n)


def test_zero_means_one_per_core_lowered_to_a_divisor_of_the_batch():
  r = host_devices(0, 0)
  assert r['devices'] == r['cores']
  r = host_devices(0, 1)  # No count above 1 divides a batch of 1.
  assert r['devices'] == 1


def test_xla_flags_take_precedence():
  r = host_devices(3, 0, '--xla_force_host_platform_device_count=5')
  assert r['returned'] is None and r['devices'] == 5
