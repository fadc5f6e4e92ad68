"""A dense model that predicts inputs larger than its patch by sliding windows.

`SlidingWindow(model, patch)` is the model a head builds for volumes: trained on patches of shape
`patch` (applied directly), it predicts anything larger — a whole volume in evaluation, under
attack, in `robust_med.predict` — by overlapping windows with Gaussian importance weighting
(`robust_med.sliding_window`), stitched and differentiable, so an attack on the whole volume
follows the gradient of a loss on the stitched prediction. The wrapper has the wrapped model's
`init` and `apply` (its parameters are the wrapped model's, unchanged) and forwards every other
attribute to it, so the trainer, evaluator and attacks use it as any model: no core module needs
to know which inputs are volumes.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from robust_med.sliding_window import sliding_window


class SlidingWindow:
  """`model` applied to `patch`-sized windows of larger inputs (B, *spatial, C)."""

  def __init__(self, model, patch: Sequence[int], *, overlap: float = 0.5,
               windows_per_batch: int = 4, remat: bool = False):
    self.model, self.patch = model, tuple(int(p) for p in patch)
    self.overlap, self.windows_per_batch, self.remat = overlap, windows_per_batch, remat

  def _is_patch(self, x) -> bool:
    return tuple(x.shape[1:-1]) == self.patch

  def init(self, rngs, x, *args, **kwargs):
    """The wrapped model's parameters, initialised on one window of `x`."""
    window = x[(slice(None), *(slice(0, p) for p in self.patch))]
    return self.model.init(rngs, window, *args, **kwargs)

  def apply(self, variables, x, *args, **kwargs):
    if self._is_patch(x):
      return self.model.apply(variables, x, *args, **kwargs)
    kwargs.pop('aux', None)  # Deep supervision's outputs are per patch: stitch the logits only.
    return sliding_window(lambda p: self.model.apply(variables, p, *args, **kwargs), x,
                          self.patch, overlap=self.overlap,
                          windows_per_batch=self.windows_per_batch, remat=self.remat)

  def __getattr__(self, name: str):
    return getattr(self.model, name)

  def __repr__(self) -> str:
    return f'SlidingWindow({self.model!r}, patch={self.patch})'


class SliceWise:
  """A 2-D dense `model` applied to every slice of volumes (B, X, Y, Z, C) along spatial `axis`
  (0, 1 or 2), the slices of a volume one batch: outputs (B, X, Y, Z, K), differentiable, so an
  attack on the whole volume has a budget per volume for a 2-D model too. Each slice is padded
  with zeros (centred) to a multiple of `multiple` per side (a U-Net's total stride) and cropped
  back. `init` and `apply` are the 2-D model's, with its parameters unchanged."""

  def __init__(self, model, axis: int = 2, multiple: int = 1):
    self.model, self.axis, self.multiple = model, int(axis), max(1, int(multiple))

  def _slices(self, x):
    """(B·S, A, A', C) slices, the padding, and how to restore (B, X, Y, Z, ·)."""
    moved = jnp.moveaxis(x, 1 + self.axis, 1)  # (B, S, A, A', C)
    b, s, a, a2 = moved.shape[:4]
    pads = [(p // 2, p - p // 2) for p in (-a % self.multiple, -a2 % self.multiple)]
    flat = jnp.pad(moved.reshape(b * s, a, a2, -1), [(0, 0), *pads, (0, 0)])
    return flat, pads, (b, s, a, a2)

  def init(self, rngs, x, *args, **kwargs):
    flat, _, _ = self._slices(x[:1] if x.ndim == 5 else x)
    return self.model.init(rngs, flat[:1] if x.ndim == 5 else x, *args, **kwargs)

  def apply(self, variables, x, *args, **kwargs):
    if x.ndim != 5:  # Already slices (e.g. a 2-D training batch).
      return self.model.apply(variables, x, *args, **kwargs)
    kwargs.pop('aux', None)  # Whole volumes: the logits only (deep supervision is per slice).
    flat, pads, (b, s, a, a2) = self._slices(x)
    out = self.model.apply(variables, flat, *args, **kwargs)
    out = out[:, pads[0][0]:pads[0][0] + a, pads[1][0]:pads[1][0] + a2]
    return jnp.moveaxis(out.reshape(b, s, a, a2, -1), 1, 1 + self.axis)

  def __getattr__(self, name: str):
    return getattr(self.model, name)

  def __repr__(self) -> str:
    return f'SliceWise({self.model!r}, axis={self.axis})'
