"""Tiny MSD-layout folders built in a test (dataset.json, imagesTr/, labelsTr/, splits.json)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np


def write_nifti(path, array) -> None:
  nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def make_msd(root, cases=('case_a', 'case_b', 'case_c'), *, image_shape=(6, 5, 4),
             label_shape=None, modalities=('T2',), label_value=1, classes=('background', 'organ'),
             splits: dict | None = None, seed: int = 0):
  """Writes a tiny MSD folder (label `label_value` in a block on slices 1-2 of every case, the
  image brighter there) and, if given, its splits.json; returns its root."""
  rng = np.random.default_rng(seed)
  (root / 'imagesTr').mkdir(parents=True)
  (root / 'labelsTr').mkdir()
  for case in cases:
    image = rng.uniform(0, 100, size=image_shape).astype(np.float32)
    label = np.zeros(label_shape or image_shape[:3], np.uint8)
    label[2:4, 2:4, 1:3] = label_value
    image[2:4, 2:4, 1:3] += 150
    write_nifti(root / 'imagesTr' / f'{case}.nii.gz', image)
    write_nifti(root / 'labelsTr' / f'{case}.nii.gz', label)
  info = {'name': 'Tiny', 'modality': {str(i): m for i, m in enumerate(modalities)},
          'labels': {str(i): c for i, c in enumerate(classes)},
          'training': [{'image': f'./imagesTr/{c}.nii.gz', 'label': f'./labelsTr/{c}.nii.gz'}
                       for c in cases]}
  (root / 'dataset.json').write_text(json.dumps(info))
  if splits is not None:
    (root / 'splits.json').write_text(json.dumps(splits))
  return root
