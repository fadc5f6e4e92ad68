"""MSD Hippocampus as whole volumes (3-D U-Net, sliding window): AMAT (see
robust_med/presets/segmentation.py, volume_config, for the variants after the colon).

  python -m robust_med.main --config=configs/hippocampus3d_amat.py --workdir=runs/hippocampus3d_amat
  python -m robust_med.main --config=configs/hippocampus3d_amat.py:synthetic --workdir=/tmp/hippocampus3d_amat
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VOLUME_VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.volume_config('hippocampus', 'amat', arg)
