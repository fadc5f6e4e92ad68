"""PneumoniaMNIST chest X-rays (normal / pneumonia), classification (pre-activation ResNet, group norm): rtda.
The method's settings are presets.CLASSIFICATION_METHODS['rtda']. Variants after the colon: ''
(paper-sized), 'cpu', 'synthetic' (see robust_med/presets.py).

  python -m robust_med.main --config=configs/pneumonia_rtda.py:cpu --config.data.root=../shared/data/pneumoniamnist_variant --workdir=runs/pneumonia_rtda
  python -m robust_med.main --config=configs/pneumonia_rtda.py:synthetic --workdir=/tmp/pneumonia_rtda
"""

from robust_med import presets

VARIANTS = presets.CLASSIFICATION_VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('pneumonia', 'rtda', arg)
