"""Embedded synthetic MRI-like volumes: the file-free 3-D segmentation dataset.

The 3-D counterpart of `robust_med.data.synthetic`, with its regions and intensity scheme. Each
phantom is an (X, Y, Z) volume: an ellipsoidal body (cut by the field of view along Z, as in a
pelvic scan), an organ (a randomly rotated, deformed ellipsoid of varying size, off centre by a
random amount; class 1, "peripheral zone") with an inner region shifted to one side (class 2,
"transition zone", kept at least one voxel inside the organ), and two structures next to it (a
bright fluid-filled one and a dark one) whose intensities overlap the organ's, so thresholding
alone cannot segment it. Smooth texture, a multiplicative low-frequency bias field and Rician noise
are added, and each channel is z-scored per volume. Channel 2 (if any) is an ADC-like contrast of
the same anatomy.

The anatomy is laid out in millimetres, so `spacing` is honoured: the same seed at (32, 40, 16)
voxels of 1 x 1 x 2 mm gives the same organs as at (32, 40, 32) voxels of 1 mm. Every volume
comes from its own seeded streams (one for the anatomy, one per channel), so the dataset is a
deterministic function of the arguments, the first k volumes do not depend on `num`, and the
anatomy does not depend on `channels` or `num_classes`. Volumes are generated vectorised in
chunks of `_CHUNK`, which bounds the memory whatever `num`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from robust_med.data.synthetic import (  # The slices' scheme.
    JITTER, MEANS, REGIONS, TEXTURE, check_classes_and_channels)
from robust_med.errors import ConfigError

_CHUNK = 8  # Volumes generated at once.
_MIN_SIZE = 16  # Voxels along each axis, at least: smaller grids lose the inner zone.
_ADJACENT = np.ones((1, 3, 3, 3), bool)  # 26-neighbourhood within each volume of a chunk.

Shape = tuple[int, int, int]
Spacing = tuple[float, float, float]


def _scale(shape: Shape, spacing: Spacing) -> float:
  """Millimetres per grid unit: half the shortest extent of the volume."""
  return min(n * s for n, s in zip(shape, spacing)) / 2


def _grid(shape: Shape, spacing: Spacing) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Voxel-centre coordinates x (1, X, 1, 1), y (1, 1, Y, 1), z (1, 1, 1, Z) in millimetres from
  the centre, divided by half the shortest extent (which then spans [-1, 1])."""
  scale = _scale(shape, spacing)
  axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s / scale)
          for n, s in zip(shape, spacing)]
  return tuple(a.reshape([1 if i != d else -1 for i in range(4)])
               for d, a in enumerate(axes, start=1))


def _uniform(rngs: Sequence[np.random.Generator], low: float, high: float) -> np.ndarray:
  """One uniform parameter per volume, each from the volume's stream, shaped (N, 1, 1, 1)."""
  return np.array([rng.uniform(low, high) for rng in rngs], np.float32).reshape(-1, 1, 1, 1)


def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
  """Rotation matrices (N, 3, 3) about z (yaw), then y (pitch), then x (roll); angles (N,)."""
  one, zero = np.ones_like(yaw), np.zeros_like(yaw)

  def matrix(rows):
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)

  cz, sz, cy, sy, cx, sx = (np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch),
                            np.cos(roll), np.sin(roll))
  rz = matrix([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
  ry = matrix([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
  rx = matrix([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
  return rz @ ry @ rx


def _regions(rngs: Sequence[np.random.Generator], shape: Shape, spacing: Spacing) -> np.ndarray:
  """Region index (N, X, Y, Z) int8 into `REGIONS` (0 air, 1 body, 2 zone1, 3 zone2, 4 fluid,
  5 dark). Draws only per-volume parameters, none per voxel: the anatomy is the same at any
  grid."""
  x, y, z = _grid(shape, spacing)
  half = [n * s / 2 / _scale(shape, spacing) for n, s in zip(shape, spacing)]  # Grid units.
  bx, by, bz = _uniform(rngs, -0.08, 0.08), _uniform(rngs, -0.08, 0.08), _uniform(rngs, -0.1, 0.1)
  body_x, body_y = half[0] * _uniform(rngs, 0.78, 0.95), half[1] * _uniform(rngs, 0.78, 0.95)
  body_z = half[2] * _uniform(rngs, 1.1, 1.5)
  body = ((x - bx) / body_x) ** 2 + ((y - by) / body_y) ** 2 + ((z - bz) / body_z) ** 2 < 1
  # Organ frame: centre o, axes u (major), v (minor; the zones' and structures' side), w.
  ox, oy = bx + _uniform(rngs, -0.15, 0.15), by + _uniform(rngs, -0.15, 0.15)
  oz = bz + _uniform(rngs, -0.15, 0.15)
  angles = [_uniform(rngs, -limit, limit).ravel() for limit in (np.pi / 2, 0.3, 0.3)]
  r = _rotation(*angles)[:, :, :, None, None, None]  # (N, 3, 3, 1, 1, 1)
  dx, dy, dz = x - ox, y - oy, z - oz
  u, v, w = (r[:, 0, k] * dx + r[:, 1, k] * dy + r[:, 2, k] * dz for k in range(3))
  a = _uniform(rngs, 0.32, 0.44)
  b, c = a * _uniform(rngs, 0.65, 0.9), a * _uniform(rngs, 0.7, 0.95)
  # Deformation: low-order polynomials of the direction d (like spherical harmonics): lobes
  # around w (Re(e^ip (du + i dv)^k), k = 2, 3) and one end wider than the other (dw^3).
  radius = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
  du, dv, dw = (t / np.maximum(radius, 1e-6) for t in (u / a, v / b, w / c))
  p2, p3 = _uniform(rngs, 0, 2 * np.pi), _uniform(rngs, 0, 2 * np.pi)
  lobes2 = np.cos(p2) * (du ** 2 - dv ** 2) - np.sin(p2) * 2 * du * dv
  lobes3 = np.cos(p3) * (du ** 3 - 3 * du * dv ** 2) - np.sin(p3) * (3 * du ** 2 * dv - dv ** 3)
  wobble = (1 + _uniform(rngs, 0, 0.08) * lobes2 + _uniform(rngs, 0, 0.06) * lobes3
            + _uniform(rngs, -0.08, 0.08) * dw ** 3)
  organ = radius < wobble
  shift = b * _uniform(rngs, 0.1, 0.3)
  inner_a, inner_b = a * _uniform(rngs, 0.5, 0.68), b * _uniform(rngs, 0.5, 0.62)
  inner_c = c * _uniform(rngs, 0.55, 0.75)
  inner = (u / inner_a) ** 2 + ((v + shift) / inner_b) ** 2 + (w / inner_c) ** 2 < 1
  fluid_r = _uniform(rngs, 0.12, 0.25)
  fluid_w = c * _uniform(rngs, 0, 0.6)
  fluid = ((u / (1.3 * fluid_r)) ** 2 + ((v + b + fluid_r + 0.04) / fluid_r) ** 2
           + ((w - fluid_w) / (1.15 * fluid_r)) ** 2 < 1)
  dark_r = _uniform(rngs, 0.08, 0.14)
  dark = (u / dark_r) ** 2 + ((v - b - dark_r - 0.03) / dark_r) ** 2 + (w / (1.3 * dark_r)) ** 2 < 1
  # The inner zone keeps a voxel of organ around it: it never touches what lies outside.
  zone2 = inner & ndimage.binary_erosion(organ, _ADJACENT)
  regions = body.astype(np.int8)
  regions[fluid & body & ~organ] = 4
  regions[dark & body & ~organ] = 5
  regions[organ] = 2
  regions[zone2] = 3
  return regions


def _sigma(length: float, shape: Shape, spacing: Spacing) -> tuple[float, float, float, float]:
  """Gaussian sigmas in voxels (batch axis 0) for a correlation `length` in grid units."""
  return (0, *(length * _scale(shape, spacing) / s for s in spacing))


def _per_volume(array: np.ndarray, op) -> np.ndarray:
  """`op` (np.mean, np.std) over each volume of `array` (N, X, Y, Z), shaped (N, 1, 1, 1)."""
  return op(array, axis=(1, 2, 3), keepdims=True)


def _bias_field(coefficients: np.ndarray, shape: Shape, spacing: Spacing) -> np.ndarray:
  """Smooth multiplicative field exp(quadratic polynomial of x, y, z), (N, X, Y, Z), from
  `coefficients` (N, 9)."""
  x, y, z = _grid(shape, spacing)
  c = coefficients.astype(np.float32).reshape(-1, 9, 1, 1, 1)
  return np.exp(c[:, 0] * x + c[:, 1] * y + c[:, 2] * z
                + c[:, 3] * x * y + c[:, 4] * x * z + c[:, 5] * y * z
                + c[:, 6] * (x ** 2 - 0.33) + c[:, 7] * (y ** 2 - 0.33) + c[:, 8] * (z ** 2 - 0.33))


def _contrast(rngs: Sequence[np.random.Generator], regions: np.ndarray, channel: int,
              spacing: Spacing) -> np.ndarray:
  """One MR contrast of the anatomy in `regions`: (N, X, Y, Z) float32, z-scored per volume.
  Each volume's stream gives its parameters first, then its noise."""
  n, shape = regions.shape[0], regions.shape[1:]
  means = np.asarray(MEANS[channel], np.float32)
  jitter = np.stack([rng.normal(0, JITTER, size=len(REGIONS)) for rng in rngs])
  jitter[:, 0] = 0  # Air stays dark.
  strength = 0.25 if channel == 0 else 0.1
  bias = np.stack([rng.normal(0, strength, size=9) for rng in rngs])
  sigma = _uniform(rngs, 0.03, 0.08)
  noise = np.stack([rng.standard_normal((4, *shape), dtype=np.float32) for rng in rngs], axis=1)
  flat = regions.reshape(n, -1).astype(np.intp)
  image = np.take_along_axis((means + jitter).astype(np.float32), flat, axis=1)
  image = image.reshape(regions.shape)
  amplitude = np.asarray(TEXTURE[channel], np.float32)[regions]
  fine = ndimage.gaussian_filter(noise[0], _sigma(0.06, shape, spacing))
  coarse = ndimage.gaussian_filter(noise[1], _sigma(0.18, shape, spacing))
  texture = (0.5 * fine / np.maximum(_per_volume(fine, np.std), 1e-6)
             + 0.85 * coarse / np.maximum(_per_volume(coarse, np.std), 1e-6))
  image = ndimage.gaussian_filter(image, (0, 0.8, 0.8, 0.8))  # Partial-volume edges.
  image = (image + amplitude * texture) * _bias_field(bias, shape, spacing)
  image = np.hypot(image + sigma * noise[2], sigma * noise[3])  # Rician magnitude.
  std = np.maximum(_per_volume(image, np.std), 1e-6)
  return ((image - _per_volume(image, np.mean)) / std).astype(np.float32)


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _triple(value) -> tuple:
  """`value` as a tuple, () when it is not a sequence (a bare number)."""
  try:
    return tuple(value)
  except TypeError:
    return ()


def _check_args(num, shape, num_classes, channels, spacing) -> None:
  """Raises ConfigError for settings the volume generator cannot produce."""
  if not _is_int(num) or num < 1:
    raise ConfigError(f'synthetic volume count {num!r} is invalid: ask for 1 or more volumes')
  sizes = _triple(shape)
  if len(sizes) != 3 or not all(_is_int(s) and s >= _MIN_SIZE for s in sizes):
    raise ConfigError(f'synthetic volume shape {shape!r} is invalid: use three whole sizes of at '
                      f'least {_MIN_SIZE} voxels, e.g. (32, 40, 32)')
  check_classes_and_channels(num_classes, channels, 'synthetic volume')
  sizes = _triple(spacing)
  if len(sizes) != 3 or not all(isinstance(s, (int, float, np.number)) and not isinstance(s, bool)
                                and np.isfinite(s) and s > 0 for s in sizes):
    raise ConfigError(f'synthetic volume spacing {spacing!r} is invalid: give three positive '
                      'sizes in mm, e.g. (1.0, 1.0, 1.0)')


def make_volume_phantoms(num: int, *, shape: Sequence[int] = (32, 40, 32), num_classes: int = 3,
                         channels: int = 1, seed: int = 0,
                         spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> dict[str, np.ndarray]:
  """Returns `num` phantom volumes as {'image': float32 (N, X, Y, Z, C) z-scored per volume and
  channel, 'label': int32 (N, X, Y, Z), 'spacing': float32 (N, 3) (mm per voxel, `spacing` for
  all), 'id': int32 arange(N)}; a deterministic function of the arguments, whose first k volumes
  are those of `num=k`."""
  _check_args(num, shape, num_classes, channels, spacing)
  shape, spacing = tuple(int(s) for s in shape), tuple(float(s) for s in spacing)
  image = np.empty((num, *shape, channels), np.float32)
  label = np.empty((num, *shape), np.int32)
  # Per volume: one stream for the anatomy, one per channel (the first k equal for any count).
  streams = [[np.random.default_rng(s) for s in volume.spawn(3)]
             for volume in np.random.SeedSequence(seed).spawn(num)]
  for start in range(0, num, _CHUNK):
    chunk = streams[start:start + _CHUNK]
    regions = _regions([s[0] for s in chunk], shape, spacing)
    stop = start + len(chunk)
    zone = np.array([0, 0, 1, 2 if num_classes == 3 else 1, 0, 0], np.int32)
    label[start:stop] = zone[regions]
    for c in range(channels):
      image[start:stop, ..., c] = _contrast([s[1 + c] for s in chunk], regions, c, spacing)
  return {'image': image, 'label': label,
          'spacing': np.tile(np.asarray(spacing, np.float32), (num, 1)),
          'id': np.arange(num, dtype=np.int32)}
