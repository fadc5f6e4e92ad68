"""MSD Heart: SAT (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/heart_sat.py --workdir=runs/heart_sat
  python -m robust_med.main --config=configs/heart_sat.py:synthetic --workdir=/tmp/heart_sat
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('heart', 'sat', arg)
