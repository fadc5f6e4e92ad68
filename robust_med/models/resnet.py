"""A pre-activation ResNet classifier with group norm, sized for small medical images.

A pre-activation ResNet classifier (He et al., "Identity mappings in deep residual networks",
2016) sized for 28–128 px medical images on a CPU.

Layout: a 3×3 stem convolution (stride `stem_stride`), `stages` stages of `blocks` pre-activation
basic blocks (norm → ReLU → 3×3 conv, twice, plus the identity or a 1×1 projection), the width
doubling and the resolution halving at every stage after the first (width capped at `max_width`),
then norm → ReLU → global average pooling → a linear layer to the class logits.

Normalisation is group norm (at most `groups` groups, whole channels per group), never batch norm,
so samples stay independent in the attacked path: per-sample attacks and AMAT margins rely on it,
and the model has no running statistics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_med.models.conv import Conv
from robust_med.models.norm import GroupNorm


def _norm(features: int, groups: int) -> GroupNorm:
  g = max(1, min(groups, features))
  while features % g:
    g -= 1
  return GroupNorm(num_groups=g)


class PreActBlock(nn.Module):
  features: int
  stride: int = 1
  groups: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pre = nn.relu(_norm(x.shape[-1], self.groups)(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False)(pre)
    y = Conv(self.features, (3, 3), (self.stride, self.stride), use_bias=False)(pre)
    y = nn.relu(_norm(self.features, self.groups)(y))
    y = Conv(self.features, (3, 3), use_bias=False)(y)
    return shortcut + y


class ResNetClassifier(nn.Module):
  """Outputs (B, num_classes) logits for images (B, H, W, C)."""
  num_classes: int
  base_width: int = 16
  blocks: int = 2
  stages: int = 4
  stem_stride: int = 1
  max_width: int = 512
  groups: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = Conv(self.base_width, (3, 3), (self.stem_stride, self.stem_stride), use_bias=False,
                name='stem')(x)
    for stage in range(self.stages):
      width = min(self.base_width * 2 ** stage, self.max_width)
      for block in range(self.blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = PreActBlock(width, stride, self.groups, name=f'stage{stage}_block{block}')(x)
    x = nn.relu(_norm(x.shape[-1], self.groups)(x))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='logits')(x)
