"""MSD Heart: STD (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/heart_std.py --workdir=runs/heart_std
  python -m robust_med.main --config=configs/heart_std.py:synthetic --workdir=/tmp/heart_std
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('heart', 'std', arg)
