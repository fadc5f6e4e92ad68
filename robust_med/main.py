"""Train a model with a robustness method, then evaluate it under attack.

  python -m robust_med.main --config=configs/prostate_amat.py --workdir=runs/prostate_amat
  python -m robust_med.main --config=configs/prostate_amat.py:synthetic --workdir=/tmp/demo
"""

from robust_med import cli

if __name__ == '__main__':
  cli.run_main()
