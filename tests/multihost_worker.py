"""`python -m robust_med.main` with the same flags (the distributed ones included), but training
only (no robustness evaluation): the reference runs of tests/test_multihost.py.

  python tests/multihost_worker.py --config=... --workdir=... [--coordinator_address=... ...]
"""

from absl import app

from robust_med import cli, train
from robust_med import main as main_lib


def _train_only(config, workdir) -> dict:
  train.Trainer(config, workdir).train()
  return {}


if __name__ == '__main__':
  train.train_and_evaluate = _train_only
  cli.define_distributed_flags()
  app.call_after_init(cli.start_distributed)
  main_lib.main()
