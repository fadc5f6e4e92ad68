"""Training-time augmentation: per-sample geometric warps that move targets, and intensity changes.

Training-time augmentation: per-sample random geometric warps that move targets too, and
intensity changes.

Everything is pure JAX and jittable (the strengths are static Python numbers; the key is traced),
and per-sample: each image of a batch draws its own parameters from the key, so the same key gives
the same batch.

Coordinates. A point is (x, y) = (column, row) in pixels with pixel centres at integer coordinates,
so pixel (row i, column j) is the point (j, i). A box is continuous (x1, y1, x2, y2) where pixel i
spans [i, i + 1): a box coordinate u is the point u − 0.5.

Geometry. A `Warp` maps each *output* pixel to where it samples the *input*:

    input(p) = inverse @ [p + displacement(p), 1]

an affine part (flips, rotation, zoom and translation, all about the image centre) after an
elastic displacement field defined on the output grid. Images are resampled with
`warp_images` (bilinear; nearest for masks and labels), landmarks moved with `warp_points` (the
affine part inverted exactly, the elastic part by fixed-point iteration) and boxes with
`warp_boxes` (the enclosing box of the warped outline).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import dm_pix
import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage

_POINT_ITERATIONS = 16   # Fixed-point iterations inverting the elastic displacement.
_BOX_EDGE_POINTS = 8     # Points sampled along each edge of a box outline.
_TINY = 1e-12


@flax.struct.dataclass
class Warp:
  """A batch of geometric transforms: output pixel p samples the input at
  ``inverse @ [p + displacement(p), 1]``.

  Attributes:
    inverse: (B, 2, 3) affine map from output pixel coordinates (x, y, 1) to input coordinates.
    displacement: (B, H, W, 2) elastic (dx, dy) in pixels on the output grid.
  """
  inverse: jax.Array
  displacement: jax.Array


def identity_warp(batch_size: int, height: int, width: int) -> Warp:
  """The warp that leaves every image of a (batch_size, height, width, ...) batch unchanged."""
  eye = jnp.broadcast_to(jnp.eye(2, 3, dtype=jnp.float32), (batch_size, 2, 3))
  return Warp(inverse=eye, displacement=jnp.zeros((batch_size, height, width, 2), jnp.float32))


def pixel_grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
  """(x, y) coordinates of the pixel centres, each (H, W)."""
  y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                      jnp.arange(width, dtype=jnp.float32), indexing='ij')
  return x, y


# ----------------------------------------------------------------------------- smoothing


def _gaussian_taps(sigma, radius: int) -> jax.Array:
  """Normalised Gaussian weights (..., 2·radius + 1) for σ of any shape; σ = 0 gives the unit
  impulse (an exact identity)."""
  sigma = jnp.asarray(sigma, jnp.float32)[..., None]
  k = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  safe = jnp.maximum(sigma, 1e-6)
  taps = jnp.where(sigma > 0, jnp.exp(-0.5 * jnp.square(k / safe)), (k == 0).astype(jnp.float32))
  return taps / jnp.sum(taps, axis=-1, keepdims=True)


def _filter_axis(x: jax.Array, taps: jax.Array, axis: int, mode: str) -> jax.Array:
  """Correlates (B, H, W, C) `x` along spatial `axis` (1 or 2) with per-sample taps (B, K), as a
  sum of shifted copies (exact for an impulse, no convolution precision modes)."""
  radius = (taps.shape[-1] - 1) // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(x, pad, mode=mode)
  n = x.shape[axis]
  out = jnp.zeros_like(x)
  for i in range(taps.shape[-1]):
    w = taps[:, i].reshape((-1,) + (1,) * (x.ndim - 1))
    out = out + w * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
  return out


def gaussian_blur(images: jax.Array, sigma, max_sigma: float) -> jax.Array:
  """Separable Gaussian blur of (B, H, W, C) images with a per-sample σ (a scalar or (B,)), in
  pixels, ≤ `max_sigma` (static: it sets the kernel radius, ⌈3·max_sigma⌉). Edges are extended
  ('nearest'), so borders do not darken. σ = 0 leaves an image exactly unchanged."""
  radius = max(int(math.ceil(3.0 * max_sigma)), 1)
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), images.shape[:1])
  taps = _gaussian_taps(sigma, radius)
  out = _filter_axis(images, taps, 1, 'edge')
  return _filter_axis(out, taps, 2, 'edge')


def _smooth_field(noise: jax.Array, sigma: float) -> jax.Array:
  """Gaussian smoothing (σ in pixels, static) of a (B, H, W, C) field, zero outside the image
  (a depthwise separable convolution)."""
  radius = max(int(math.ceil(3.0 * sigma)), 1)
  k = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (k / sigma) ** 2)
  taps = (taps / taps.sum()).astype(np.float32)
  c = noise.shape[-1]
  dims = ('NHWC', 'HWIO', 'NHWC')
  out = noise
  for shape in ((len(taps), 1, 1, 1), (1, len(taps), 1, 1)):
    kernel = jnp.tile(jnp.asarray(taps).reshape(shape), (1, 1, 1, c))
    out = jax.lax.conv_general_dilated(out, kernel, (1, 1), 'SAME', dimension_numbers=dims,
                                       feature_group_count=c,
                                       precision=jax.lax.Precision.HIGHEST)
  return out


def elastic_field(key: jax.Array, batch_size: int, height: int, width: int, alpha: float,
                  sigma: float) -> jax.Array:
  """(B, H, W, 2) smooth random displacement: white noise smoothed by a Gaussian of σ = `sigma`
  pixels, scaled per sample so its largest displacement (vector length) is exactly `alpha` px."""
  noise = jax.random.normal(key, (batch_size, height, width, 2), jnp.float32)
  field = _smooth_field(noise, sigma)
  peak = jnp.max(jnp.sqrt(jnp.sum(jnp.square(field), axis=-1)), axis=(1, 2))
  return field * (alpha / jnp.maximum(peak, _TINY))[:, None, None, None]


# ----------------------------------------------------------------------------- geometry


def sample_warp(key: jax.Array, batch_size: int, height: int, width: int, *, flip: float = 0.0,
                vflip: float = 0.0, rotation: float = 0.0, scale: float = 0.0,
                translation: float = 0.0, elastic_alpha: float = 0.0,
                elastic_sigma: float = 4.0) -> Warp:
  """A per-sample random warp; every transform is about the image centre.

  The forward map of sample i takes input point u to ``c + t + s·R(θ)·F·(u − c)`` and then
  displaces it by the elastic field, where c is the image centre.

  Args:
    key: a PRNG key; each transform draws from its own sub-key, so turning one on does not change
      the others' draws.
    batch_size, height, width: the batch's shape (static).
    flip, vflip: probabilities of a horizontal / vertical flip (F).
    rotation: max |θ| in degrees, θ ~ U[−rotation, rotation].
    scale: max relative zoom, s ~ U[1 − scale, 1 + scale] (s > 1 enlarges the content; kept
      ≥ 0.05).
    translation: max shift t as a fraction of the side, t ~ U[−translation, translation]·(W, H).
    elastic_alpha: largest elastic displacement in pixels (every sample reaches it somewhere).
    elastic_sigma: the elastic field's smoothness, a Gaussian σ in pixels.

  Returns:
    The `Warp`; with every strength 0 exactly `identity_warp`.
  """
  if not any((flip, vflip, rotation, scale, translation, elastic_alpha)):
    return identity_warp(batch_size, height, width)
  keys = jax.random.split(key, 6)
  b = (batch_size,)
  one = jnp.ones(b, jnp.float32)
  fx = jnp.where(jax.random.bernoulli(keys[0], flip, b), -1.0, 1.0) if flip else one
  fy = jnp.where(jax.random.bernoulli(keys[1], vflip, b), -1.0, 1.0) if vflip else one
  if rotation:
    theta = jnp.deg2rad(jax.random.uniform(keys[2], b, jnp.float32, -rotation, rotation))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
  else:
    cos, sin = one, jnp.zeros(b, jnp.float32)
  s = (jnp.maximum(1.0 + jax.random.uniform(keys[3], b, jnp.float32, -scale, scale), 0.05)
       if scale else one)
  if translation:
    shift = jax.random.uniform(keys[4], b + (2,), jnp.float32, -translation, translation)
    tx, ty = shift[:, 0] * width, shift[:, 1] * height
  else:
    tx = ty = jnp.zeros(b, jnp.float32)
  # Inverse of u -> c + t + s R F (u - c):  v -> c + F R^T (v - c - t) / s  (F^-1 = F).
  a00, a01 = fx * cos / s, fx * sin / s
  a10, a11 = -fy * sin / s, fy * cos / s
  cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
  ox, oy = cx + tx, cy + ty
  b0 = cx - (a00 * ox + a01 * oy)
  b1 = cy - (a10 * ox + a11 * oy)
  inverse = jnp.stack([jnp.stack([a00, a01, b0], -1), jnp.stack([a10, a11, b1], -1)], -2)
  if elastic_alpha:
    displacement = elastic_field(keys[5], batch_size, height, width, elastic_alpha,
                                 elastic_sigma)
  else:
    displacement = jnp.zeros((batch_size, height, width, 2), jnp.float32)
  return Warp(inverse=inverse, displacement=displacement)


def _apply_affine(inverse: jax.Array, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x', y') = inverse @ [x, y, 1] with inverse (B, 2, 3) and x, y (B, ...): elementwise (exact
  for the identity, no matmul precision modes)."""
  m = inverse.reshape(inverse.shape[:1] + (1,) * (x.ndim - 1) + (2, 3))
  return (m[..., 0, 0] * x + m[..., 0, 1] * y + m[..., 0, 2],
          m[..., 1, 0] * x + m[..., 1, 1] * y + m[..., 1, 2])


def sample_coordinates(warp: Warp) -> tuple[jax.Array, jax.Array]:
  """(x, y) input coordinates, each (B, H, W), that the output pixels sample."""
  h, w = warp.displacement.shape[1:3]
  gx, gy = pixel_grid(h, w)
  return _apply_affine(warp.inverse, gx[None] + warp.displacement[..., 0],
                       gy[None] + warp.displacement[..., 1])


def _nearest(image: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """(H, W, ...) image sampled at the nearest pixel of (x, y) (H', W'), clamped to the edge."""
  h, w = image.shape[:2]
  col = jnp.clip(jnp.round(x), 0, w - 1).astype(jnp.int32)
  row = jnp.clip(jnp.round(y), 0, h - 1).astype(jnp.int32)
  return image[row, col]


def _bilinear(image: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """(H, W, C) float image sampled bilinearly at (x, y) (H', W'), 'nearest' outside."""
  sample = lambda channel: ndimage.map_coordinates(channel, [y, x], order=1, mode='nearest')
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def warp_images(warp: Warp, images: jax.Array, order: int = 1) -> jax.Array:
  """Resamples a batch (B, H, W) or (B, H, W, C) through `warp`.

  Args:
    warp: the transforms, one per sample, on the batch's H × W grid.
    images: any dtype; order 1 interpolates in float32 and casts back (rounding integers).
    order: 1 bilinear (images), 0 nearest (masks, labels: the output holds only input values).
      Samples outside the image take the nearest edge pixel.

  Returns:
    The warped batch, same shape and dtype.
  """
  if order not in (0, 1):
    raise ValueError(f'warp_images order {order!r}: use 0 (nearest) or 1 (bilinear).')
  squeeze = images.ndim == 3
  x = images[..., None] if squeeze else images
  cx, cy = sample_coordinates(warp)
  if order == 0:
    out = jax.vmap(_nearest)(x, cx, cy)
  else:
    floating = jnp.issubdtype(x.dtype, jnp.floating)
    out = jax.vmap(_bilinear)(x if floating else x.astype(jnp.float32), cx, cy)
    if not floating:
      out = jnp.round(out) if jnp.issubdtype(x.dtype, jnp.integer) else out > 0.5
    out = out.astype(x.dtype)
  return out[..., 0] if squeeze else out


def _interpolate_displacement(displacement: jax.Array, x: jax.Array,
                              y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Bilinear (dx, dy) of a (B, H, W, 2) field at points x, y (B, L), 'nearest' outside."""
  d = jax.vmap(_bilinear)(displacement, x, y)
  return d[..., 0], d[..., 1]


def warp_points(warp: Warp, points: jax.Array) -> jax.Array:
  """Where input points (B, L, 2) (x, y) end up in the warped images.

  Solves ``inverse @ [p + d(p), 1] = q`` for the output point p of each input point q: the affine
  part exactly, then p = v − d(p) by fixed-point iteration (bilinear d; it converges while the
  elastic field's gradient stays below 1, i.e. the warp does not fold).
  """
  points = jnp.asarray(points, jnp.float32)
  m = warp.inverse
  a00, a01, b0 = m[:, 0, 0, None], m[:, 0, 1, None], m[:, 0, 2, None]
  a10, a11, b1 = m[:, 1, 0, None], m[:, 1, 1, None], m[:, 1, 2, None]
  det = a00 * a11 - a01 * a10
  rx, ry = points[..., 0] - b0, points[..., 1] - b1
  vx = (a11 * rx - a01 * ry) / det
  vy = (a00 * ry - a10 * rx) / det
  px, py = vx, vy
  for _ in range(_POINT_ITERATIONS):
    dx, dy = _interpolate_displacement(warp.displacement, px, py)
    px, py = vx - dx, vy - dy
  return jnp.stack([px, py], axis=-1)


def warp_boxes(warp: Warp, boxes: jax.Array, height: int, width: int) -> jax.Array:
  """The enclosing boxes (B, M, 4) of the warped outlines of boxes (B, M, 4) (x1, y1, x2, y2),
  clipped to [0, W] × [0, H]; `_BOX_EDGE_POINTS` points per edge follow the warp. A box can come
  back with zero area (pushed out of the image): callers decide validity."""
  boxes = jnp.asarray(boxes, jnp.float32)
  b, m = boxes.shape[:2]
  t = jnp.linspace(0.0, 1.0, _BOX_EDGE_POINTS, dtype=jnp.float32)
  x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
  lerp = lambda lo, hi: (1.0 - t) * lo + t * hi          # exact at both ends
  xs = jnp.concatenate([lerp(x1, x2), jnp.broadcast_to(x2, x1.shape[:-1] + t.shape),
                        lerp(x1, x2), jnp.broadcast_to(x1, x1.shape[:-1] + t.shape)], -1)
  ys = jnp.concatenate([jnp.broadcast_to(y1, y1.shape[:-1] + t.shape), lerp(y1, y2),
                        jnp.broadcast_to(y2, y1.shape[:-1] + t.shape), lerp(y1, y2)], -1)
  outline = jnp.stack([xs, ys], -1).reshape(b, -1, 2) - 0.5     # pixel-centre coordinates
  moved = (warp_points(warp, outline) + 0.5).reshape(b, m, -1, 2)
  lo, hi = jnp.min(moved, axis=2), jnp.max(moved, axis=2)
  out = jnp.concatenate([lo, hi], -1)
  return jnp.clip(out, 0.0, jnp.array([width, height, width, height], jnp.float32))


# ----------------------------------------------------------------------------- intensity


def _per_sample(v: jax.Array, images: jax.Array) -> jax.Array:
  return v.reshape(v.shape[:1] + (1,) * (images.ndim - 1))


def _range(images: jax.Array, value_range) -> tuple[jax.Array, jax.Array]:
  """(lo, hi) broadcastable to the batch: `value_range`, or each image's own min and max."""
  if value_range is not None:
    return jnp.float32(value_range[0]), jnp.float32(value_range[1])
  axes = tuple(range(1, images.ndim))
  return (jnp.min(images, axis=axes, keepdims=True), jnp.max(images, axis=axes, keepdims=True))


def intensity(key: jax.Array, images: jax.Array, *, gamma: float = 0.0, contrast: float = 0.0,
              brightness: float = 0.0, noise: float = 0.0, blur: float = 0.0,
              speckle: float = 0.0,
              value_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """Per-sample random intensity changes of (B, H, W, C) images, in this order:

  * gamma: γ = exp(u), u ~ U[−gamma, gamma], applied to the image normalised by `value_range`
    (None: by the image's own min and max) and mapped back;
  * contrast: factor ~ U[1 − contrast, 1 + contrast] about each image's (per channel) mean;
  * brightness: an added offset ~ U[−brightness, brightness];
  * blur: a Gaussian blur of σ ~ U[0, blur] pixels (σ = 0: unchanged);
  * speckle: multiplicative noise x + (x − lo)·n·σ, n ~ N(0, 1) per pixel, σ ~ U[0, speckle] (lo:
    the range's low end, 0 without a range);
  * noise: additive Gaussian noise of σ ~ U[0, noise].

  Offsets and σs are in image units. An op whose maximum is 0 is skipped (the identity); each
  draws from its own sub-key. The result is clipped to `value_range` (None: not clipped).
  """
  keys = jax.random.split(key, 6)
  b = images.shape[:1]
  uniform = lambda k, lo, hi: _per_sample(jax.random.uniform(k, b, jnp.float32, lo, hi), images)
  x = images
  if gamma:
    lo, hi = _range(x, value_range)
    scale = jnp.maximum(hi - lo, _TINY)
    g = uniform(keys[0], -gamma, gamma)
    x = lo + scale * jax.vmap(dm_pix.adjust_gamma)((x - lo) / scale, jnp.exp(g))
  if contrast:
    factor = uniform(keys[1], 1.0 - contrast, 1.0 + contrast)
    x = jax.vmap(dm_pix.adjust_contrast)(x, factor)
  if brightness:
    x = jax.vmap(dm_pix.adjust_brightness)(x, uniform(keys[2], -brightness, brightness))
  if blur:
    sigma = jax.random.uniform(keys[3], b, jnp.float32, 0.0, blur)
    x = gaussian_blur(x, sigma, blur)
  if speckle:
    sigma = uniform(keys[4], 0.0, speckle)
    lo = 0.0 if value_range is None else value_range[0]
    x = x + (x - lo) * sigma * jax.random.normal(jax.random.fold_in(keys[4], 1), x.shape, x.dtype)
  if noise:
    sigma = uniform(keys[5], 0.0, noise)
    x = x + sigma * jax.random.normal(jax.random.fold_in(keys[5], 1), x.shape, x.dtype)
  if value_range is not None:
    x = jnp.clip(x, value_range[0], value_range[1])
  return x.astype(images.dtype)


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
  """The `augment` config section: maxima of the per-sample random strengths (0 = off)."""
  flip: float = 0.0            # probability of a horizontal flip
  vflip: float = 0.0           # probability of a vertical flip
  rotation: float = 0.0        # max |angle|, degrees
  scale: float = 0.0           # max relative zoom
  translation: float = 0.0     # max shift, fraction of the side
  elastic_alpha: float = 0.0   # elastic displacement amplitude, pixels
  elastic_sigma: float = 4.0   # its smoothness, pixels
  gamma: float = 0.0           # max |log γ|
  contrast: float = 0.0        # max relative contrast change
  brightness: float = 0.0      # max additive brightness change
  noise: float = 0.0           # max Gaussian noise σ
  blur: float = 0.0            # max Gaussian blur σ, pixels
  speckle: float = 0.0         # max multiplicative (ultrasound speckle) noise σ

  @classmethod
  def from_config(cls, c: Any) -> 'AugmentSettings':
    """From a config section (an ml_collections ConfigDict or a mapping); missing keys keep
    their defaults."""
    return cls(**{k: float(c[k]) for k in KEYS if k in c})

  def geometric(self) -> dict[str, float]:
    """Keyword arguments of `sample_warp`."""
    return {k: getattr(self, k) for k in _GEOMETRIC_KEYS}

  def photometric(self) -> dict[str, float]:
    """Keyword arguments of `intensity` (without value_range)."""
    return {k: getattr(self, k) for k in _PHOTOMETRIC_KEYS}

  def is_identity(self) -> bool:
    """True when every strength is 0 (elastic_sigma alone changes nothing)."""
    return not any(getattr(self, k) for k in KEYS if k != 'elastic_sigma')


KEYS = tuple(f.name for f in dataclasses.fields(AugmentSettings))
_GEOMETRIC_KEYS = ('flip', 'vflip', 'rotation', 'scale', 'translation', 'elastic_alpha',
                   'elastic_sigma')
_PHOTOMETRIC_KEYS = ('gamma', 'contrast', 'brightness', 'noise', 'blur', 'speckle')
