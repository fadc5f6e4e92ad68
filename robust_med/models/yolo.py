"""A compact YOLO-style single-stage detector: CSP backbone, PAN neck, three scales, anchor-free.

The layout follows YOLOv8/YOLOX (read, not copied): a stem and four strided stages of CSP blocks
(features split in two, one half through `depth` residual bottlenecks, concatenated and fused), a
path-aggregation neck (top-down then bottom-up) over strides 8, 16 and 32, and a decoupled head
per scale. Anchor-free: every cell of every scale is one anchor point; the box branch predicts the
distances from the point to the box's left, top, right and bottom edges (softplus, in units of the
stride), the objectness branch one logit and the class branch one logit per class.

Normalisation is group norm (`groups` channels per group, at most), never batch norm, so samples
stay independent in the attacked path: per-sample attacks and AMAT margins rely on it. Width and
depth scale with `width` (base channels) and `depth` (bottlenecks per CSP block).

Outputs, flattened over the three scales in the order of `anchor_points`:
  {'box': (B, A, 4) x1 y1 x2 y2 in input pixels, 'obj': (B, A) logits, 'cls': (B, A, C) logits}.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robust_med.boxes import ltrb_to_box
from robust_med.models import conv as conv_lib
from robust_med.models.norm import GroupNorm

STRIDES = (8, 16, 32)


def anchor_points(image_size: int, strides: Sequence[int] = STRIDES) -> tuple[np.ndarray,
                                                                              np.ndarray]:
  """(A, 2) cell centres (x, y) in input pixels and (A,) their strides, scale by scale."""
  points, scale = [], []
  for s in strides:
    n = image_size // s
    ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
    points.append(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32) * s + s / 2)
    scale.append(np.full(n * n, s, np.float32))
  return np.concatenate(points), np.concatenate(scale)


def _groups(features: int, per_group: int) -> int:
  groups = max(1, features // per_group)
  while features % groups:
    groups -= 1
  return groups


class Conv(nn.Module):
  """conv – group norm – SiLU."""
  features: int
  kernel: int = 3
  strides: int = 1
  per_group: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = conv_lib.Conv(self.features, (self.kernel, self.kernel),
                      strides=(self.strides, self.strides), padding='SAME', use_bias=False)(x)
    x = GroupNorm(num_groups=_groups(self.features, self.per_group), epsilon=1e-5)(x)
    return nn.silu(x)


class CSP(nn.Module):
  """Cross-stage-partial block: half the features through `depth` bottlenecks, then fused."""
  features: int
  depth: int = 1
  shortcut: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    half = max(1, self.features // 2)
    a, b = Conv(half, 1)(x), Conv(half, 1)(x)
    for _ in range(self.depth):
      y = Conv(half, 3)(Conv(half, 3)(b))
      b = b + y if self.shortcut else y
    return Conv(self.features, 1)(jnp.concatenate([a, b], axis=-1))


def _upsample(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), 'nearest')


class Detector(nn.Module):
  """Anchor-free YOLO-style detector; see the module docstring."""
  num_classes: int
  width: int = 16
  depth: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    size = x.shape[1]
    if x.shape[1] != x.shape[2] or size % STRIDES[-1]:
      raise ValueError(f'Detector inputs must be square with a side divisible by {STRIDES[-1]}, '
                       f'got {x.shape[1:3]}.')
    w, d = self.width, self.depth
    x = Conv(w, 3, 2)(x)                            # /2
    x = CSP(2 * w, d)(Conv(2 * w, 3, 2)(x))         # /4
    p3 = CSP(4 * w, 2 * d)(Conv(4 * w, 3, 2)(x))    # /8
    p4 = CSP(8 * w, 2 * d)(Conv(8 * w, 3, 2)(p3))   # /16
    p5 = CSP(8 * w, d)(Conv(8 * w, 3, 2)(p4))       # /32
    # Top-down.
    t4 = CSP(8 * w, d, shortcut=False)(jnp.concatenate([_upsample(p5), p4], axis=-1))
    t3 = CSP(4 * w, d, shortcut=False)(jnp.concatenate([_upsample(t4), p3], axis=-1))
    # Bottom-up.
    b4 = CSP(8 * w, d, shortcut=False)(jnp.concatenate([Conv(4 * w, 3, 2)(t3), t4], axis=-1))
    b5 = CSP(8 * w, d, shortcut=False)(jnp.concatenate([Conv(8 * w, 3, 2)(b4), p5], axis=-1))
    points, strides = anchor_points(size)
    boxes, obj, cls = [], [], []
    for feature in (t3, b4, b5):
      hidden = max(16, 4 * w)
      box_branch = Conv(hidden, 3)(Conv(hidden, 3)(feature))
      cls_branch = Conv(hidden, 3)(Conv(hidden, 3)(feature))
      n = feature.shape[1] * feature.shape[2]
      boxes.append(conv_lib.Conv(4, (1, 1))(box_branch).reshape(-1, n, 4))
      # Objectness starts near 1 % (few cells hold an object), classes near 1 %.
      prior = float(np.log(0.01 / 0.99))
      head = lambda k: conv_lib.Conv(k, (1, 1), bias_init=nn.initializers.constant(prior))
      obj.append(head(1)(box_branch).reshape(-1, n))
      cls.append(head(self.num_classes)(cls_branch).reshape(-1, n, self.num_classes))
    distances = nn.softplus(jnp.concatenate(boxes, axis=1)) * strides[None, :, None]
    box = ltrb_to_box(jnp.asarray(points)[None], distances)
    return {'box': box, 'obj': jnp.concatenate(obj, axis=1), 'cls': jnp.concatenate(cls, axis=1)}
