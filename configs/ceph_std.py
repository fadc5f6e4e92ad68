"""ISBI 2015 cephalograms, landmark detection (Multi-Task U-Net, Dice heatmap loss): STD.
Variants after the colon: '' (full-sized), 'cpu', 'synthetic' (see robust_med/presets/landmarks.py).

  python -m robust_med.main --config=configs/ceph_std.py:cpu --config.data.root=../shared/data/isbi2015_ceph --workdir=runs/ceph_std
  python -m robust_med.main --config=configs/ceph_std.py:synthetic --workdir=/tmp/ceph_std
"""

from robust_med.presets import landmarks as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.ceph_config('std', arg)
