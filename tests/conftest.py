"""Test set-up: 8 simulated CPU devices and unoptimised XLA code (before JAX starts), and the
trained runs the CLI tests share (one per session, whatever the number of xdist workers)."""

import os

from cli_helpers import XLA_FLAGS

# Unoptimised code compiles faster, and compiling is most of what the tests' tiny models cost;
# their subprocesses and notebooks compile alike (cli_helpers.XLA_FLAGS).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count=8 {XLA_FLAGS}').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def segmentation_run(tmp_path_factory):
  """The tiny synthetic segmentation run (cli_helpers.TINY, masking checks on, the last 2
  checkpoints kept: steps 10 and 12) that the CLI and evaluate tests share."""
  from cli_helpers import CONFIG, TINY, shared_run
  return shared_run(tmp_path_factory, 'segmentation', 'robust_med.main',
                    f'--config={CONFIG}:synthetic', *TINY, '--config.keep_checkpoints=2')


def pytest_collection_modifyitems(items):
  """The `slow` tests (whole runs, notebooks) first, each group in its usual order: under
  `pytest -n 2` the long ones are then shared out between the workers at the start and the
  short ones fill in at the end, instead of one worker finishing a notebook alone."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
