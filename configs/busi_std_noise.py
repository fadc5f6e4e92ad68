"""BUSI breast ultrasound (normal / benign / malignant), classification (pre-activation ResNet, group norm): std_noise.
Method settings: CLASSIFICATION_METHODS['std_noise'] in robust_med/presets/classification.py. Variants after the colon: ''
(full-sized), 'cpu', 'synthetic' (see robust_med/presets/classification.py).

  python -m robust_med.main --config=configs/busi_std_noise.py:cpu --config.data.root=../shared/data/busi --workdir=runs/busi_std_noise
  python -m robust_med.main --config=configs/busi_std_noise.py:synthetic --workdir=/tmp/busi_std_noise
"""

from robust_med.presets import classification as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('busi', 'std_noise', arg)
