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
    return sliding_window(lambda p: self.model.apply(variables, p, *args, **kwargs), x,
                          self.patch, overlap=self.overlap,
                          windows_per_batch=self.windows_per_batch, remat=self.remat)

  def __getattr__(self, name: str):
    return getattr(self.model, name)

  def __repr__(self) -> str:
    return f'SlidingWindow({self.model!r}, patch={self.patch})'
