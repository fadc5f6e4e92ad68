"""A 2-D U-Net in the nnU-Net style (Isensee et al. 2021).

Each stage is two blocks of conv 3×3 – instance norm – leaky ReLU(0.01); the encoder downsamples
with strided convolutions and the decoder upsamples with transposed convolutions, concatenating the
skip connection. Instance norm keeps samples independent, which per-sample attacks and per-sample
margins rely on (batch norm would let one sample's noise change another's prediction).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax


class ConvBlock(nn.Module):
  """conv – instance norm – leaky ReLU."""
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # No conv bias: the instance norm right after removes it (and Adam would amplify its
    # zero gradient's rounding noise into updates).
    x = nn.Conv(self.features, (3, 3), strides=(self.strides, self.strides), padding='SAME',
                use_bias=False)(x)
    x = nn.InstanceNorm(epsilon=1e-5)(x)
    return nn.leaky_relu(x, negative_slope=0.01)


class UNet(nn.Module):
  """U-Net returning per-pixel class logits of shape (B, H, W, num_classes).

  Attributes:
    num_classes: output classes, background included.
    features: channels per resolution level, e.g. (16, 32, 64, 128); its length is the depth.
      nnU-Net doubles the width per level up to a cap.
  """
  num_classes: int
  features: Sequence[int] = (16, 32, 64, 128)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    skips = []
    for level, f in enumerate(self.features):
      x = ConvBlock(f, strides=1 if level == 0 else 2)(x)
      x = ConvBlock(f)(x)
      skips.append(x)
    for f, skip in zip(reversed(self.features[:-1]), reversed(skips[:-1])):
      x = nn.ConvTranspose(f, (2, 2), strides=(2, 2))(x)
      x = jax.numpy.concatenate([x, skip], axis=-1)
      x = ConvBlock(f)(x)
      x = ConvBlock(f)(x)
    return nn.Conv(self.num_classes, (1, 1))(x)


def unet_features(base_width: int, depth: int, max_width: int = 320) -> tuple[int, ...]:
  """nnU-Net's widths: `base_width` doubled per level, capped at `max_width`."""
  return tuple(min(base_width * 2**i, max_width) for i in range(depth))
