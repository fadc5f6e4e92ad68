"""PneumoniaMNIST chest X-rays (normal / pneumonia), classification (pre-activation ResNet, group norm): at_aug.
Method settings: CLASSIFICATION_METHODS['at_aug'] in robust_med/presets/classification.py. Variants after the colon: ''
(full-sized), 'cpu', 'synthetic' (see robust_med/presets/classification.py).

  python -m robust_med.main --config=configs/pneumonia_at_aug.py:cpu --config.data.root=../shared/data/pneumoniamnist_variant --workdir=runs/pneumonia_at_aug
  python -m robust_med.main --config=configs/pneumonia_at_aug.py:synthetic --workdir=/tmp/pneumonia_at_aug
"""

from robust_med.presets import classification as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('pneumonia', 'at_aug', arg)
