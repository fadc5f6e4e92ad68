"""Sliding-window inference: a dense model applied patch by patch over a larger image or volume.

How nnU-Net (Isensee et al. 2021) and MONAI's `sliding_window_inference` predict a volume larger
than the patch a model was trained on: overlapping windows (neighbours `overlap` of a patch apart
at most), each window's output weighted by a Gaussian importance map centred on the patch (the
centre of a patch sees the most context, its border the least), summed, and divided by the summed
weights. Generic in the number of spatial dims (2-D images, 3-D volumes), pure JAX and jittable,
and differentiable end to end: an attack on the whole volume gets the gradient of a loss on the
stitched prediction, through every window that sees a voxel.

  logits = sliding_window(lambda p: model.apply(params, p), volume, patch=(64, 64, 64))

Window starts: along each axis, the fewest windows whose steps are at most `(1 − overlap)·patch`,
spread evenly from 0 to `size − patch` (rounded to whole voxels), as nnU-Net places them. The
importance map is the product over axes of exp(−(i − c)² / 2σ²), c the patch centre, σ =
`sigma_scale`·patch (nnU-Net's 1/8), scaled to a maximum of 1; `weighting='constant'` averages the
windows instead. Windows run `windows_per_batch` at a time (all samples of the batch together) in
a `lax.scan`, so memory stays that of a few patches; `remat=True` recomputes each chunk's
activations in the backward pass instead of storing them all (attacks on large volumes).

Floor: imports only `errors`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_med.errors import UserError


def window_starts(size: int, patch: int, overlap: float = 0.5) -> list[int]:
  """Start positions along one axis of length `size` for windows of length `patch` at least
  `overlap` (a fraction in [0, 1)) apart from their neighbours."""
  if patch > size:
    raise UserError(f'An image or volume of {size} voxels along an axis is smaller than the '
                    f'patch ({patch}): lower data.patch_size, or resample/pad the input to at '
                    'least the patch size.')
  if not 0 <= overlap < 1:
    raise UserError(f'overlap={overlap}: use a fraction in [0, 1), e.g. 0.5.')
  step = patch * (1 - overlap)
  count = math.ceil((size - patch) / step) + 1
  if count == 1:
    return [0]
  spacing = (size - patch) / (count - 1)
  return [int(round(spacing * i)) for i in range(count)]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
  """The importance map of a patch: a Gaussian of σ = sigma_scale·size per axis, centred on the
  patch, with maximum 1 (float32, shape `patch`)."""
  weights = np.ones((), np.float64)
  for size in patch:
    i = np.arange(size, dtype=np.float64)
    sigma = sigma_scale * size
    axis = np.exp(-(i - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    weights = np.multiply.outer(weights, axis)
  return (weights / weights.max()).astype(np.float32)


def sliding_window(apply_fn: Callable[[jax.Array], Any], x: jax.Array, patch: Sequence[int], *,
                   overlap: float = 0.5, windows_per_batch: int = 4,
                   weighting: str = 'gaussian', sigma_scale: float = 1 / 8,
                   remat: bool = False) -> Any:
  """`apply_fn` over `x` (B, *spatial, C) patch by patch, stitched: the same pytree of arrays
  `apply_fn` returns for a batch of patches (n, *patch, K), at the full size (B, *spatial, K).

  Args:
    apply_fn: a dense model: (n, *patch, C) → arrays (n, *patch, K) (any pytree of them).
    x: the images or volumes, channels last.
    patch: the window's spatial shape (each ≤ the input's).
    overlap: the fraction of a patch that neighbouring windows share at least.
    windows_per_batch: windows evaluated together (each with all B samples).
    weighting: 'gaussian' (nnU-Net's importance map) or 'constant' (a plain average).
    sigma_scale: the Gaussian's σ as a fraction of the patch size.
    remat: recompute the windows' activations in the backward pass instead of storing them.
  """
  spatial = tuple(x.shape[1:-1])
  patch = tuple(int(p) for p in patch)
  if len(patch) != len(spatial):
    raise UserError(f'A {len(patch)}-D patch {patch} for {len(spatial)}-D inputs of shape '
                    f'{spatial}: give one patch size per spatial axis.')
  if weighting not in ('gaussian', 'constant'):
    raise UserError(f"weighting={weighting!r}: use 'gaussian' or 'constant'.")
  starts = np.array(list(itertools.product(
      *(window_starts(s, p, overlap) for s, p in zip(spatial, patch)))), np.int32)
  weight = (gaussian_importance(patch, sigma_scale) if weighting == 'gaussian'
            else np.ones(patch, np.float32))
  total = np.zeros(spatial, np.float32)  # the summed weights each voxel gets: a constant
  for s in starts:
    total[tuple(slice(a, a + p) for a, p in zip(s, patch))] += weight
  k = max(1, min(int(windows_per_batch), len(starts)))
  chunks = -(-len(starts) // k)
  valid = np.zeros(chunks * k, np.float32)
  valid[:len(starts)] = 1.0  # padding windows (repeats of the first) add nothing
  starts = np.concatenate([starts, np.repeat(starts[:1], chunks * k - len(starts), 0)])
  starts, valid = starts.reshape(chunks, k, -1), valid.reshape(chunks, k)
  batch, channels = x.shape[0], x.shape[-1]
  weight = jnp.asarray(weight)

  def window(s):
    return jax.lax.dynamic_slice(x, (0, *s, 0), (batch, *patch, channels))

  def run(patches):
    return apply_fn(patches)

  run = jax.checkpoint(run) if remat else run
  probe = jax.eval_shape(run, jax.ShapeDtypeStruct((batch, *patch, channels), x.dtype))
  acc0 = jax.tree_util.tree_map(
      lambda a: jnp.zeros((batch, *spatial, a.shape[-1]), jnp.promote_types(a.dtype,
                                                                          jnp.float32)), probe)

  def step(acc, chunk):
    chunk_starts, chunk_valid = chunk
    # (B, k, *patch, C), samples first: merged into one batch axis, a batch split across devices
    # along B stays split the same way (windows first would gather it on one device).
    patches = jax.vmap(window, out_axes=1)(chunk_starts)
    out = run(patches.reshape(batch * k, *patch, channels))

    def add(a, o):
      o = o.reshape(batch, k, *patch, o.shape[-1]).astype(a.dtype)
      for j in range(k):
        start = (0, *chunk_starts[j], 0)
        w = (weight * chunk_valid[j])[None, ..., None]
        region = jax.lax.dynamic_slice(a, start, (batch, *patch, a.shape[-1]))
        a = jax.lax.dynamic_update_slice(a, region + w * o[:, j], start)
      return a

    return jax.tree_util.tree_map(add, acc, out), None

  acc, _ = jax.lax.scan(step, acc0, (jnp.asarray(starts), jnp.asarray(valid)))
  total = jnp.asarray(total)[None, ..., None]
  return jax.tree_util.tree_map(lambda a: a / total, acc)
