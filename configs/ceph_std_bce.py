"""ISBI 2015 cephalograms: STD with the heatmap BCE loss of Yao et al. (the paper's "STD(BCE)").
Variants after the colon: '' (full-sized), 'cpu', 'synthetic' (see robust_med/presets/landmarks.py).

  python -m robust_med.main --config=configs/ceph_std_bce.py:cpu --config.data.root=../shared/data/isbi2015_ceph --workdir=runs/ceph_std_bce
"""

from robust_med.presets import landmarks as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.ceph_config('std', arg, heatmap_loss='bce')
