"""ISBI 2015 cephalograms, landmark detection (Multi-Task U-Net, Dice heatmap loss): STD trained on Gaussian noise of std 0.25,
a base model for randomized smoothing (python -m robust_med.certify; docs/certified.md).
Variants after the colon: '' (full-sized), 'cpu', 'synthetic' (see robust_med/presets/landmarks.py).

  python -m robust_med.main --config=configs/ceph_std_noise.py:cpu --config.data.root=../shared/data/isbi2015_ceph --workdir=runs/ceph_std_noise
  python -m robust_med.main --config=configs/ceph_std_noise.py:synthetic --workdir=/tmp/ceph_std_noise
"""

from robust_med.presets import landmarks as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.ceph_config('std_noise', arg)
