"""MSD Prostate: STD (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/prostate_std.py --workdir=runs/prostate_std
  python -m robust_med.main --config=configs/prostate_std.py:synthetic --workdir=/tmp/prostate_std
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('prostate', 'std', arg)
