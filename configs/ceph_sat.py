"""ISBI 2015 cephalograms, landmark detection (Multi-Task U-Net, Dice heatmap loss): SAT.
Variants after the colon: '' (full-sized), 'cpu', 'synthetic' (see robust_med/presets/landmarks.py).

  python -m robust_med.main --config=configs/ceph_sat.py:cpu --config.data.root=../shared/data/isbi2015_ceph --workdir=runs/ceph_sat
  python -m robust_med.main --config=configs/ceph_sat.py:synthetic --workdir=/tmp/ceph_sat
"""

from robust_med.presets import landmarks as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.ceph_config('sat', arg)
