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

`batched` computes HD95 and ASD of every foreground class of a batch of label maps in JAX (jitted,
sharded with the batch, no host round trip), by the same definitions: the erosion as a min-pool,
and the exact Euclidean distance transform as one min-plus pass per axis
(d²(i) = min_j d²(j) + s²(i − j)², Saito & Toriwaki 1994), which costs O(voxels × side) per axis
— cheap for the volumes robust_med evaluates (tens of voxels a side), to be chunked before it
meets 512² CT slices. Tests check it against the scipy functions above.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
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


_FAR = 1e12  # A squared distance larger than any on a grid (float32 keeps it exact enough).


def _surface_jax(mask: jax.Array) -> jax.Array:
  """`surface` of each mask of a batch (B, *spatial) bool: the mask minus its full-connectivity
  erosion, everything outside the grid counted as background."""
  x = jnp.pad(mask.astype(jnp.float32), [(0, 0)] + [(1, 1)] * (mask.ndim - 1))
  eroded = jax.lax.reduce_window(x, jnp.inf, jax.lax.min, (1,) + (3,) * (mask.ndim - 1),
                                 (1,) * mask.ndim, 'VALID')
  return mask & (eroded < 0.5)


def _squared_distance_to(target: jax.Array, spacing: Sequence[float]) -> jax.Array:
  """Per voxel, the squared distance in mm to the nearest True voxel of `target` (B, *spatial),
  exact (one min-plus pass per axis); about _FAR where `target` is empty."""
  d = jnp.where(target, 0.0, _FAR).astype(jnp.float32)
  for axis, step in zip(range(1, target.ndim), spacing):
    n = target.shape[axis]
    i = jnp.arange(n, dtype=jnp.float32)
    cost = (float(step) * (i[:, None] - i[None, :])) ** 2  # (to, from)
    moved = jnp.moveaxis(d, axis, -1)
    moved = jnp.min(moved[..., None, :] + cost, axis=-1)
    d = jnp.moveaxis(moved, -1, axis)
  return d


def _percentile(values: jax.Array, keep: jax.Array, q: float) -> jax.Array:
  """Per sample, the `q`-th percentile (linear interpolation, numpy's default) of `values` where
  `keep` (both (B, V)); 0 where nothing is kept."""
  count = jnp.sum(keep, axis=1)
  ordered = jnp.sort(jnp.where(keep, values, jnp.inf), axis=1)
  pos = q / 100.0 * jnp.maximum(count - 1, 0).astype(jnp.float32)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, jnp.maximum(count - 1, 0))
  a = jnp.take_along_axis(ordered, lo[:, None], axis=1)[:, 0]
  b = jnp.take_along_axis(ordered, hi[:, None], axis=1)[:, 0]
  return jnp.where(count > 0, a + (pos - lo) * (b - a), 0.0)


def batched(pred_labels: jax.Array, ref_labels: jax.Array, num_classes: int,
            spacing: Sequence[float] | None = None,
            valid: jax.Array | None = None) -> dict[str, jax.Array]:
  """{'hd95', 'asd'}: float32 (B, num_classes − 1), each foreground class's `hd95` and `asd` in
  mm for a batch of integer label maps (B, *spatial), jittable. With `valid` (B, *spatial) bool,
  voxels outside it count as background in both maps and an empty class costs the diagonal of
  the box around the valid voxels (each sample's own grid inside a padded one)."""
  ndim = pred_labels.ndim - 1
  spacing = tuple(float(s) for s in _spacing(spacing, ndim))
  if valid is None:
    valid = jnp.ones(pred_labels.shape, bool)
  flat = lambda a: a.reshape(a.shape[0], -1)
  extent = []
  for axis in range(1, ndim + 1):
    along = jnp.any(valid, axis=tuple(a for a in range(1, ndim + 1) if a != axis))
    idx = jnp.arange(along.shape[1])
    first = jnp.min(jnp.where(along, idx, along.shape[1]), axis=1)
    last = jnp.max(jnp.where(along, idx, -1), axis=1)
    extent.append(jnp.maximum(last - first + 1, 0).astype(jnp.float32) * spacing[axis - 1])
  diagonal = jnp.sqrt(sum(e ** 2 for e in extent))
  hd95_out, asd_out = [], []
  for k in range(1, num_classes):
    p, r = (pred_labels == k) & valid, (ref_labels == k) & valid
    sp, sr = _surface_jax(p), _surface_jax(r)
    d_pr = jnp.sqrt(flat(_squared_distance_to(sr, spacing)))  # pred's surface → ref's
    d_rp = jnp.sqrt(flat(_squared_distance_to(sp, spacing)))
    kp, kr = flat(sp), flat(sr)
    hd = jnp.maximum(_percentile(d_pr, kp, 95.0), _percentile(d_rp, kr, 95.0))
    total = jnp.sum(jnp.where(kp, d_pr, 0.0), axis=1) + jnp.sum(jnp.where(kr, d_rp, 0.0), axis=1)
    mean = total / jnp.maximum(jnp.sum(kp, axis=1) + jnp.sum(kr, axis=1), 1)
    has_p, has_r = jnp.any(flat(p), axis=1), jnp.any(flat(r), axis=1)
    empty = jnp.where(has_p | has_r, diagonal, 0.0)
    both = has_p & has_r
    hd95_out.append(jnp.where(both, hd, empty))
    asd_out.append(jnp.where(both, mean, empty))
  return {'hd95': jnp.stack(hd95_out, axis=1), 'asd': jnp.stack(asd_out, axis=1)}
