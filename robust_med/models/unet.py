"""A U-Net in the nnU-Net style (Isensee et al. 2021), 2-D or 3-D.

Each stage is two blocks of conv 3×3 (3×3×3 on volumes) – instance norm – leaky ReLU(0.01); the
encoder downsamples with strided convolutions and the decoder upsamples with transposed
convolutions, concatenating the skip connection. The number of spatial dims is the input's
(B, *spatial, C): the same module is nnU-Net's 2d and 3d_fullres network; on 2-D inputs its
parameters are exactly those it always had. Instance norm keeps samples independent, which per-sample attacks and per-sample
margins rely on (batch norm would let one sample's noise change another's prediction).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax

from robust_med.models.conv import Conv, ConvTranspose
from robust_med.models.norm import InstanceNorm


class ConvBlock(nn.Module):
  """conv – instance norm – leaky ReLU."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # No conv bias: the instance norm right after removes it (and Adam would amplify its
    # zero gradient's rounding noise into updates).
    nd = x.ndim - 2  # spatial dims
    x = Conv(self.features, (3,) * nd, strides=(self.strides,) * nd, padding='SAME',
             use_bias=False)(x)
    x = InstanceNorm(epsilon=1e-5)(x)
    return nn.leaky_relu(x, negative_slope=0.01)


class UNet(nn.Module):
  """U-Net returning per-pixel (per-voxel) class logits of shape (B, *spatial, num_classes).

  Attributes:
    num_classes: output classes, background included.
    features: channels per resolution level, e.g. (16, 32, 64, 128); its length is the depth.
      nnU-Net doubles the width per level up to a cap.
  """
  num_classes: int
  features: Sequence[int] = (16, 32, 64, 128)
  #: nnU-Net's deep supervision: this many extra 1×1 heads on the decoder's coarser levels
  #: (1/2, 1/4, ... of the resolution; at most depth − 2: never the bottleneck). With
  #: `aux=True` the call returns {'logits': full resolution, 'deep': (coarser, ...)}.
  deep_supervision: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, aux: bool = False):
    nd = x.ndim - 2
    levels = []
    logits = Conv(self.num_classes, (1,) * nd)(unet_trunk(x, self.features, levels))
    if not self.deep_supervision or not (aux or self.is_initializing()):
      return logits
    if self.deep_supervision > len(self.features) - 2:
      raise ValueError(f'deep_supervision={self.deep_supervision} needs a U-Net of depth '
                       f'{self.deep_supervision + 2} or more (this one: {len(self.features)}).')
    # levels[-1] is full resolution, levels[-1 - s] is 1/2^s of it.
    deep = tuple(Conv(self.num_classes, (1,) * nd, name=f'deep_{s}')(levels[-1 - s])
                 for s in range(1, self.deep_supervision + 1))
    return {'logits': logits, 'deep': deep} if aux else logits


def unet_trunk(x: jax.Array, features: Sequence[int], levels: list | None = None) -> jax.Array:
  """The encoder-decoder body shared by every U-Net here: full-resolution features of width
  `features[0]`. Called inside a compact `__call__`, its layers belong to the calling module (so a
  plain U-Net's parameter names do not change). `levels`, when given, receives each decoder
  stage's output, coarsest first (the last is the returned full-resolution features)."""
  skips = []
  for level, f in enumerate(features):
    x = ConvBlock(f, strides=1 if level == 0 else 2)(x)
    x = ConvBlock(f)(x)
    skips.append(x)
  nd = x.ndim - 2
  for f, skip in zip(reversed(features[:-1]), reversed(skips[:-1])):
    x = ConvTranspose(f, (2,) * nd, strides=(2,) * nd)(x)
    x = jax.numpy.concatenate([x, skip], axis=-1)
    x = ConvBlock(f)(x)
    x = ConvBlock(f)(x)
    if levels is not None:
      levels.append(x)
  return x


class MultiTaskUNet(nn.Module):
  """The Multi-Task U-Net of Yao et al. (MICCAI 2020) for landmark detection: one shared
  encoder-decoder and three 1×1 heads, returning a dict of (B, H, W, num_landmarks) arrays:
  'heatmap' (logits of "this pixel lies within r of the landmark"), 'offset_x' and 'offset_y'
  (landmark − pixel, in units of r)."""
  num_landmarks: int
  features: Sequence[int] = (16, 32, 64, 128)
  #: Initial heatmap probability everywhere (the bias of the heatmap head, as in RetinaNet's
  #: prior): a disk covers ~1% of the image, and starting at 0.5 everywhere makes the first
  #: hundreds of steps spend themselves on turning the background off.
  heatmap_prior: float = 0.01

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = unet_trunk(x, self.features)
    prior = math.log(self.heatmap_prior / (1 - self.heatmap_prior))
    out = {'heatmap': Conv(self.num_landmarks, (1, 1), name='heatmap',
                              bias_init=nn.initializers.constant(prior))(x)}
    for name in ('offset_x', 'offset_y'):
      out[name] = Conv(self.num_landmarks, (1, 1), name=name)(x)
    return out


def unet_features(base_width: int, depth: int, max_width: int = 320) -> tuple[int, ...]:
  """nnU-Net's widths: `base_width` doubled per level, capped at `max_width`."""
  return tuple(min(base_width * 2**i, max_width) for i in range(depth))
