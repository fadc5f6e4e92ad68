"""MSD Hippocampus as whole volumes (3-D U-Net, sliding window): VAFT, frequency-domain adversarial training (Hanif et al. 2023; see
robust_med/presets/segmentation.py, volume_config, for the variants after the colon).

  python -m robust_med.main --config=configs/hippocampus3d_vaft.py --workdir=runs/hippocampus3d_vaft
  python -m robust_med.main --config=configs/hippocampus3d_vaft.py:synthetic --workdir=/tmp/hippocampus3d_vaft
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VOLUME_VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.volume_config('hippocampus', 'vaft', arg)
