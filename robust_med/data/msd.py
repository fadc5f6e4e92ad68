"""Medical Segmentation Decathlon (MSD) loader: volumes -> normalised 2-D slices, or whole volumes.

Layout: ``root/dataset.json``, ``root/imagesTr/``, ``root/labelsTr/`` and optionally
``root/splits.json`` ({"train": [case, ...], "val": [case, ...], "test": [...], ...}: every key
whose value is a list is a named split; a case is a file name without ``.nii.gz`` listed under
"training" in dataset.json). Without splits.json there are two splits: cases are sorted by the sha1
hex digest of their file name and the first round(val_fraction * n) form "val", the rest "train".
Splits are at the volume level.
Records are ordered by (case name, slice index) and ``id = arange(N)`` in that order.

`load_msd_volumes` keeps each case whole (the 3-D segmentation head, `data.ndim = 3`): resampled
to a target spacing (`volumes.resample`: cubic for images, nearest for labels), z-scored per volume
and channel, and centred in a common grid with zero padding (the z-scored mean, what nnU-Net pads
with). An `in_image` mask marks each volume's own voxels, so that metrics and attacks leave the
padding out (`Task` documents the key). One record per case: ``id = arange(number of cases)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

import robust_med.data.reading as reading
from robust_med.errors import ConfigError, DataError

_LAYOUT = 'the Medical Segmentation Decathlon layout (dataset.json, imagesTr/, labelsTr/)'
_FETCH = ('download TaskXX from http://medicaldecathlon.com and extract it there, '
          'or pass --config.data.root=PATH')
_DEMO = 'or run the offline demo with --config=configs/prostate_amat.py:synthetic'
_REQUIRED_KEYS = ('name', 'modality', 'labels', 'training')


@dataclasses.dataclass(frozen=True)
class SegmentationInfo:
  """Describes one loaded segmentation split."""
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  channels: int
  patch_size: tuple[int, int]
  num_volumes: int  # In this split.
  cases: tuple[str, ...]  # Case names in this split, in id order.
  split_volumes: int = 0  # Volumes the split declares (more than num_volumes under max_volumes).
  spacing: tuple[float, ...] = ()  # Volumes: mm per voxel of the (resampled) grid; () for slices.


def _root_dir(root: str | os.PathLike) -> Path:
  """The dataset folder as a Path; DataError if it does not exist."""
  if root is None or not str(root).strip():
    raise DataError('MSD data root is not set: pass --config.data.root=PATH to a folder with '
                    f'{_LAYOUT}, {_DEMO}')
  path = Path(root).expanduser()
  if not path.is_dir():
    raise DataError(f'MSD folder {path} does not exist: put {_LAYOUT} there '
                    f'(download {path.name} from http://medicaldecathlon.com) '
                    f'or pass --config.data.root=PATH, {_DEMO}')
  return path


def _load_json(path: Path) -> Any:
  """Parses a JSON file; DataError naming the file and the parse problem otherwise."""
  return reading.read_json(path)


def _index_keys(mapping: Any, path: Path, key: str) -> list[str]:
  """Values of a {"0": ..., "1": ...} dict in index order; DataError unless keys are 0..K-1."""
  if not isinstance(mapping, dict) or not mapping:
    raise DataError(f'{path} key "{key}" must be a non-empty dict like {{"0": "...", "1": "..."}}, '
                    f'got {type(mapping).__name__}: fix the file')
  expected = [str(i) for i in range(len(mapping))]
  if sorted(mapping, key=lambda k: (len(k), k)) != expected:
    raise DataError(f'{path} key "{key}" has keys {sorted(mapping)}: they must be the '
                    f'consecutive indices {expected}; fix the file')
  return [str(mapping[k]) for k in expected]


def _check_training(training: Any, path: Path) -> None:
  """DataError unless `training` is a non-empty list of {"image": str, "label": str}."""
  if not isinstance(training, list) or not training:
    raise DataError(f'{path} key "training" must be a non-empty list of '
                    '{"image": ..., "label": ...} entries: fix or re-download the file')
  for i, entry in enumerate(training):
    if not (isinstance(entry, dict) and isinstance(entry.get('image'), str)
            and isinstance(entry.get('label'), str)):
      raise DataError(f'{path} "training" entry {i} is {entry!r}: each entry needs string '
                      '"image" and "label" paths like "./imagesTr/x.nii.gz"; fix the file')


def read_msd_info(root: str | os.PathLike) -> dict[str, Any]:
  """Parses and validates ``root/dataset.json`` (and checks imagesTr/, labelsTr/ exist)."""
  path = _root_dir(root)
  json_path = path / 'dataset.json'
  if not json_path.is_file():
    raise DataError(f'MSD folder {path} has no dataset.json: expected {_LAYOUT}; {_FETCH}')
  info = _load_json(json_path)
  if not isinstance(info, dict):
    raise DataError(f'{json_path} must hold a JSON object, got {type(info).__name__}: '
                    'fix or re-download the file')
  missing = [key for key in _REQUIRED_KEYS if key not in info]
  if missing:
    raise DataError(f'{json_path} lacks the keys {missing}: an MSD dataset.json needs '
                    f'{list(_REQUIRED_KEYS)}; fix or re-download the file')
  _index_keys(info['modality'], json_path, 'modality')
  if len(_index_keys(info['labels'], json_path, 'labels')) < 2:
    raise DataError(f'{json_path} "labels" lists one class: a segmentation dataset needs '
                    'background and at least one foreground class; fix the file')
  _check_training(info['training'], json_path)
  for sub in ('imagesTr', 'labelsTr'):
    if not (path / sub).is_dir():
      raise DataError(f'MSD folder {path} has no {sub}/ folder: expected {_LAYOUT}; {_FETCH}')
  _case_files(info, path)  # Validates case names.
  return info


def _case_name(file_path: str) -> str:
  """Case name of an MSD file path: the file name without .nii.gz (or .nii)."""
  name = Path(file_path).name
  for suffix in ('.nii.gz', '.nii'):
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def _case_files(info: dict[str, Any], root: Path) -> dict[str, tuple[Path, Path]]:
  """Maps case name -> (image path, label path) for every "training" entry."""
  files: dict[str, tuple[Path, Path]] = {}
  for entry in info['training']:
    case = _case_name(entry['image'])
    if case in files:
      raise DataError(f'{root / "dataset.json"} lists case {case} twice in "training": '
                      'remove the duplicate entry')
    files[case] = (root / entry['image'], root / entry['label'])
  return files


def hash_split(cases: Sequence[str], val_fraction: float) -> dict[str, list[str]]:
  """Deterministic volume-level split: sha1(case + '.nii.gz') order, first part is val."""
  if not 0 <= val_fraction < 1:
    raise ConfigError(f'val_fraction={val_fraction} is outside [0, 1): set '
                      '--config.data.val_fraction to e.g. 0.2')
  ordered = sorted(cases, key=lambda c: hashlib.sha1((c + '.nii.gz').encode()).hexdigest())
  num_val = round(val_fraction * len(ordered))
  return {'train': sorted(ordered[num_val:]), 'val': sorted(ordered[:num_val])}


def _read_splits(path: Path, cases: Sequence[str]) -> dict[str, list[str]]:
  """Validated splits.json: every key whose value is a list is a named split of known cases
  (other keys, such as a "rule" string, are notes); the splits are pairwise disjoint."""
  splits = _load_json(path)
  if not isinstance(splits, dict):
    raise DataError(f'{path} must be a JSON object like {{"train": [case, ...], "val": [case, ...], '
                    '"test": [...]}}: fix it, or delete it to use the deterministic hash split')
  named = {name: value for name, value in splits.items() if isinstance(value, list)}
  if not named:
    raise DataError(f'{path} lists no split: it must map split names to lists of cases, e.g. '
                    '{"train": [case, ...], "val": [case, ...]}; fix it, or delete it to use the '
                    'deterministic hash split')
  known = set(cases)
  for name, members in named.items():
    if not all(isinstance(c, str) for c in members):
      raise DataError(f'{path} "{name}" must be a list of case names (strings): fix the file')
    unknown = sorted(set(members) - known)
    if unknown:
      raise DataError(f'{path} "{name}" names {len(unknown)} cases not in dataset.json '
                      f'(e.g. {unknown[0]}): use case names = file names without .nii.gz, each '
                      'listed under "training" in dataset.json')
  names = list(named)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      overlap = sorted(set(named[a]) & set(named[b]))
      if overlap:
        raise DataError(f'{path} puts {len(overlap)} cases in both {a} and {b} (e.g. '
                        f'{overlap[0]}): each case must be in one split only')
  return {name: sorted(members) for name, members in named.items()}


def carve_tune(splits: dict[str, list[str]], tune_fraction: float,
               tune_from: str = 'train') -> dict[str, list[str]]:
  """`splits` with a 'tune' split carved from `tune_from`: the first `tune_fraction` of its cases
  in sha1 order (the hash rule), removed from `tune_from`. Hyper-parameters chosen on 'tune' never
  see the validation or test volumes. `tune_fraction` = 0 leaves `splits` unchanged."""
  if not tune_fraction:
    return splits
  if not 0 < tune_fraction < 1:
    raise ConfigError(f'data.tune_fraction = {tune_fraction} is outside [0, 1): use e.g. 0.2, or '
                      '0 for no tuning split')
  if 'tune' in splits:
    raise DataError("the folder already declares a 'tune' split: set data.tune_fraction=0 to use "
                    'it, or rename it in splits.json')
  if tune_from not in splits:
    raise DataError(f'cannot carve a tuning split from {tune_from!r}: the folder declares '
                    f'{sorted(splits)}; set data.train_split to one of them')
  carved = hash_split(splits[tune_from], tune_fraction)
  if not carved['val'] or not carved['train']:
    raise DataError(f'data.tune_fraction = {tune_fraction} of the {len(splits[tune_from])} '
                    f'{tune_from!r} volumes leaves an empty split: pick a fraction that keeps at '
                    'least one volume on each side')
  return {**splits, tune_from: carved['train'], 'tune': carved['val']}


def available_splits(root: str | os.PathLike, val_fraction: float = 0.2, *,
                     tune_fraction: float = 0.0, tune_from: str = 'train') -> dict[str, list[str]]:
  """Every split the folder declares, {name: sorted case names}: the lists in splits.json when
  present, else train/val by the hash rule; plus 'tune' (carved from `tune_from`) when
  `tune_fraction` > 0."""
  path = _root_dir(root)
  cases = list(_case_files(read_msd_info(path), path))
  splits_path = path / 'splits.json'
  if splits_path.is_file():
    splits = _read_splits(splits_path, cases)
  else:
    splits = hash_split(cases, val_fraction)
  return carve_tune(splits, tune_fraction, tune_from)


def split_cases(root: str | os.PathLike, split: str, val_fraction: float = 0.2, *,
                tune_fraction: float = 0.0, tune_from: str = 'train') -> list[str]:
  """Case names (sorted) of `split`, from splits.json if present, else the hash rule."""
  path = _root_dir(root)
  splits = available_splits(path, val_fraction, tune_fraction=tune_fraction, tune_from=tune_from)
  splits_path = path / 'splits.json'
  source = splits_path if splits_path.is_file() else f'the hash rule (val_fraction={val_fraction})'
  if split not in splits:
    raise DataError(f'unknown split {split!r}: {path} declares the splits {sorted(splits)} (from '
                    f'{source}); pick one of them, or list the cases of {split!r} in '
                    f'{splits_path}')
  if not splits[split]:
    raise DataError(f'the {split!r} split of {path} is empty (from {source}): '
                    'list cases for it in splits.json or use a val_fraction in (0, 1)')
  return splits[split]


def _read_nifti(path: Path, case: str) -> np.ndarray:
  """Voxel array of a NIfTI file; DataError if it is missing or unreadable."""
  if not path.is_file():
    raise DataError(f'case {case}: file {path} listed in dataset.json is missing: '
                    're-download or re-extract the dataset')
  return reading.read_nifti(path)


def _as_channels_last(image: np.ndarray, case: str) -> np.ndarray:
  """(X, Y, Z) -> (X, Y, Z, 1); (X, Y, Z, C) and (X, Y, Z, 1, C) -> (X, Y, Z, C)."""
  if image.ndim == 5 and image.shape[3] == 1:
    image = image[:, :, :, 0]
  if image.ndim == 3:
    return image[..., None]
  if image.ndim == 4:
    return image
  raise DataError(f'case {case}: image has shape {image.shape}: expected a 3-D volume '
                  '(X, Y, Z) or 4-D (X, Y, Z, modalities); check the file')


def zscore(image: np.ndarray) -> np.ndarray:
  """Per-channel z-score over the whole volume (X, Y, Z, C); constant channels become 0."""
  flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
  mean, std = flat.mean(axis=0), flat.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  return ((image - mean) / std).astype(np.float32)


def _check_label(label: np.ndarray, case: str, class_names: Sequence[str]) -> np.ndarray:
  """Integer label volume with values in [0, num_classes); DataError otherwise."""
  num_classes = len(class_names)
  non_integer = not np.issubdtype(label.dtype, np.integer) and not np.array_equal(
      label, np.round(label))
  if label.size and (non_integer or label.min() < 0 or label.max() >= num_classes):
    values = np.unique(label)
    raise DataError(f'case {case}: label values {values[:10].tolist()} are not all among the '
                    f'{num_classes} classes 0..{num_classes - 1} of dataset.json '
                    f'({", ".join(class_names)}): fix the label file or the "labels" key')
  return label.astype(np.int32)


def _load_case(case: str, files: tuple[Path, Path], class_names: Sequence[str],
               channels: int, image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Normalised image (X, Y, Z, C) float32 and label (X, Y, Z) int32 of one case (`image`: its
  voxels when the caller has read them already)."""
  image = _as_channels_last(_read_nifti(files[0], case) if image is None else image, case)
  label = _read_nifti(files[1], case)
  if label.ndim == 4 and label.shape[3] == 1:
    label = label[..., 0]
  if image.shape[:3] != label.shape:
    raise DataError(f'case {case}: image spatial shape {image.shape[:3]} does not match label '
                    f'shape {label.shape}: re-export the pair with matching grids')
  if image.shape[3] != channels:
    raise DataError(f'case {case}: image has {image.shape[3]} channels but dataset.json lists '
                    f'{channels} modalities: fix "modality" in dataset.json or the image')
  if not np.issubdtype(image.dtype, np.integer) and not np.isfinite(image).all():
    raise DataError(f'case {case}: image has {np.size(image) - np.isfinite(image).sum()} '
                    'NaN/inf voxels: fix or re-export the file, or drop the case from dataset.json')
  return zscore(image), _check_label(label, case, class_names)


def fit_slices(slices: np.ndarray, patch_size: tuple[int, int], *, resize: bool,
         order: int) -> np.ndarray:
  """Resizes (or centre pads with 0 / centre crops) (S, A, B, ...) slices to patch_size."""
  if resize and slices.shape[1:3] != patch_size:
    factors = [1.0, patch_size[0] / slices.shape[1], patch_size[1] / slices.shape[2]]
    factors += [1.0] * (slices.ndim - 3)
    slices = ndimage.zoom(slices, factors, order=order)
  for axis, size in ((1, patch_size[0]), (2, patch_size[1])):
    extra = slices.shape[axis] - size
    if extra > 0:
      slices = np.take(slices, np.arange(extra // 2, extra // 2 + size), axis=axis)
    elif extra < 0:
      pad = [(0, 0)] * slices.ndim
      pad[axis] = (-extra // 2, -extra - (-extra // 2))
      slices = np.pad(slices, pad)
  return slices


def _check_settings(patch_size: tuple[int, ...], slice_axis: int,
                    max_volumes: int | None) -> None:
  """ConfigError for impossible slicing settings."""
  if len(patch_size) != 2 or min(patch_size) < 1:
    raise ConfigError(f'patch_size {patch_size} is invalid: use two positive sizes, e.g. (64, 64)')
  if slice_axis not in (0, 1, 2):
    raise ConfigError(f'slice_axis={slice_axis} is invalid: use 0, 1 or 2 (a spatial axis)')
  if max_volumes is not None and max_volumes < 0:
    raise ConfigError(f'max_volumes={max_volumes} is negative: use 0 or None for all volumes')


def _open_split(root, split: str, val_fraction: float, max_volumes: int | None,
                tune_fraction: float, tune_from: str):
  """(folder, dataset.json, case files, class names, channel count, the split's declared cases,
  the first `max_volumes` of them) for loading `split` of the MSD folder `root`."""
  path = _root_dir(root)
  info = read_msd_info(path)
  files = _case_files(info, path)
  class_names = _index_keys(info['labels'], path / 'dataset.json', 'labels')
  channels = len(info['modality'])
  declared = split_cases(path, split, val_fraction, tune_fraction=tune_fraction,
                         tune_from=tune_from)
  return path, info, files, class_names, channels, declared, declared[:max_volumes or None]


def load_msd_slices(root: str | os.PathLike, split: str, *,
                    patch_size: Sequence[int] = (64, 64), slice_axis: int = 2,
                    foreground_only: bool = True, val_fraction: float = 0.2,
                    max_volumes: int | None = None, resize: bool = False,
                    tune_fraction: float = 0.0,
                    tune_from: str = 'train') -> tuple[dict[str, np.ndarray], SegmentationInfo]:
  """Loads one split as 2-D slices.

  Returns ({'image': float32 (N, H, W, C), 'label': int32 (N, H, W), 'id': int32 arange(N),
  'case_index': int32, 'slice_index': int32}, info). Records are ordered by (case name, slice
  index); `max_volumes` (None or 0 = all) keeps the first k cases by name. `tune_fraction` > 0
  carves a 'tune' split from `tune_from` first (see `carve_tune`).
  """
  patch_size = tuple(int(s) for s in patch_size)
  _check_settings(patch_size, slice_axis, max_volumes)
  path, info, files, class_names, channels, declared, cases = _open_split(
      root, split, val_fraction, max_volumes, tune_fraction, tune_from)
  images, labels, case_index, slice_index = [], [], [], []
  for index, case in enumerate(cases):
    image, label = _load_case(case, files[case], class_names, channels)
    image = fit_slices(np.moveaxis(image, slice_axis, 0), patch_size, resize=resize, order=1)
    label = fit_slices(np.moveaxis(label, slice_axis, 0), patch_size, resize=resize, order=0)
    keep = label.reshape(len(label), -1).any(axis=1) if foreground_only else slice(None)
    keep = np.arange(len(label))[keep]
    images.append(image[keep])
    labels.append(label[keep])
    case_index.append(np.full(len(keep), index, np.int32))
    slice_index.append(keep.astype(np.int32))
  num = sum(len(k) for k in slice_index)
  if num == 0:
    raise DataError(f'the {split!r} split of {path} has no slices with foreground along '
                    f'slice_axis={slice_axis}: check the labels or set foreground_only=False')
  arrays = {'image': np.concatenate(images), 'label': np.concatenate(labels),
            'id': np.arange(num, dtype=np.int32), 'case_index': np.concatenate(case_index),
            'slice_index': np.concatenate(slice_index)}
  seg_info = SegmentationInfo(name=str(info['name']), num_classes=len(class_names),
                              class_names=tuple(class_names), channels=channels,
                              patch_size=patch_size, num_volumes=len(cases), cases=tuple(cases),
                              split_volumes=len(declared))
  return arrays, seg_info


def _grid_shape(shapes: Sequence[tuple[int, ...]], multiple: int,
                minimum: Sequence[int]) -> tuple[int, ...]:
  """The smallest grid that holds every shape, each side a multiple of `multiple` and at least
  `minimum`."""
  top = np.max(np.asarray(shapes), axis=0)
  top = np.maximum(top, np.asarray(minimum, np.int64))
  return tuple(int(-(-t // multiple) * multiple) for t in top)


def pad_centred(array: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
  """`array` (X, Y, Z[, C]) centred in a zero grid of spatial `shape`, and the slices of the grid
  that hold it (to crop a prediction back)."""
  before = [(g - n) // 2 for g, n in zip(shape, array.shape[:3])]
  pad = [(b, g - n - b) for b, g, n in zip(before, shape, array.shape[:3])]
  pad += [(0, 0)] * (array.ndim - 3)
  region = tuple(slice(b, b + n) for b, n in zip(before, array.shape[:3]))
  return np.pad(array, pad), region


def load_msd_volumes(root: str | os.PathLike, split: str, *, spacing: Sequence[float] = (),
                     volume_shape: Sequence[int] = (), multiple: int = 1,
                     min_shape: Sequence[int] = (1, 1, 1), val_fraction: float = 0.2,
                     max_volumes: int | None = None, tune_fraction: float = 0.0,
                     tune_from: str = 'train') -> tuple[dict[str, np.ndarray], SegmentationInfo]:
  """Loads one split as whole volumes.

  Returns ({'image': float32 (N, X, Y, Z, C), 'label': int32 (N, X, Y, Z), 'in_image': bool
  (N, X, Y, Z), 'id': int32 arange(N), 'case_index': int32 arange(N)}, info). Each case is
  resampled to `spacing` (mm; () keeps each case's own spacing, which must then be common to the
  split), z-scored, and centred in a grid of `volume_shape` (() = the smallest grid that holds
  every case of the split, each side a multiple of `multiple` and at least `min_shape`). A case
  larger than a given `volume_shape` is a DataError (nothing is cropped away)."""
  import robust_med.data.volumes as volumes  # pylint: disable=import-outside-toplevel
  if max_volumes is not None and max_volumes < 0:
    raise ConfigError(f'max_volumes={max_volumes} is negative: use 0 or None for all volumes')
  path, info, files, class_names, channels, declared, cases = _open_split(
      root, split, val_fraction, max_volumes, tune_fraction, tune_from)
  images, labels, spacings = [], [], []
  for case in cases:
    image_file, label_file = files[case]
    if not image_file.is_file():
      _read_nifti(image_file, case)  # Raises the DataError that names the missing file.
    volume = volumes.read_volume(image_file)  # The voxels with their stored spacing.
    image, label = _load_case(case, files[case], class_names, channels, volume.array)
    if spacing:
      image, new_spacing = volumes.resample(image, volume.spacing, spacing, order=3)
      label, _ = volumes.resample(label, volume.spacing, spacing, order=0)
      image = zscore(image)  # Cubic resampling moves the mean and spread a little.
    else:
      new_spacing = volume.spacing
    images.append(image)
    labels.append(label.astype(np.int32))
    spacings.append(tuple(round(float(s), 4) for s in new_spacing))
  if not spacing and len(set(spacings)) > 1:
    raise DataError(f'the {split!r} split of {path} mixes voxel spacings '
                    f'{sorted(set(spacings))[:4]}: set data.spacing (e.g. (1.0, 1.0, 1.0)) to '
                    'resample every case to one grid.')
  shapes = [im.shape[:3] for im in images]
  if volume_shape:
    grid = tuple(int(s) for s in volume_shape)
    too_big = [(c, s) for c, s in zip(cases, shapes) if any(n > g for n, g in zip(s, grid))]
    if too_big:
      raise DataError(f'case {too_big[0][0]} has the grid {too_big[0][1]}, larger than '
                      f'data.volume_shape = {grid} ({len(too_big)} such cases in {split!r}): '
                      'raise data.volume_shape, or set it to () to fit the largest case.')
  else:
    grid = _grid_shape(shapes, multiple, min_shape)
  n = len(cases)
  arrays = {'image': np.zeros((n, *grid, channels), np.float32),
            'label': np.zeros((n, *grid), np.int32), 'in_image': np.zeros((n, *grid), bool),
            'id': np.arange(n, dtype=np.int32), 'case_index': np.arange(n, dtype=np.int32)}
  for i, (image, label) in enumerate(zip(images, labels)):
    arrays['image'][i], region = pad_centred(image, grid)
    arrays['label'][i] = pad_centred(label, grid)[0]
    arrays['in_image'][i][region] = True
  common = tuple(float(np.mean([s[a] for s in spacings])) for a in range(3))
  seg_info = SegmentationInfo(name=str(info['name']), num_classes=len(class_names),
                              class_names=tuple(class_names), channels=channels,
                              patch_size=grid, num_volumes=n, cases=tuple(cases),
                              split_volumes=len(declared), spacing=common)
  return arrays, seg_info
