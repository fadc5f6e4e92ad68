"""MSD Prostate: SAT (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/prostate_sat.py --workdir=runs/prostate_sat
  python -m robust_med.main --config=configs/prostate_sat.py:synthetic --workdir=/tmp/prostate_sat
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('prostate', 'sat', arg)
