"""The distribution-shift suite: ImageNet-C-style corruptions for gray medical images.

The distribution-shift suite: ImageNet-C-style corruptions (Hendrycks & Dietterich 2019) adapted
to gray medical images, at severities 1–5 (0 = clean).

Every corruption works on the images normalised to [0, 1] by `value_range` (None: by each image's
own minimum and maximum), maps back and clips to the range, so strengths are fractions of the
intensity range unless stated otherwise. Severity 0 returns the images unchanged (the same array).
The random draws (noise, which pixels impulse noise hits, the elastic field) depend on the key
only, never on the severity: a severity scales the same pattern, so the distance to the clean image
grows with it. Each image of a batch draws its own pattern; the sign of the brightness and gamma
shifts is drawn per image too.

Strengths by severity (`parameters(name)`, severity 0 first):

==============  ========================================  ===  ====  ====  ====  ====  ====
name            strength                                  0    1     2     3     4     5
==============  ========================================  ===  ====  ====  ====  ====  ====
gaussian_noise  additive N(0, σ²), σ                      0    0.02  0.04  0.06  0.08  0.12
speckle_noise   multiplicative x + x·n·σ, σ               0    0.06  0.1   0.15  0.25  0.35
impulse_noise   salt & pepper probability p               0    0.01  0.02  0.04  0.07  0.1
gaussian_blur   Gaussian σ, pixels                        0    0.5   1     1.5   2     3
contrast        reduction c: x → m + (1 − c)(x − m)       0    0.2   0.35  0.5   0.65  0.8
brightness      ± offset (sign drawn per image)           0    0.05  0.1   0.15  0.2   0.3
gamma           |log γ|, x → x^γ (sign drawn per image)   0    0.1   0.2   0.3   0.45  0.6
jpeg            JPEG quality (100: not compressed)        100  25    18    15    10    7
pixelate        downsampling factor (1: not pixelated)    1    1.5   2     2.5   3     4
elastic         max displacement, fraction of short side  0    0.01  0.02  0.03  0.04  0.05
==============  ========================================  ===  ====  ====  ====  ====  ====

Details. m is the image's (per channel) mean. 'gaussian_blur' extends the edges. 'jpeg' level-
shifts to 8-bit, takes the orthonormal 8 × 8 block DCT (edge-padded to a multiple of 8),
quantises the coefficients with the standard JPEG luminance table scaled by the quality (the IJG
rule: 5000 / q below 50, 200 − 2q above) and inverts, rounding to 8-bit levels; every channel is
treated as luminance. 'pixelate' averages over boxes `factor` pixels wide (area averaging, so
non-integer factors work: the image shrinks to round(side / factor) pixels) and scales back up by
nearest neighbour: a resolution shift. 'elastic' is a smooth random displacement (white noise
smoothed by a Gaussian of σ = 0.1 × the shorter side) scaled so its largest displacement is the
strength; it moves image content, so callers move the targets with `corruption_warp` (it is in
`GEOMETRIC`). The noise strengths are milder than ImageNet-C's: medical images carry fine
low-contrast detail.

The physical perturbations (`robust_med.physical`: bias field, motion, spike, Gibbs, Rician,
speckle, gain, dose, scatter, gamma) join the suite under their own names: severity s applies
random parameters spending the s-th budget of `physical.BUDGETS` (each kind's default settings),
drawn per image; none moves the anatomy, so no target moves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import augment, physical
from robust_med.errors import ConfigError

CORRUPTIONS = ('gaussian_noise', 'speckle_noise', 'impulse_noise', 'gaussian_blur', 'contrast',
               'brightness', 'gamma', 'jpeg', 'pixelate', 'elastic')
SEVERITIES = (1, 2, 3, 4, 5)
#: Every name the shift suite takes: the generic corruptions, then the physical perturbations.
NAMES = CORRUPTIONS + physical.KINDS
GEOMETRIC = ('elastic',)

_PARAMETERS = {
    'gaussian_noise': (0.0, 0.02, 0.04, 0.06, 0.08, 0.12),
    'speckle_noise': (0.0, 0.06, 0.1, 0.15, 0.25, 0.35),
    'impulse_noise': (0.0, 0.01, 0.02, 0.04, 0.07, 0.1),
    'gaussian_blur': (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    'contrast': (0.0, 0.2, 0.35, 0.5, 0.65, 0.8),
    'brightness': (0.0, 0.05, 0.1, 0.15, 0.2, 0.3),
    'gamma': (0.0, 0.1, 0.2, 0.3, 0.45, 0.6),
    'jpeg': (100, 25, 18, 15, 10, 7),
    'pixelate': (1.0, 1.5, 2.0, 2.5, 3.0, 4.0),
    'elastic': (0.0, 0.01, 0.02, 0.03, 0.04, 0.05),
}
ELASTIC_SIGMA = 0.1   # The elastic field's smoothness, fraction of the shorter side.

# The standard JPEG luminance quantisation table (ITU-T T.81, Annex K.1).
_JPEG_LUMINANCE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.float64)
_HIGHEST = jax.lax.Precision.HIGHEST


def check(name: str, severity) -> None:
  """Raises ConfigError unless `name` is a corruption of the suite or a physical perturbation
  (`robust_med.physical.KINDS`) and `severity` one of 0..5."""
  if name not in CORRUPTIONS and name not in physical.KINDS:
    raise ConfigError(f'Unknown corruption {name!r}: use one of {", ".join(CORRUPTIONS)} '
                      f"(or 'all'), a physical perturbation ({', '.join(physical.KINDS)}) or "
                      "'modality' (those of config.data.modality).")
  ok = (not isinstance(severity, bool) and isinstance(severity, (int, float, np.integer))
        and float(severity).is_integer() and 0 <= severity <= SEVERITIES[-1])
  if not ok:
    raise ConfigError(f'Corruption severity {severity!r} (for {name!r}) is invalid: use an integer '
                      f'from 0 to {SEVERITIES[-1]} (0 = clean).')


def parameters(name: str) -> tuple[float, ...]:
  """The strengths of `name` at severities 0..5 (see the module docstring's table)."""
  check(name, 0)
  if name in physical.KINDS:
    return (0.0,) + physical.BUDGETS[name]
  return _PARAMETERS[name]


def _strength(name: str, severity) -> float:
  check(name, severity)
  return parameters(name)[int(severity)]


def corruption_warp(name: str, key: jax.Array, batch_size: int, height: int, width: int,
                    severity: int) -> augment.Warp | None:
  """The warp `corrupt(name, key, ...)` applies for a GEOMETRIC corruption (the identity at
  severity 0), to move targets with; None for the others."""
  alpha = _strength(name, severity)
  if name not in GEOMETRIC:
    return None
  if not severity:
    return augment.identity_warp(batch_size, height, width)
  side = min(height, width)
  return augment.sample_warp(key, batch_size, height, width, elastic_alpha=alpha * side,
                             elastic_sigma=ELASTIC_SIGMA * side)


def corrupt(name: str, key: jax.Array, images: jax.Array, severity: int,
            value_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """`images` (B, H, W, C) corrupted by `name` at `severity` (static), clipped to `value_range`
  (None: each image's own min and max). Deterministic in `key`; severity 0 returns `images`."""
  strength = _strength(name, severity)
  if not severity:
    return images
  images = jnp.asarray(images)
  if name in GEOMETRIC:
    b, h, w = images.shape[:3]
    warp = corruption_warp(name, key, b, h, w, severity)
    out = augment.warp_images(warp, images.astype(jnp.float32))
    lo, hi = _range(images, value_range)
    return jnp.clip(out, lo, hi).astype(images.dtype)
  if name in physical.KINDS:  # random parameters spending the severity's budget
    model = physical.make(name)
    b, h, w = images.shape[:3]
    budget = jnp.full((b,), strength, jnp.float32)
    kp, kn = jax.random.split(key)
    theta = physical.random_parameters(model, kp, budget, h, w)
    return physical.perturb(model, images, theta, kn, value_range)
  lo, hi = _range(images, value_range)
  scale = jnp.maximum(hi - lo, 1e-12)
  x = (images.astype(jnp.float32) - lo) / scale
  x = jnp.clip(_CORRUPT[name](key, x, strength), 0.0, 1.0)
  return (lo + scale * x).astype(images.dtype)


def _range(images: jax.Array, value_range) -> tuple[jax.Array, jax.Array]:
  if value_range is not None:
    return jnp.float32(value_range[0]), jnp.float32(value_range[1])
  axes = tuple(range(1, images.ndim))
  return (jnp.min(images, axis=axes, keepdims=True).astype(jnp.float32),
          jnp.max(images, axis=axes, keepdims=True).astype(jnp.float32))


def _per_sample(v: jax.Array, x: jax.Array) -> jax.Array:
  return v.reshape(v.shape[:1] + (1,) * (x.ndim - 1))


def _sign(key: jax.Array, x: jax.Array) -> jax.Array:
  """A random ±1 per image, shaped (B, 1, 1, 1)."""
  return _per_sample(jnp.where(jax.random.bernoulli(key, 0.5, x.shape[:1]), 1.0, -1.0), x)


# ----------------------------------------------------------------------------- the corruptions
# Each takes (key, x in [0, 1], strength) and returns the corrupted x (clipped by the caller).


def _gaussian_noise(key, x, sigma):
  return x + sigma * jax.random.normal(key, x.shape, x.dtype)


def _speckle_noise(key, x, sigma):
  return x + x * sigma * jax.random.normal(key, x.shape, x.dtype)


def _impulse_noise(key, x, p):
  hit_key, salt_key = jax.random.split(key)
  hit = jax.random.uniform(hit_key, x.shape) < p          # grows with p for the same uniforms
  salt = jax.random.bernoulli(salt_key, 0.5, x.shape)
  return jnp.where(hit, salt.astype(x.dtype), x)


def _gaussian_blur(key, x, sigma):
  del key
  return augment.gaussian_blur(x, sigma, sigma)


def _contrast(key, x, c):
  del key
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  return mean + (1.0 - c) * (x - mean)


def _brightness(key, x, delta):
  return x + delta * _sign(key, x)


def _gamma(key, x, log_gamma):
  return jnp.power(jnp.clip(x, 0.0, 1.0), jnp.exp(log_gamma * _sign(key, x)))


def _dct_matrix(n: int = 8) -> np.ndarray:
  """The orthonormal DCT-II matrix D (coefficients = D @ block @ Dᵀ)."""
  k, i = np.meshgrid(np.arange(n), np.arange(n), indexing='ij')
  d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
  d[0] /= np.sqrt(2.0)
  return d


def jpeg_table(quality: float) -> np.ndarray:
  """The 8 × 8 luminance quantisation steps at a JPEG quality in [1, 100] (IJG scaling)."""
  quality = min(max(quality, 1), 100)
  factor = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
  return np.clip(np.floor((_JPEG_LUMINANCE * factor + 50.0) / 100.0), 1, 255)


def _jpeg(key, x, quality):
  del key
  b, h, w, c = x.shape
  ph, pw = -h % 8, -w % 8
  y = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode='edge') * 255.0 - 128.0
  blocks = y.reshape(b, (h + ph) // 8, 8, (w + pw) // 8, 8, c)
  d = jnp.asarray(_dct_matrix(), jnp.float32)
  q = jnp.asarray(jpeg_table(quality), jnp.float32)[:, None, :, None]   # (u, 1, v, 1)
  coef = jnp.einsum('ui,bminjc,vj->bmunvc', d, blocks, d, precision=_HIGHEST)
  coef = jnp.round(coef / q) * q
  blocks = jnp.einsum('ui,bmunvc,vj->bminjc', d, coef, d, precision=_HIGHEST)
  y = jnp.clip(jnp.round(blocks + 128.0), 0.0, 255.0) / 255.0
  return y.reshape(b, h + ph, w + pw, c)[:, :h, :w]


def _pixelate_matrix(n: int, factor: float) -> np.ndarray:
  """(n, n) matrix: area-average onto round(n / factor) cells, then nearest back to n pixels."""
  m = max(1, int(round(n / factor)))
  edges = np.arange(m + 1) * (n / m)                 # cell j spans [edges[j], edges[j + 1])
  i = np.arange(n)
  overlap = np.clip(np.minimum(edges[1:, None], i[None, :] + 1)
                    - np.maximum(edges[:-1, None], i[None, :]), 0, None)
  down = overlap / overlap.sum(axis=1, keepdims=True)          # (m, n)
  cell = np.minimum(np.floor((i + 0.5) * m / n).astype(int), m - 1)
  return down[cell]                                            # (n, n)


def _pixelate(key, x, factor):
  del key
  ph = jnp.asarray(_pixelate_matrix(x.shape[1], factor), jnp.float32)
  pw = jnp.asarray(_pixelate_matrix(x.shape[2], factor), jnp.float32)
  return jnp.einsum('hi,biwc,vw->bhvc', ph, x, pw, precision=_HIGHEST)


_CORRUPT = {
    'gaussian_noise': _gaussian_noise,
    'speckle_noise': _speckle_noise,
    'impulse_noise': _impulse_noise,
    'gaussian_blur': _gaussian_blur,
    'contrast': _contrast,
    'brightness': _brightness,
    'gamma': _gamma,
    'jpeg': _jpeg,
    'pixelate': _pixelate,
}
