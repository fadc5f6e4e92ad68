"""BCCD blood cells, object detection (anchor-free YOLO-style detector): STD trained on Gaussian noise of std 0.25,
a base model for randomized smoothing (python -m robust_med.certify; docs/certified.md).
Variants after the colon: '' (full-sized), 'cpu', 'synthetic' (see robust_med/presets/detection.py).

  python -m robust_med.main --config=configs/bccd_std_noise.py:cpu --config.data.root=../shared/data/bccd --workdir=runs/bccd_std_noise
  python -m robust_med.main --config=configs/bccd_std_noise.py:synthetic --workdir=/tmp/bccd_std_noise
"""

from robust_med.presets import detection as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.bccd_config('std_noise', arg)
