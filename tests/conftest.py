"""Test set-up: 8 simulated CPU devices (before JAX starts), and the trained runs the CLI tests
share (one per session, whatever the number of xdist workers)."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def segmentation_run(tmp_path_factory):
  """The tiny synthetic segmentation run (cli_helpers.TINY, masking checks on, the last 2
  checkpoints kept: steps 10 and 12) that the CLI and evaluate tests share."""
  from cli_helpers import CONFIG, TINY, shared_run
  return shared_run(tmp_path_factory, 'segmentation', 'robust_med.main',
                    f'--config={CONFIG}:synthetic', *TINY, '--config.keep_checkpoints=2')
