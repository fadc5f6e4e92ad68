"""BUSI breast ultrasound (normal / benign / malignant), classification (pre-activation ResNet, group norm): at_gradreg.
Method settings: CLASSIFICATION_METHODS['at_gradreg'] in robust_med/presets/classification.py. Variants after the colon: ''
(full-sized), 'cpu', 'synthetic' (see robust_med/presets/classification.py).

  python -m robust_med.main --config=configs/busi_at_gradreg.py:cpu --config.data.root=../shared/data/busi --workdir=runs/busi_at_gradreg
  python -m robust_med.main --config=configs/busi_at_gradreg.py:synthetic --workdir=/tmp/busi_at_gradreg
"""

from robust_med.presets import classification as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('busi', 'at_gradreg', arg)
