"""BCCD blood cells, object detection (anchor-free YOLO-style detector): AMAT.
Variants after the colon: '' (full-sized), 'cpu', 'synthetic' (see robust_med/presets/detection.py).

  python -m robust_med.main --config=configs/bccd_amat.py:cpu --config.data.root=../shared/data/bccd --workdir=runs/bccd_amat
  python -m robust_med.main --config=configs/bccd_amat.py:synthetic --workdir=/tmp/bccd_amat
"""

from robust_med.presets import detection as presets

VARIANTS = presets.VARIANTS  # What may follow the colon.


def get_config(arg: str = ''):
  return presets.bccd_config('amat', arg)
