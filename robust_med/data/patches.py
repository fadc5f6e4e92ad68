"""Random patch sampling for training on volumes: where each patch of a batch starts.

Training on whole 3-D volumes (MSD cases are up to hundreds of voxels a side) does not fit in
memory, so each batch is a set of fixed-size patches cut from the volumes, as in nnU-Net (Isensee et
al. 2021). Purely random patches rarely see a small structure (a tumour, the hippocampus in a
head), so nnU-Net forces some of them onto foreground: with its `oversample_foreground_percent`
(0.33 by default) the last third of every batch is cut around a foreground voxel, the rest
anywhere. This module is that rule in plain numpy, generic in the number of spatial dims (2-D
slices or 3-D volumes) and deterministic given a `numpy.random.Generator`:

* `foreground_voxels(label)`: the coordinates of voxels with label > 0, a uniform random subset of
  at most `max_voxels` (10 000 by default) so that keeping them per case stays small (nnU-Net
  also stores a subsample of each class's locations at preprocessing).
* `patch_start(shape, patch, rng)`: a start drawn uniformly from all starts that keep the patch
  inside the volume; with `centre=voxel`, the start that puts the voxel at index ``patch // 2`` of
  the patch along every axis (the middle voxel for odd sizes, the one after the middle for even
  sizes), clipped to ``[0, shape − patch]`` so the patch stays inside (near a border the voxel is
  off-centre but still in the patch).
* `forced_count(B, fraction)`: how many samples of a batch of B are forced onto foreground: those
  from index round(B·(1 − fraction)) on, nnU-Net's rule (batch 2 at 0.33 → 1; batch 1 → none).
* `sample_starts(...)`: the starts of a batch whose i-th sample comes from case
  ``batch_cases[i]``; its last `forced_count` samples are centred on a foreground voxel drawn
  uniformly from their case's `foreground_voxels` (a case without foreground falls back to a
  random start), the others are random. Foreground is any label > 0, pooled over
  classes (nnU-Net first picks one of the classes present, then a voxel of it).
* `crop(array, start, patch)`: the patch itself.

Volumes smaller than the patch along an axis are refused (DataError): padding them is the
caller's business. Unlike nnU-Net, which samples starts beyond the border and pads, every patch
lies inside its volume.

Floor: imports only `errors`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from robust_med.errors import ConfigError, DataError

DEFAULT_MAX_VOXELS = 10000
_DEFAULT_SEED = 0


def _patch_tuple(patch: Sequence[int], ndim: int, shape: Sequence[int]) -> tuple[int, ...]:
  """`patch` as a tuple of ints, one positive size per spatial axis of a volume of `shape`."""
  patch = tuple(int(p) for p in patch)
  if len(patch) != ndim:
    raise ConfigError(f'the patch size {patch} has {len(patch)} axes but the volume of shape '
                      f'{tuple(shape)} has {ndim} spatial axes: give data.patch_size one size per '
                      'spatial axis.')
  if min(patch, default=1) < 1:
    raise ConfigError(f'the patch size {patch} has a size below 1: set every entry of '
                      'data.patch_size to at least 1.')
  return patch


def foreground_voxels(label: np.ndarray, max_voxels: int = DEFAULT_MAX_VOXELS,
                      rng: np.random.Generator | None = None) -> np.ndarray:
  """int32 (M, label.ndim) coordinates of the voxels with label > 0, M ≤ `max_voxels`.

  When there are more, a uniform random subset without repeats (drawn with `rng`, or a generator
  seeded with 0 when None, so that the same label gives the same subset), in C (row-major) order.
  """
  if int(max_voxels) < 1:
    raise ConfigError(f'max_voxels = {max_voxels} keeps no foreground voxel: set it to at least 1 '
                      f'(nnU-Net keeps {DEFAULT_MAX_VOXELS}).')
  label = np.asarray(label)
  flat = np.flatnonzero(label > 0)
  if flat.size > max_voxels:
    rng = np.random.default_rng(_DEFAULT_SEED) if rng is None else rng
    flat = np.sort(rng.choice(flat, size=int(max_voxels), replace=False))
  coords = np.unravel_index(flat, label.shape)
  return np.stack(coords, axis=-1).astype(np.int32).reshape(-1, label.ndim)


def patch_start(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                centre: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
  """(ndim,) int64 start of a `patch`-sized patch inside a volume of spatial `shape`.

  Without `centre`: uniform over all starts with the patch inside the volume (each axis
  independently uniform in ``[0, shape − patch]``). With `centre` (a voxel of the volume): the
  start ``centre − patch // 2``, clipped to ``[0, shape − patch]``; `rng` is then not used.
  """
  shape = tuple(int(s) for s in shape)
  patch = _patch_tuple(patch, len(shape), shape)
  if any(p > s for p, s in zip(patch, shape)):
    raise DataError(f'a volume of shape {shape} is smaller than the patch {patch} along an axis: '
                    'pad or resample the volume to at least the patch size, or lower '
                    'data.patch_size.')
  high = np.array(shape) - np.array(patch)  # the largest valid start, per axis
  if centre is None:
    return rng.integers(0, high + 1).astype(np.int64)
  centre = np.asarray(centre, dtype=np.int64)
  if centre.shape != (len(shape),) or np.any(centre < 0) or np.any(centre >= np.array(shape)):
    raise ValueError(f'centre {centre.tolist()} is not a voxel of a volume of shape {shape}')
  return np.clip(centre - np.array(patch) // 2, 0, high).astype(np.int64)


def _check_fraction(fraction: float) -> float:
  """`fraction` as a float in [0, 1], else ConfigError."""
  fraction = float(fraction)
  if not 0.0 <= fraction <= 1.0:  # NaN fails too.
    raise ConfigError(f'the foreground fraction {fraction} is outside [0, 1]: set it to the share '
                      'of each batch forced to contain foreground (nnU-Net uses 0.33).')
  return fraction


def forced_count(batch_size: int, fraction: float) -> int:
  """How many samples of a batch of `batch_size` are forced onto foreground: the last ones,
  from index round(batch_size·(1 − fraction)) on (Python's rounding), as nnU-Net's data loader
  picks them (so a batch of 2 at 0.33 forces one, a batch of 1 none). `fraction` in [0, 1], else
  ConfigError."""
  fraction = _check_fraction(fraction)
  if int(batch_size) < 1:
    raise ConfigError(f'batch size {batch_size} is below 1: set the batch size to at least 1.')
  return int(batch_size) - min(int(batch_size), round(int(batch_size) * (1 - fraction)))


def sample_starts(shapes: Sequence[tuple[int, ...]], foreground: Sequence[np.ndarray],
                  patch: Sequence[int], batch_cases: Sequence[int], fraction: float,
                  rng: np.random.Generator) -> np.ndarray:
  """(B, ndim) int64 patch starts for a batch whose i-th sample comes from case `batch_cases[i]`.

  `shapes[c]` is case c's spatial shape and `foreground[c]` its `foreground_voxels` (M, ndim). The
  last `forced_count(B, fraction)` samples are centred (`patch_start` with `centre`) on a voxel
  drawn uniformly from their case's foreground, or start at random when the case has none; the
  others start at random. Draws from `rng` in sample order, so a seed fixes the batch.
  """
  if len(shapes) != len(foreground):
    raise ValueError(f'{len(shapes)} shapes but {len(foreground)} foreground arrays: '
                     'one of each per case')
  batch_cases = [int(c) for c in batch_cases]
  bad = [c for c in batch_cases if not 0 <= c < len(shapes)]
  if bad:
    raise ValueError(f'batch_cases {bad} are not among the {len(shapes)} cases')
  ndim = len(tuple(patch))
  size = len(batch_cases)
  _check_fraction(fraction)  # also for an empty batch
  first_forced = size - forced_count(size, fraction) if size else 0
  starts = np.zeros((size, ndim), dtype=np.int64)
  for i, case in enumerate(batch_cases):
    voxels = np.asarray(foreground[case])
    if i >= first_forced and len(voxels):
      if voxels.ndim != 2 or voxels.shape[1] != len(shapes[case]):
        raise ValueError(f'foreground[{case}] has shape {voxels.shape}, not (M, '
                         f'{len(shapes[case])}) voxel coordinates')
      centre = voxels[rng.integers(len(voxels))]
      starts[i] = patch_start(shapes[case], patch, rng, centre=centre)
    else:
      starts[i] = patch_start(shapes[case], patch, rng)
  return starts


def crop(array: np.ndarray, start: Sequence[int] | np.ndarray, patch: Sequence[int]) -> np.ndarray:
  """The patch of `array` at `start` (a view): ``array[s0:s0 + p0, s1:s1 + p1, ...]`` over the
  leading len(patch) axes; trailing axes (channels) are kept whole."""
  start = tuple(int(s) for s in start)
  patch = tuple(int(p) for p in patch)
  shape = np.shape(array)
  if len(start) != len(patch) or len(patch) > len(shape):
    raise ValueError(f'start {start} and patch {patch} do not fit an array of shape {shape}')
  if any(s < 0 or s + p > n for s, p, n in zip(start, patch, shape)):
    raise ValueError(f'the patch {patch} at {start} reaches outside an array of shape {shape}')
  return array[tuple(slice(s, s + p) for s, p in zip(start, patch))]
