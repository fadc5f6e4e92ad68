"""MSD Hippocampus: SAT (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/hippocampus_sat.py --workdir=runs/hippocampus_sat
  python -m robust_med.main --config=configs/hippocampus_sat.py:synthetic --workdir=/tmp/hippocampus_sat
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('hippocampus', 'sat', arg)
