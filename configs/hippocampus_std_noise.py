"""MSD Hippocampus: STD trained on Gaussian noise of std 0.25, a base model for randomized smoothing
(python -m robust_med.certify; docs/certified.md). Variants after the colon: see
robust_med/presets/segmentation.py.

  python -m robust_med.main --config=configs/hippocampus_std_noise.py --workdir=runs/hippocampus_std_noise
  python -m robust_med.main --config=configs/hippocampus_std_noise.py:synthetic --workdir=/tmp/hippocampus_std_noise
"""

from robust_med.presets import segmentation as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.msd_config('hippocampus', 'std_noise', arg)
