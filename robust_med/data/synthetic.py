"""Embedded synthetic MRI-like phantoms: the default, file-free segmentation dataset.

Each phantom is a prostate-like 2-D slice: an elliptical body, an organ (a rotated, deformed
ellipse; class 1, "peripheral zone") with an inner region shifted to one side (class 2,
"transition zone"), and two background structures next to it (a bright fluid-filled one and a
dark one) whose intensities overlap the organ's, so thresholding alone cannot segment it.
Smooth texture, a multiplicative low-frequency bias field and Rician noise are added, and each
channel is z-scored per image. Channel 2 (if any) is an ADC-like contrast of the same anatomy.
Everything is generated from a seeded RNG and vectorised over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from robust_med.errors import ConfigError

# Region order: outside body, body, organ class 1, organ class 2, bright structure, dark structure.
REGIONS = ('air', 'body', 'zone1', 'zone2', 'fluid', 'dark')
# Per channel: mean intensity per region, and the texture amplitude per region.
MEANS = ((0.03, 0.45, 0.72, 0.50, 0.85, 0.22),  # T2-like: zone1 bright, zone2 ~ body.
          (0.02, 0.50, 0.72, 0.42, 0.95, 0.25))  # ADC-like: fluid brightest, zone2 darker.
TEXTURE = ((0.00, 0.10, 0.08, 0.14, 0.03, 0.06),
            (0.00, 0.08, 0.06, 0.08, 0.02, 0.05))
JITTER = 0.07  # Per-image random shift of each region's mean (overlapping distributions).


def _grid(patch_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (1, H, W), scaled so the shorter side spans [-1, 1]."""
  h, w = patch_size
  scale = min(h, w) / 2
  y = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) / scale)[None, :, None]
  x = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) / scale)[None, None, :]
  return y, x


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
  """Per-sample uniform parameter, shaped (N, 1, 1) to broadcast over the image."""
  return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)


def _region_masks(rng: np.random.Generator, n: int,
                  patch_size: tuple[int, int]) -> dict[str, np.ndarray]:
  """Boolean masks (N, H, W) of the body, organ zones and background structures."""
  y, x = _grid(patch_size)
  by, bx = _uniform(rng, -0.08, 0.08, n), _uniform(rng, -0.08, 0.08, n)
  body_h, body_w = _uniform(rng, 0.7, 0.9, n), _uniform(rng, 0.8, 0.98, n)
  body = ((y - by) / body_h) ** 2 + ((x - bx) / body_w) ** 2 < 1
  # Organ frame: centre (oy, ox), rotated by theta; u along the major axis, v along the minor.
  oy, ox = by + _uniform(rng, -0.2, 0.2, n), bx + _uniform(rng, -0.2, 0.2, n)
  theta = _uniform(rng, -np.pi / 2, np.pi / 2, n)
  u = np.cos(theta) * (x - ox) + np.sin(theta) * (y - oy)
  v = -np.sin(theta) * (x - ox) + np.cos(theta) * (y - oy)
  a = _uniform(rng, 0.3, 0.46, n)
  b = a * _uniform(rng, 0.65, 0.9, n)
  phi = np.arctan2(v / b, u / a)
  wobble = (1 + _uniform(rng, 0, 0.08, n) * np.cos(2 * phi + _uniform(rng, 0, 2 * np.pi, n))
            + _uniform(rng, 0, 0.06, n) * np.cos(3 * phi + _uniform(rng, 0, 2 * np.pi, n)))
  organ = np.sqrt((u / a) ** 2 + (v / b) ** 2) < wobble
  shift = b * _uniform(rng, 0.1, 0.3, n)
  inner_a, inner_b = a * _uniform(rng, 0.5, 0.68, n), b * _uniform(rng, 0.5, 0.62, n)
  inner = (u / inner_a) ** 2 + ((v + shift) / inner_b) ** 2 < 1
  zone2 = organ & inner
  fluid_r = _uniform(rng, 0.12, 0.25, n)
  fluid = (u / (1.3 * fluid_r)) ** 2 + ((v + b + fluid_r + 0.04) / fluid_r) ** 2 < 1
  dark_r = _uniform(rng, 0.08, 0.14, n)
  dark = (u / dark_r) ** 2 + ((v - b - dark_r - 0.03) / dark_r) ** 2 < 1
  return {'body': body, 'zone1': organ & ~zone2, 'zone2': zone2,
          'fluid': fluid & body & ~organ, 'dark': dark & body & ~organ}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
  """Gaussian-filtered white noise (N, H, W) with unit standard deviation."""
  noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, sigma, sigma))
  return noise / max(float(noise.std()), 1e-6)


def _bias_field(rng: np.random.Generator, n: int, patch_size: tuple[int, int],
                strength: float) -> np.ndarray:
  """Smooth multiplicative field exp(quadratic polynomial) of the coordinates, (N, H, W)."""
  y, x = _grid(patch_size)
  c = rng.normal(0, strength, size=(5, n, 1, 1)).astype(np.float32)
  return np.exp(c[0] * y + c[1] * x + c[2] * x * y
                + c[3] * (y ** 2 - 0.33) + c[4] * (x ** 2 - 0.33))


def _contrast(rng: np.random.Generator, masks: dict[str, np.ndarray], channel: int,
              patch_size: tuple[int, int]) -> np.ndarray:
  """One MR contrast of the anatomy in `masks`: (N, H, W) float32, z-scored per image."""
  n = masks['body'].shape[0]
  shape = (n, *patch_size)
  means, texture_amp = MEANS[channel], TEXTURE[channel]
  fine, coarse = _smooth_noise(rng, shape, 1.0), _smooth_noise(rng, shape, 3.0)
  texture = 0.5 * fine + 0.85 * coarse
  image = np.zeros(shape, np.float32)
  amplitude = np.zeros(shape, np.float32)
  for index, region in enumerate(REGIONS):
    mask = np.ones(shape, bool) if region == 'air' else masks[region]
    mean = means[index] + rng.normal(0, JITTER if index else 0, size=(n, 1, 1)).astype(np.float32)
    image = np.where(mask, mean, image)
    amplitude = np.where(mask, texture_amp[index], amplitude)
  image = ndimage.gaussian_filter(image, (0, 0.8, 0.8))  # Partial-volume edges.
  bias = _bias_field(rng, n, patch_size, strength=0.25 if channel == 0 else 0.1)
  image = (image + amplitude * texture) * bias
  sigma = _uniform(rng, 0.03, 0.08, n)
  image = np.hypot(image + sigma * rng.standard_normal(shape, dtype=np.float32),
                   sigma * rng.standard_normal(shape, dtype=np.float32))
  mean = image.mean(axis=(1, 2), keepdims=True)
  std = image.std(axis=(1, 2), keepdims=True)
  return ((image - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def _check_args(num: int, patch_size: tuple[int, int], num_classes: int, channels: int) -> None:
  """Raises ConfigError for settings the phantom generator cannot produce."""
  if num < 0:
    raise ConfigError(f'synthetic dataset size {num} is negative: '
                      'set data.num_train / data.num_val to 0 or more')
  if len(patch_size) != 2 or min(patch_size) < 8:
    raise ConfigError(f'synthetic patch_size {patch_size} is invalid: '
                      'use two sizes of at least 8, e.g. (64, 64)')
  check_classes_and_channels(num_classes, channels, 'synthetic')


def check_classes_and_channels(num_classes: int, channels: int, what: str) -> None:
  """ConfigError unless the phantoms (slices or volumes: `what`) can have these classes and
  channels."""
  if num_classes not in (2, 3):
    raise ConfigError(f'{what} num_classes={num_classes!r} is not supported: '
                      'use 2 (organ) or 3 (two zones)')
  if channels not in (1, 2):
    raise ConfigError(f'{what} channels={channels!r} is not supported: '
                      'use 1 (T2-like) or 2 (T2 + ADC-like)')


def make_phantoms(num: int, *, patch_size: Sequence[int] = (64, 64), num_classes: int = 3,
                  channels: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
  """Returns `num` phantoms as {'image': float32 (N, H, W, C), 'label': int32 (N, H, W),
  'id': int32 arange(N)}; a deterministic function of the arguments."""
  patch_size = tuple(int(s) for s in patch_size)
  _check_args(num, patch_size, num_classes, channels)
  rng = np.random.default_rng(seed)
  masks = _region_masks(rng, num, patch_size)
  label = np.zeros((num, *patch_size), np.int32)
  label[masks['zone1']] = 1
  label[masks['zone2']] = 2 if num_classes == 3 else 1
  image = np.stack([_contrast(rng, masks, c, patch_size) for c in range(channels)], axis=-1)
  return {'image': image, 'label': label, 'id': np.arange(num, dtype=np.int32)}
