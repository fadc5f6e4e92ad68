"""PneumoniaMNIST chest X-rays (normal / pneumonia), classification (pre-activation ResNet, group norm): std_noise.
Method settings: CLASSIFICATION_METHODS['std_noise'] in robust_med/presets/classification.py. Variants after the colon: ''
(full-sized), 'cpu', 'synthetic' (see robust_med/presets/classification.py).

  python -m robust_med.main --config=configs/pneumonia_std_noise.py:cpu --config.data.root=../shared/data/pneumoniamnist_variant --workdir=runs/pneumonia_std_noise
  python -m robust_med.main --config=configs/pneumonia_std_noise.py:synthetic --workdir=/tmp/pneumonia_std_noise
"""

from robust_med.presets import classification as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.classification_config('pneumonia', 'std_noise', arg)
