"""MSD Heart: AMAT (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/heart_amat.py --workdir=runs/heart_amat
  python -m robust_med.main --config=configs/heart_amat.py:synthetic --workdir=/tmp/heart_amat
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('heart', 'amat', arg)
