"""BUSI breast ultrasound (normal / benign / malignant), classification (pre-activation ResNet, group norm): smoothadv.
Method settings: CLASSIFICATION_METHODS['smoothadv'] in robust_med/presets/classification.py. Variants after the colon: ''
(full-sized), 'cpu', 'synthetic' (see robust_med/presets/classification.py).

  python -m robust_med.main --config=configs/busi_smoothadv.py:cpu --config.data.root=../shared/data/busi --workdir=runs/busi_smoothadv
  python -m robust_med.main --config=configs/busi_smoothadv.py:synthetic --workdir=/tmp/busi_smoothadv
"""

from robust_med.presets import classification as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('busi', 'smoothadv', arg)
