"""MSD Hippocampus: AMAT (see robust_med/presets/segmentation.py for the variants after the colon).

  python -m robust_med.main --config=configs/hippocampus_amat.py --workdir=runs/hippocampus_amat
  python -m robust_med.main --config=configs/hippocampus_amat.py:synthetic --workdir=/tmp/hippocampus_amat
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('hippocampus', 'amat', arg)
