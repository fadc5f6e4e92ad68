"""Train a model with a robustness method, then evaluate it under attack.

  python -m robust_med.main --config=configs/prostate_amat.py --workdir=runs/prostate_amat
  python -m robust_med.main --config=configs/prostate_amat.py:synthetic --workdir=/tmp/demo

Several processes (hosts, or one process per GPU) train one model together when each is started
with the same flags plus the distributed ones (see README, "Launching on several hosts"):

  python -m robust_med.main ... --coordinator_address=HOST0:1234 --num_processes=2 --process_id=0
  python -m robust_med.main ... --distributed   # under SLURM / Open MPI / a TPU pod: auto-detected
"""

from absl import app, flags

from robust_med import cli


def define_distributed_flags() -> None:
  flags.DEFINE_bool('distributed', False, 'Start a multi-process run with '
                    'jax.distributed.initialize(): arguments not given by the three flags below '
                    '(or JAX_COORDINATOR_ADDRESS) are detected from SLURM, Open MPI or a TPU pod. '
                    'Implied by any of the three flags.')
  flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0\'s coordinator, '
                      'reachable from every process (multi-process runs).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
  flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 … num_processes - 1.')


def start_distributed() -> None:
  """Runs after flag parsing and before anything touches a device."""
  f = flags.FLAGS
  given = (f.coordinator_address, f.num_processes, f.process_id)
  if not f.distributed and all(v is None for v in given):
    return
  from absl import logging
  from robust_med import sharding
  from robust_med.errors import UserError
  logging.set_verbosity(logging.WARNING)  # Not JAX's INFO lines about the coordinator.
  try:
    sharding.initialize_distributed(*given)
  except UserError as e:
    cli.fail(str(e))


if __name__ == '__main__':
  define_distributed_flags()
  app.call_after_init(start_distributed)
  cli.run_main()
