"""PneumoniaMNIST chest X-rays (normal / pneumonia), classification (pre-activation ResNet, group norm): smoothadv.
Method settings: CLASSIFICATION_METHODS['smoothadv'] in robust_med/presets/classification.py. Variants after the colon: ''
(full-sized), 'cpu', 'synthetic' (see robust_med/presets/classification.py).

  python -m robust_med.main --config=configs/pneumonia_smoothadv.py:cpu --config.data.root=../shared/data/pneumoniamnist_variant --workdir=runs/pneumonia_smoothadv
  python -m robust_med.main --config=configs/pneumonia_smoothadv.py:synthetic --workdir=/tmp/pneumonia_smoothadv
"""

from robust_med.presets import classification as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('pneumonia', 'smoothadv', arg)
