"""Data layer: dataset splits as dicts of numpy arrays, plus deterministic batching.

`load_split(config.data, split)` loads a named split (`split_names(config.data)` lists those the
dataset declares) and returns ``(arrays, info)`` where `arrays` holds 'image'
(N, H, W, C) float32, 'label' (N, H, W) int32, 'id' (int32 arange(N)), 'case_index' and
'slice_index' (int32), and `info` is a `SegmentationInfo`. With ``data.ndim = 3`` the records are
whole volumes: 'image' (N, X, Y, Z, C), 'label' (N, X, Y, Z), 'in_image' (N, X, Y, Z) bool (the
volume's own voxels in a common padded grid), 'id' and 'case_index'. Wrap `arrays` in `ArraySource` and
iterate it with `batches`; the trainer reads its batches (in a multi-process run each process's
rows of the same global batches) through `robust_med.data.pipeline`, from memory or records.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robust_med.data.msd import (SegmentationInfo, available_splits, load_msd_slices,
                                 load_msd_volumes, read_msd_info, split_cases)
from robust_med.data.source import ArraySource, batches, epoch_order, num_batches
from robust_med.data.synthetic import make_phantoms
from robust_med.errors import ConfigError, DataError

__all__ = [
    'ArraySource', 'SegmentationInfo', 'available_splits', 'batches', 'epoch_order',
    'load_msd_slices', 'load_split', 'make_phantoms', 'num_batches',
    'read_msd_info', 'split_cases', 'split_names', 'DATASETS',
]

DATASETS = ('synthetic', 'msd')
SYNTHETIC_SPLITS = ('train', 'val', 'test')
_SYNTHETIC_CLASSES = {2: ('background', 'organ'), 3: ('background', 'zone1', 'zone2')}


def _required(data_config: Any, key: str) -> Any:
  """A required data-config field; ConfigError naming it if absent."""
  value = data_config.get(key, None)
  if value is None:
    raise ConfigError(f'data config has no {key!r} (data.name={data_config.get("name")!r}): '
                      f'set --config.data.{key}=...')
  return value


def _synthetic_tune_size(data_config: Any) -> int:
  """Samples of the synthetic 'tune' split: data.tune_fraction of num_train (0 = no such split)."""
  fraction = float(data_config.get('tune_fraction', 0.0) or 0.0)
  return round(fraction * int(data_config.get('num_train', 0) or 0)) if fraction else 0


def _load_synthetic(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], SegmentationInfo]:
  """Synthetic phantoms: train, val and test use data.seed + 0, 1, 2; test has num_val samples.
  With data.tune_fraction > 0, 'tune' (seed + 3) takes that fraction of num_train from train."""
  if split not in SYNTHETIC_SPLITS + ('tune',):
    raise DataError(f'unknown split {split!r}: the synthetic dataset has the splits '
                    f'{list(SYNTHETIC_SPLITS)}')
  tune = _synthetic_tune_size(data_config)
  if split == 'tune' and not tune:
    raise DataError("unknown split 'tune': set data.tune_fraction > 0 to carve it from the "
                    f'synthetic training split (splits: {list(SYNTHETIC_SPLITS)})')
  num = int(_required(data_config, 'num_train' if split in ('train', 'tune') else 'num_val'))
  num = {'train': num - tune, 'tune': tune}.get(split, num)
  patch_size = tuple(int(s) for s in data_config.get('patch_size', (64, 64)))
  num_classes = int(data_config.get('num_classes', 3))
  channels = int(data_config.get('channels', 1))
  seed = int(data_config.get('seed', 0)) + (SYNTHETIC_SPLITS + ('tune',)).index(split)
  spacing = ()
  if _ndim(data_config) == 3:  # Whole 3-D phantoms, each filling its grid.
    from robust_med.data.synthetic_volumes import make_volume_phantoms
    spacing = tuple(float(s) for s in data_config.get('spacing', ()) or (1.0, 1.0, 1.0))
    patch_size = tuple(int(s) for s in data_config.get('volume_shape', ()) or (32, 40, 32))
    arrays = make_volume_phantoms(num, shape=patch_size, num_classes=num_classes,  # The grid.
                                  channels=channels, seed=seed, spacing=spacing)
    del arrays['spacing']
    arrays['in_image'] = np.ones(arrays['label'].shape, bool)
  else:
    arrays = make_phantoms(num, patch_size=patch_size, num_classes=num_classes,
                           channels=channels, seed=seed)
    arrays['slice_index'] = np.zeros(num, np.int32)
  arrays['case_index'] = arrays['id'].copy()
  class_names = _SYNTHETIC_CLASSES.get(num_classes, ())
  info = SegmentationInfo(name='synthetic', num_classes=num_classes, class_names=class_names,
                          channels=channels, patch_size=patch_size, num_volumes=num,
                          cases=tuple(f'phantom_{split}_{i:05d}' for i in range(num)),
                          spacing=spacing)
  return arrays, info


def _volume_patch(data_config: Any) -> tuple[int, ...]:
  """The 3-D patch every volume grid must hold ((1, 1, 1) for a slice-wise 2-D model's)."""
  patch = tuple(int(s) for s in data_config.get('patch_size', ()))
  return patch if len(patch) == 3 else (1, 1, 1)


def _ndim(data_config: Any) -> int:
  return int(data_config.get('ndim', 2) or 2)


def _load_msd(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], SegmentationInfo]:
  """MSD 2-D slices (or whole volumes, data.ndim = 3) from data.root."""
  max_volumes = int(data_config.get('max_volumes', 0) or 0)
  if _ndim(data_config) == 3:
    return load_msd_volumes(
        data_config.get('root', None), split,
        spacing=tuple(float(s) for s in data_config.get('spacing', ()) or ()),
        volume_shape=tuple(int(s) for s in data_config.get('volume_shape', ()) or ()),
        min_shape=_volume_patch(data_config),
        val_fraction=float(data_config.get('val_fraction', 0.2)),
        max_volumes=max_volumes or None, **_tune(data_config))
  return load_msd_slices(
      data_config.get('root', None), split,
      patch_size=tuple(data_config.get('patch_size', (64, 64))),
      slice_axis=int(data_config.get('slice_axis', 2)),
      foreground_only=bool(data_config.get('foreground_only', True)),
      val_fraction=float(data_config.get('val_fraction', 0.2)),
      max_volumes=max_volumes or None,
      resize=bool(data_config.get('resize', False)),
      **_tune(data_config))


def _tune(data_config: Any) -> dict:
  return {'tune_fraction': float(data_config.get('tune_fraction', 0.0) or 0.0),
          'tune_from': str(data_config.get('train_split', 'train'))}


def _dataset_name(data_config: Any) -> str:
  name = data_config.get('name', None)
  if name not in DATASETS:
    raise DataError(f'unknown dataset data.name={name!r}: use one of {list(DATASETS)} '
                    '(e.g. --config.data.name=synthetic)')
  return name


def split_names(data_config: Any) -> tuple[str, ...]:
  """The splits the dataset declares (for MSD: the lists in splits.json, else train/val)."""
  if _dataset_name(data_config) == 'synthetic':
    return SYNTHETIC_SPLITS + (('tune',) if _synthetic_tune_size(data_config) else ())
  return tuple(available_splits(data_config.get('root', None),
                                float(data_config.get('val_fraction', 0.2)), **_tune(data_config)))


def load_split(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], SegmentationInfo]:
  """Loads the named `split` of the dataset named by ``data_config.name`` (DataError listing the
  splits present when the dataset has no such split)."""
  if _dataset_name(data_config) == 'synthetic':
    return _load_synthetic(data_config, split)
  return _load_msd(data_config, split)
