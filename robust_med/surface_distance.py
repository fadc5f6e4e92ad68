"""Surface-distance segmentation metrics: HD95, Hausdorff distance and average surface distance.

The volumetric metrics clinicians publish next to Dice, for 2-D or 3-D binary masks on a grid
with voxel spacing (in mm); every distance is in the units of `spacing`.

* The *surface* of a mask is its border voxels: the mask minus its binary erosion by the
  full-connectivity structuring element (3×3 in 2-D, 3×3×3 in 3-D), eroded with everything
  outside the image counted as background, so a mask that touches the image edge has its edge
  voxels on the surface.
* The *directed distances* from mask `a` to mask `b` are, for each surface voxel of `a`, the
  Euclidean distance (scaled by `spacing`) to the nearest surface voxel of `b`: the exact
  Euclidean distance transform of the complement of `b`'s surface, read at `a`'s surface voxels.
* `hd95`: the larger of the two directed distance sets' 95th percentiles (linear interpolation,
  `np.percentile`'s default), as MONAI's `compute_hausdorff_distance(percentile=95)` does.
  `hausdorff`: the larger of the two maxima (`percentile=None`).
* `asd`: the average symmetric surface distance, the mean of both directed distance sets
  concatenated, as MONAI's `compute_average_surface_distance(symmetric=True)` does.

As in MONAI's surface distances, the distance transform is taken over the reference's surface
only, never the filled mask, so a prediction voxel inside the reference still has a positive
distance to its border. The full structuring element counts voxels that touch the background
only across an edge or a corner as border; a cross-shaped element (scipy's default) would not, and
figures computed with one differ slightly from figures computed with the other.

Empty masks: both empty gives 0 (nothing to miss); exactly one empty gives the image diagonal in
mm, sqrt(sum((shape · spacing)²)), the largest distance the image can hold, so an attack that
wipes out a structure scores worst instead of being silently dropped. MONAI returns NaN or inf
there; the diagonal keeps means over volumes finite.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage

METRICS = ('dice', 'hd95', 'asd')


def _mask(mask, name: str = 'mask') -> np.ndarray:
  """`mask` as a boolean array of 2 or 3 dims; ValueError otherwise."""
  array = np.asarray(mask).astype(bool)
  if array.ndim not in (2, 3):
    raise ValueError(f'{name} has {array.ndim} dims (shape {array.shape}): surface distances '
                     'need a 2-D or 3-D mask; drop the batch and channel axes first.')
  return array


def _spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
  """`spacing` as `ndim` positive finite floats (all 1.0 when None); ValueError otherwise."""
  if spacing is None:
    return np.ones(ndim)
  values = np.asarray(spacing, dtype=np.float64).reshape(-1)
  given = tuple(values.tolist())
  if values.size != ndim:
    raise ValueError(f'spacing {given} has {values.size} values for a {ndim}-D mask: '
                     f'give one voxel size per axis ({ndim} values).')
  if not (np.all(np.isfinite(values)) and np.all(values > 0)):
    raise ValueError(f'spacing {given} must hold positive finite voxel sizes; '
                     'check the image header.')
  return values


def _pair(pred, ref,
          spacing: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The two masks as bool arrays of one shape, and the spacing; ValueError otherwise."""
  pred, ref = _mask(pred, 'pred'), _mask(ref, 'ref')
  if pred.shape != ref.shape:
    raise ValueError(f'pred has shape {pred.shape} but ref has shape {ref.shape}: compare '
                     'masks on the same grid (resample one onto the other first).')
  return pred, ref, _spacing(spacing, pred.ndim)


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
  """The length in mm of the image's diagonal, sqrt(sum((shape · spacing)²))."""
  extent = np.asarray(shape, np.float64) * _spacing(spacing, len(shape))
  return float(math.sqrt(float(np.sum(extent ** 2))))


def surface(mask) -> np.ndarray:
  """The border voxels of a binary mask: mask AND NOT its full-connectivity erosion."""
  mask = _mask(mask)
  structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
  return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_distances(a, b, spacing: Sequence[float] | None = None) -> np.ndarray:
  """Per surface voxel of `a` (raster order), the distance in mm to `b`'s nearest surface voxel.

  Empty when `a` is empty; every distance is the image diagonal when only `b` is empty.
  """
  a, b, spacing = _pair(a, b, spacing)
  surface_a = surface(a)
  if not b.any():
    return np.full(int(surface_a.sum()), image_diagonal(a.shape, spacing))
  distance = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
  return distance[surface_a].astype(np.float64)


def _both_ways(pred, ref, spacing) -> tuple[np.ndarray, np.ndarray] | float:
  """Both directed distance sets, or the score itself when a mask is empty."""
  pred, ref, spacing = _pair(pred, ref, spacing)
  if not pred.any() and not ref.any():
    return 0.0
  if not pred.any() or not ref.any():
    return image_diagonal(pred.shape, spacing)
  return directed_distances(pred, ref, spacing), directed_distances(ref, pred, spacing)


def hd95(pred, ref, spacing: Sequence[float] | None = None) -> float:
  """The 95th-percentile Hausdorff distance in mm: max of both directed sets' 95th percentiles."""
  both = _both_ways(pred, ref, spacing)
  if isinstance(both, float):
    return both
  return float(max(np.percentile(d, 95) for d in both))


def hausdorff(pred, ref, spacing: Sequence[float] | None = None) -> float:
  """The Hausdorff distance in mm: the largest directed surface distance either way."""
  both = _both_ways(pred, ref, spacing)
  if isinstance(both, float):
    return both
  return float(max(d.max() for d in both))


def asd(pred, ref, spacing: Sequence[float] | None = None) -> float:
  """The average symmetric surface distance in mm: the mean of both directed sets together."""
  both = _both_ways(pred, ref, spacing)
  if isinstance(both, float):
    return both
  return float(np.concatenate(both).mean())


def dice(pred, ref) -> float:
  """The Dice overlap 2|P ∩ R| / (|P| + |R|) of two binary masks; 1.0 when both are empty."""
  pred, ref = np.asarray(pred).astype(bool), np.asarray(ref).astype(bool)
  if pred.shape != ref.shape:
    raise ValueError(f'pred has shape {pred.shape} but ref has shape {ref.shape}: compare '
                     'masks on the same grid (resample one onto the other first).')
  total = int(pred.sum()) + int(ref.sum())
  return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def per_class(pred_labels, ref_labels, classes: Sequence[int],
              spacing: Sequence[float] | None = None) -> dict[int, dict[str, float]]:
  """{class: {'dice', 'hd95', 'asd'}} for two integer label maps, one binary mask per class."""
  pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
  if pred_labels.shape != ref_labels.shape:
    raise ValueError(f'pred_labels has shape {pred_labels.shape} but ref_labels has shape '
                     f'{ref_labels.shape}: compare label maps on the same grid.')
  results = {}
  for c in classes:
    pred, ref = pred_labels == c, ref_labels == c
    results[int(c)] = {'dice': dice(pred, ref), 'hd95': hd95(pred, ref, spacing),
                       'asd': asd(pred, ref, spacing)}
  return results
