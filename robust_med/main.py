"""Entry point `python -m robust_med.main`: train a model with a robustness method, then evaluate it.

  python -m robust_med.main --config=configs/prostate_amat.py --workdir=runs/prostate_amat
  python -m robust_med.main --config=configs/prostate_amat.py:synthetic --workdir=/tmp/demo

Several processes (hosts, or one process per GPU) train one model together when each is started
with the same flags plus the distributed ones (see docs/scale.md, "Launching on several hosts"):

  python -m robust_med.main ... --coordinator_address=HOST0:1234 --num_processes=2 --process_id=0
  python -m robust_med.main ... --distributed   # under SLURM / Open MPI / a TPU pod: auto-detected
"""

import os

from absl import app, flags
from ml_collections import config_flags

from robust_med import cli


def main(argv=None) -> None:
  """Parses the flags (`--config`, `--workdir`) and trains and evaluates; bad input ends in one
  `error:` line with exit status 2."""
  config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/prostate_amat.py or '
                                  'configs/prostate_amat.py:synthetic.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics.jsonl and reports.')
  flags.mark_flags_as_required(['config', 'workdir'])

  @cli.guard
  def run(argv):
    cli.reject_positional(argv)
    from robust_med import train  # Not before the flags: a bad flag fails before JAX loads.
    config = flags.FLAGS.config
    cli.prepare(config)
    train.train_and_evaluate(config, flags.FLAGS.workdir)
    print(f'Done: outputs in {os.path.abspath(flags.FLAGS.workdir)}')

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  cli.define_distributed_flags()
  app.call_after_init(cli.start_distributed)
  main()
