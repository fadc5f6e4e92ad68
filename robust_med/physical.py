"""Perturbations a scanner makes, as differentiable models with a physical budget.

Each model maps a batch of images and per-sample parameters θ (B, P) to perturbed images, is pure
JAX (jittable, per sample: sample i's output depends on x_i and θ_i alone) and is the identity at
θ = 0. Its budget is one number per sample in a unit a reader can check against a scanner:

===========  =========  ====================================================  ==================
kind         modality   model                                                 budget (unit)
===========  =========  ====================================================  ==================
bias_field   mr         x · exp(Σ c_k B_k), B_k a smooth basis (Legendre      max |log field|
                        products of degree ≤ `order`, or a cubic B-spline
                        control grid as in Chen et al. 2020's AdvBias)
motion       mr         rigid in-plane motion during the last `fraction` of   degrees and mm
                        a sequential k-space acquisition: those phase-        (|rotation| ≤ b°,
                        encoding lines come from the moved image (ghosting,   |t_y|, |t_x| ≤ b mm)
                        blur; the model TorchIO's RandomMotion follows)
spike        mr         one k-space spike: a plane wave a·cos(2π(u·y/H +      amplitude a
                        v·x/W) + φ) of any frequency (u, v) and phase         (fraction of range)
gibbs        mr         k-space truncated to the central 1 − c of each axis   c (fraction of
                        (ringing), with a one-bin linear edge                 k-space removed)
rician       mr         |x + σ n₁ + i σ n₂| (magnitude of complex Gaussian    σ (fraction of
                        noise)                                                range)
speckle      us         x · (1 + σ n_s), n_s Gaussian noise smoothed over     σ
                        `correlation` pixels, unit variance
gain         us         time-gain compensation error: x · 10^(g(y)/20), g     max |g| (dB)
                        piecewise linear in depth (rows) through `knots`
dose         xray, ct   x + √(q·x·(1/(1 − d) − 1))·n: quantum noise of a      d (fraction of the
                        dose lowered by d (the variance added when a          dose removed)
                        fraction 1 − d of the photons remain; q = `quantum`,
                        the variance per unit intensity at full dose)
scatter      xray, ct   x + Σ c_k B_k: a smooth additive field (Legendre      max |field|
                        products of degree ≤ `order`)                         (fraction of range)
gamma        xray, ct,  x^γ                                                   |log γ|
             us, mr
===========  =========  ====================================================  ==================

All models work on images normalised to [0, 1] by `value_range` (None: each image's own minimum
and maximum), and the result is clipped to the range and mapped back, as `corruptions` does.

The noise models (rician, speckle, dose) draw their noise from a key: an attack on them searches
the strength of a fixed draw (different draws per restart), not the noise itself, so their worst
case is a bound over draws, not over all noise of that strength. None of the models moves image
content as a whole: motion leaves the k-space centre (acquired before the motion, `fraction` <
0.5) as it was, so the anatomy, and the masks, landmarks and boxes that mark it, stay where they
were (`GEOMETRIC` is empty; a callers' `move_targets` is never needed).

Sources: Chen et al., "Realistic adversarial data augmentation for MR image segmentation", MICCAI
2020 (bias field, B-spline control points); Shaw et al., "MRI k-space motion artefact augmentation",
MIDL 2019 and TorchIO (Pérez-García et al. 2021: RandomMotion, RandomSpike, RandomGhosting,
RandomBiasField); Gudbjartsson & Patz 1995 (Rician noise); Yu et al. 2012 (CT dose reduction by
added quantum noise); Di Salvo et al. 2024 (MedMNIST-C, modality-specific corruptions).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import attacks, augment
from robust_med.errors import ConfigError

_TINY = 1e-12
_DOSE_T = 1e-12

MODALITIES = {
    'mr': ('bias_field', 'motion', 'spike', 'gibbs', 'rician', 'gamma'),
    'us': ('speckle', 'gain', 'gamma'),
    'xray': ('dose', 'scatter', 'gamma'),
    'ct': ('dose', 'scatter', 'gamma'),
}
GEOMETRIC = ()

#: Five budgets per kind, mildest first, in the kind's unit: the shift suite's severities 1–5
#: (random parameters spending the budget) and the attack grid's default.
BUDGETS = {
    'bias_field': (0.05, 0.1, 0.2, 0.3, 0.5),
    'motion': (0.5, 1.0, 2.0, 4.0, 8.0),
    'spike': (0.01, 0.02, 0.05, 0.1, 0.2),
    'gibbs': (0.1, 0.25, 0.4, 0.55, 0.7),
    'rician': (0.01, 0.02, 0.05, 0.1, 0.15),
    'speckle': (0.05, 0.1, 0.2, 0.35, 0.5),
    'gain': (0.5, 1.0, 2.0, 4.0, 6.0),
    'dose': (0.25, 0.5, 0.75, 0.875, 0.95),
    'scatter': (0.02, 0.05, 0.1, 0.2, 0.3),
    'gamma': (0.05, 0.1, 0.2, 0.3, 0.5),
}
#: Each kind's settings and their defaults (config.physical.settings.<kind>).
SETTINGS = {
    'bias_field': {'order': 3, 'basis': 'polynomial', 'points': 6},
    'motion': {'fraction': 0.3, 'spacing_mm': 1.0},
    'spike': {'max_frequency': 0.5},
    'gibbs': {},
    'rician': {},
    'speckle': {'correlation': 1.0},
    'gain': {'knots': 5},
    'dose': {'quantum': 0.01},
    'scatter': {'order': 2},
    'gamma': {},
}


# ----------------------------------------------------------------------------- smooth bases


def _legendre(n: int, t: np.ndarray) -> np.ndarray:
  """P_0 … P_n at t in [-1, 1], shape (len(t), n + 1); |P_k| ≤ 1 there."""
  out = [np.ones_like(t), t]
  for k in range(1, n):
    out.append(((2 * k + 1) * t * out[k] - k * out[k - 1]) / (k + 1))
  return np.stack(out[:n + 1], axis=1)


def _axis(size: int) -> np.ndarray:
  return np.linspace(-1.0, 1.0, size) if size > 1 else np.zeros(1)


def polynomial_basis(height: int, width: int, order: int) -> np.ndarray:
  """Legendre products P_i(y)·P_j(x) with i + j ≤ order, shape (K, H, W), K = (order+1)(order+2)/2;
  each has max |B_k| = 1 on the image."""
  py, px = _legendre(order, _axis(height)), _legendre(order, _axis(width))
  return np.stack([np.outer(py[:, i], px[:, j]) for i in range(order + 1)
                   for j in range(order + 1 - i)]).astype(np.float32)


def _cubic_bspline(u: np.ndarray) -> np.ndarray:
  a = np.abs(u)
  return np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a)**3 / 6, 0.0))


def _bspline_axis(size: int, points: int) -> np.ndarray:
  """(size, points) cubic B-spline weights of `points` uniform control points whose spline spans
  pixel 0 … size − 1 (one control point beyond each end): rows sum to 1."""
  spacing = max(size - 1, 1) / (points - 3)
  centres = (np.arange(points) - 1) * spacing
  return _cubic_bspline((np.arange(size)[:, None] - centres[None]) / spacing)


def bspline_basis(height: int, width: int, points: int) -> np.ndarray:
  """Tensor-product cubic B-splines on a points × points control grid, shape (points², H, W); a
  field Σ c_k B_k is a convex combination of the c_k at every pixel, so max |field| ≤ max |c|."""
  by, bx = _bspline_axis(height, points), _bspline_axis(width, points)
  return np.einsum('yi,xj->ijyx', by, bx).reshape(points * points, height, width).astype(
      np.float32)


# ----------------------------------------------------------------------------- the models


@dataclasses.dataclass(frozen=True)
class Perturbation:
  """One perturbation model; see the module docstring for each kind.

  Attributes:
    kind: its name.
    unit: the budget's unit, as a report prints it.
    size: (H, W) → number of parameters per sample.
    apply: (keys (B, 2), x in [0, 1] (B, H, W, C), θ (B, P)) → perturbed x (not yet clipped);
      a noise model draws sample i's noise from keys[i] alone.
    strength: (θ (B, P), H, W) → the budget each θ_i spends, (B,).
    project: (θ, budget (B,), H, W) → θ within the budget (strength ≤ budget).
    scale: (budget (B,), H, W) → (B, P), each parameter's natural size at that budget (attack steps
      and random draws are fractions of it).
    sample: (key, budget (B,), H, W) → random θ spending the whole budget.
    noise: whether `apply` draws noise from its key.
    max_budget: budgets must stay below it (e.g. gibbs removes less than all of k-space).
    steps: the attack's step direction: 'sign' (a box of parameters: each moves by its scale) or
      'l2' (the gradient scaled to unit L2 norm: coefficients of a basis whose budget couples them).
  """
  kind: str
  unit: str
  size: Callable[[int, int], int]
  apply: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
  strength: Callable[[jax.Array, int, int], jax.Array]
  project: Callable[[jax.Array, jax.Array, int, int], jax.Array]
  scale: Callable[[jax.Array, int, int], jax.Array]
  sample: Callable[[jax.Array, jax.Array, int, int], jax.Array]
  noise: bool = False
  max_budget: float = math.inf
  steps: str = 'sign'


def _col(v: jax.Array) -> jax.Array:
  return v[:, None]


def _image(v: jax.Array) -> jax.Array:
  """(B,) → (B, 1, 1, 1)."""
  return v[:, None, None, None]


def _field(basis: np.ndarray, theta: jax.Array) -> jax.Array:
  """Σ_k θ_k B_k per sample, (B, H, W, 1)."""
  return jnp.einsum('bk,khw->bhw', theta, jnp.asarray(basis, theta.dtype))[..., None]


def _field_model(kind: str, unit: str, basis_fn, combine, sign_free: bool = True) -> Perturbation:
  """A smooth field Σ c_k B_k with budget max |field|; `combine(x, field)` applies it."""

  def basis(h, w):
    return basis_fn(h, w)

  def strength(theta, h, w):
    return jnp.max(jnp.abs(_field(basis(h, w), theta)), axis=(1, 2, 3))

  def project(theta, budget, h, w):
    s = strength(theta, h, w)
    return theta * _col(jnp.minimum(1.0, budget / jnp.maximum(s, _TINY)))

  def scale(budget, h, w):
    return jnp.broadcast_to(_col(budget), (budget.shape[0], basis(h, w).shape[0]))

  def sample(key, budget, h, w):
    theta = jax.random.normal(key, (budget.shape[0], basis(h, w).shape[0]))
    s = strength(theta, h, w)
    return theta * _col(budget / jnp.maximum(s, _TINY))

  return Perturbation(kind, unit, lambda h, w: basis(h, w).shape[0],
                      lambda key, x, theta: combine(x, _field(basis(x.shape[1], x.shape[2]),
                                                              theta)),
                      strength, project, scale, sample, steps='l2')


def bias_field(order: int = 3, basis: str = 'polynomial', points: int = 6) -> Perturbation:
  """MR intensity inhomogeneity x·exp(field); basis 'polynomial' (degree ≤ order) or 'bspline'
  (points × points control grid)."""
  if basis == 'polynomial':
    fn = lambda h, w: polynomial_basis(h, w, order)
  elif basis == 'bspline':
    fn = lambda h, w: bspline_basis(h, w, points)
  else:
    raise ConfigError(f'bias_field basis {basis!r} is unknown: use polynomial or bspline.')
  return _field_model('bias_field', 'max |log field|', fn, lambda x, f: x * jnp.exp(f))


def scatter(order: int = 2) -> Perturbation:
  """A smooth additive field of degree ≤ order (X-ray/CT scatter)."""
  return _field_model('scatter', 'max |field| (fraction of range)',
                      lambda h, w: polynomial_basis(h, w, order), lambda x, f: x + f)


def _box_model(kind: str, unit: str, n: int, apply, sizes=None, noise: bool = False,
               max_budget: float = math.inf, strength_of=None) -> Perturbation:
  """Parameters each within ±budget·sizes (a box); strength = max |θ_k / sizes_k| unless given."""
  sizes_fn = sizes or (lambda h, w: np.ones(n, np.float32))

  def strength(theta, h, w):
    if strength_of is not None:
      return strength_of(theta, h, w)
    return jnp.max(jnp.abs(theta) / jnp.asarray(sizes_fn(h, w)), axis=1)

  def scale(budget, h, w):
    return _col(budget) * jnp.asarray(sizes_fn(h, w))[None]

  def project(theta, budget, h, w):
    bound = scale(budget, h, w)
    return jnp.clip(theta, -bound, bound)

  def sample(key, budget, h, w):
    theta = jax.random.uniform(key, (budget.shape[0], n), minval=-1.0, maxval=1.0)
    theta = theta / jnp.maximum(jnp.max(jnp.abs(theta), axis=1, keepdims=True), _TINY)
    return theta * scale(budget, h, w)

  return Perturbation(kind, unit, lambda h, w: n, apply, strength, project, scale, sample,
                      noise, max_budget)


def _fft2(x):
  return jnp.fft.fft2(x, axes=(1, 2))


def _ifft2_real(k):
  return jnp.real(jnp.fft.ifft2(k, axes=(1, 2)))


def rigid_warp(theta: jax.Array, height: int, width: int, spacing_mm: float = 1.0) -> augment.Warp:
  """The in-plane rigid motion θ = (degrees, t_y mm, t_x mm) about the image centre, as a Warp."""
  a = jnp.deg2rad(theta[:, 0])
  ty, tx = theta[:, 1] / spacing_mm, theta[:, 2] / spacing_mm
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  cos, sin = jnp.cos(a), jnp.sin(a)
  # output p samples input R(−a)(p − c) + c − t.
  row_x = jnp.stack([cos, sin, cx - cos * cx - sin * cy - tx], axis=1)
  row_y = jnp.stack([-sin, cos, cy + sin * cx - cos * cy - ty], axis=1)
  inverse = jnp.stack([row_x, row_y], axis=1)
  return augment.Warp(inverse=inverse,
                      displacement=jnp.zeros((theta.shape[0], height, width, 2), theta.dtype))


def moved_lines(height: int, fraction: float) -> np.ndarray:
  """(H,) bool: the phase-encoding rows (unshifted FFT order) acquired after the motion, the last
  `fraction` of a sequential acquisition from −k_max to +k_max."""
  return np.fft.fftfreq(height) >= 0.5 - fraction


def motion(fraction: float = 0.3, spacing_mm: float = 1.0) -> Perturbation:
  """Rigid motion during the last `fraction` (< 0.5) of the acquisition."""
  if not 0.0 < fraction < 0.5:
    raise ConfigError(f'motion fraction {fraction} is outside (0, 0.5): the motion must come after '
                      'the k-space centre is acquired; use e.g. 0.3.')

  def apply(key, x, theta):
    b, h, w = x.shape[:3]
    moved = augment.warp_images(rigid_warp(theta, h, w, spacing_mm), x)
    lines = jnp.asarray(moved_lines(h, fraction))[None, :, None, None]
    return _ifft2_real(jnp.where(lines, _fft2(moved), _fft2(x)))

  return _box_model('motion', 'degrees and mm', 3, apply)


def spike(max_frequency: float = 0.5) -> Perturbation:
  """One k-space spike as a plane wave; θ = (a, u, v, φ), frequencies u, v in cycles per image,
  |u| ≤ max_frequency·H, |v| ≤ max_frequency·W; only a counts against the budget."""

  def apply(key, x, theta):
    h, w = x.shape[1:3]
    y, xx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing='ij')
    a, u, v, phi = (theta[:, i, None, None] for i in range(4))
    wave = a * jnp.cos(2 * jnp.pi * (u * y[None] + v * xx[None]) + phi)
    return x + wave[..., None]

  def limits(h, w):
    return np.array([np.inf, max_frequency * h, max_frequency * w, np.inf], np.float32)

  def strength(theta, h, w):
    return jnp.abs(theta[:, 0])

  def project(theta, budget, h, w):
    lim = jnp.asarray(limits(h, w))
    return jnp.concatenate([jnp.clip(theta[:, :1], -_col(budget), _col(budget)),
                            jnp.clip(theta[:, 1:3], -lim[1:3], lim[1:3]), theta[:, 3:]], axis=1)

  def scale(budget, h, w):
    n = budget.shape[0]
    return jnp.stack([budget, jnp.full(n, h / 8.0), jnp.full(n, w / 8.0),
                      jnp.full(n, jnp.pi / 4)], axis=1)

  def sample(key, budget, h, w):
    ku, kv, kp = jax.random.split(key, 3)
    n = budget.shape[0]
    lim = limits(h, w)
    return jnp.stack([budget,
                      jax.random.uniform(ku, (n,), minval=-lim[1], maxval=lim[1]),
                      jax.random.uniform(kv, (n,), minval=-lim[2], maxval=lim[2]),
                      jax.random.uniform(kp, (n,), minval=0.0, maxval=2 * jnp.pi)], axis=1)

  return Perturbation('spike', 'amplitude (fraction of range)', lambda h, w: 4, apply, strength,
                      project, scale, sample)


def _truncation(size: int, c: jax.Array) -> jax.Array:
  """(B, size) k-space weights keeping |f| ≤ (1 − c)/2 cycles per pixel, linear over one bin:
  all ones at c = 0."""
  f = np.abs(np.fft.fftfreq(size))
  return jnp.clip((0.5 * (1.0 - _col(c)) - f[None]) * size + 1.0, 0.0, 1.0)


def gibbs() -> Perturbation:
  """k-space truncation (Gibbs ringing); θ = (c,), 0 ≤ c ≤ budget < 1."""

  def apply(key, x, theta):
    c = jnp.clip(theta[:, 0], 0.0, 1.0)
    my, mx = _truncation(x.shape[1], c), _truncation(x.shape[2], c)
    mask = my[:, :, None, None] * mx[:, None, :, None]
    return _ifft2_real(_fft2(x) * mask)

  return _nonnegative('gibbs', 'fraction of k-space removed', apply, max_budget=1.0)


def _nonnegative(kind, unit, apply, noise=False, max_budget=math.inf) -> Perturbation:
  """One strength parameter s, 0 ≤ s ≤ budget."""
  model = _box_model(kind, unit, 1, apply, noise=noise, max_budget=max_budget)

  def project(theta, budget, h, w):
    return jnp.clip(theta, 0.0, _col(budget))

  return dataclasses.replace(model, project=project,
                             sample=lambda key, budget, h, w: _col(budget))


def _normal(keys: jax.Array, shape) -> jax.Array:
  """Standard normal noise of `shape` (B, ...), sample i drawn from keys[i] alone."""
  return jax.vmap(lambda k: jax.random.normal(k, shape[1:]))(keys)


def _smooth_noise(keys, shape, correlation: float):
  """Gaussian noise smoothed by a Gaussian of σ = correlation pixels, rescaled to unit variance
  per image."""
  n = _normal(keys, shape)
  if correlation <= 0:
    return n
  n = augment.gaussian_blur(n, correlation, correlation)
  axes = tuple(range(1, n.ndim))
  return (n - jnp.mean(n, axis=axes, keepdims=True)) / jnp.maximum(
      jnp.std(n, axis=axes, keepdims=True), _TINY)


def rician() -> Perturbation:
  def apply(key, x, theta):
    s = _image(theta[:, 0])
    both = _normal(key, (x.shape[0], 2) + x.shape[1:])
    re = x + s * both[:, 0]
    im = s * both[:, 1]
    mag2 = re * re + im * im
    safe = jnp.where(mag2 > _TINY, mag2, 1.0)
    return jnp.where(mag2 > _TINY, jnp.sqrt(safe), 0.0)
  return _nonnegative('rician', 'σ (fraction of range)', apply, noise=True)


def speckle(correlation: float = 1.0) -> Perturbation:
  def apply(key, x, theta):
    return x * (1.0 + _image(theta[:, 0]) * _smooth_noise(key, x.shape, correlation))
  return _nonnegative('speckle', 'σ (relative)', apply, noise=True)


def gain(knots: int = 5) -> Perturbation:
  """Time-gain compensation error in dB, piecewise linear in depth (rows) through `knots` knots."""
  if knots < 2:
    raise ConfigError(f'gain knots {knots} < 2: use at least 2 (a depth ramp).')

  def apply(key, x, theta):
    h = x.shape[1]
    at = np.linspace(0.0, knots - 1.0, h)
    lo = np.clip(np.floor(at).astype(int), 0, knots - 2)
    wgt = (at - lo).astype(np.float32)
    db = theta[:, lo] * (1 - wgt) + theta[:, lo + 1] * wgt  # (B, H)
    return x * (10.0 ** (db / 20.0))[:, :, None, None]

  return _box_model('gain', 'max |gain error| (dB)', knots, apply)


def dose(quantum: float = 0.01) -> Perturbation:
  def apply(key, x, theta):
    d = _image(jnp.clip(theta[:, 0], 0.0, 0.999))
    var = quantum * jnp.maximum(x, 0.0) * (1.0 / (1.0 - d) - 1.0)
    # The noise's std grows as √d: its derivative at d = 0 is infinite, and a plain safe √ makes
    # it 0, which left the attack stuck at the identity. √(var + t) − √t (t = 1e-12, a change of
    # at most 1e-6 in the std) keeps the value and gives a finite gradient there.
    std = jnp.sqrt(var + _DOSE_T) - math.sqrt(_DOSE_T)
    return x + std * _normal(key, x.shape)
  return _nonnegative('dose', 'fraction of the dose removed', apply, noise=True, max_budget=0.999)


def gamma() -> Perturbation:
  def apply(key, x, theta):
    g = _image(jnp.exp(theta[:, 0]))
    pos = x > 0
    return jnp.where(pos, jnp.where(pos, x, 1.0) ** g, x)
  return _box_model('gamma', '|log γ|', 1, apply)


_MAKERS = {'bias_field': bias_field, 'motion': motion, 'spike': spike, 'gibbs': gibbs,
           'rician': rician, 'speckle': speckle, 'gain': gain, 'dose': dose,
           'scatter': scatter, 'gamma': gamma}
KINDS = tuple(_MAKERS)


def make(kind: str, **settings) -> Perturbation:
  """The model `kind` with its settings (e.g. make('bias_field', order=2)); the same object for
  the same settings, so jitted functions that take it as a static argument compile once."""
  return _make(kind, tuple(sorted(settings.items())))


@functools.lru_cache(maxsize=None)
def _make(kind: str, settings: tuple) -> Perturbation:
  settings = dict(settings)
  if kind not in _MAKERS:
    raise ConfigError(f'Unknown physical perturbation {kind!r}: use one of {", ".join(KINDS)}.')
  try:
    return _MAKERS[kind](**settings)
  except TypeError as e:
    raise ConfigError(f'physical perturbation {kind!r} got settings {sorted(settings)}: {e}.')


def check(kind: str, modality: str | None = None, budgets=()) -> None:
  """One ConfigError for an unknown kind, a kind that does not fit the dataset's modality (None:
  any), or a budget < 0 or beyond the model's limit."""
  model = make(kind)
  if modality is not None:
    if modality not in MODALITIES:
      raise ConfigError(f'Unknown modality {modality!r}: use one of {", ".join(MODALITIES)}.')
    if kind not in MODALITIES[modality]:
      raise ConfigError(f'physical perturbation {kind!r} does not fit modality {modality!r}: use '
                        f'one of {", ".join(MODALITIES[modality])}.')
  for b in budgets:
    if not (isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b)
            and 0 <= b < model.max_budget):
      limit = '' if math.isinf(model.max_budget) else f' and below {model.max_budget:g}'
      raise ConfigError(f'{kind} budget {b!r} is impossible: use values ≥ 0{limit} '
                        f'({model.unit}).')


# ----------------------------------------------------------------------------- applying


def _range(images: jax.Array, value_range):
  if value_range is not None:
    return jnp.float32(value_range[0]), jnp.float32(value_range[1])
  axes = tuple(range(1, images.ndim))
  return (jnp.min(images, axis=axes, keepdims=True).astype(jnp.float32),
          jnp.max(images, axis=axes, keepdims=True).astype(jnp.float32))


def sample_keys(key: jax.Array | None, batch_size: int) -> jax.Array:
  """One key per sample: `key` split (a single key; None: a fixed one), or `key` itself when it
  holds one per sample."""
  if key is None:
    key = jax.random.PRNGKey(0)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # typed keys: their raw data
    return jax.random.key_data(key if key.ndim == 1 else jax.random.split(key, batch_size))
  key = jnp.asarray(key)
  return key if key.ndim == 2 else jax.random.split(key, batch_size)


def perturb(model: Perturbation, images: jax.Array, theta: jax.Array, key: jax.Array | None = None,
            value_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """`images` (B, H, W, C) under `model` with parameters θ (B, P), clipped to `value_range`
  (None: each image's own range). θ = 0 returns the images unchanged (up to float rounding).
  `key` (one, or one per sample (B, 2)) draws a noise model's noise."""
  keys = sample_keys(key, images.shape[0])
  lo, hi = _range(images, value_range)
  span = jnp.maximum(hi - lo, _TINY)
  x = (images.astype(jnp.float32) - lo) / span
  out = jnp.clip(model.apply(keys, x, theta.astype(jnp.float32)), 0.0, 1.0)
  return (lo + span * out).astype(images.dtype)


def zeros(model: Perturbation, images: jax.Array) -> jax.Array:
  return jnp.zeros((images.shape[0], model.size(images.shape[1], images.shape[2])), jnp.float32)


def _budget(budget, images) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(budget, jnp.float32), images.shape[:1])


def random_parameters(model: Perturbation, key: jax.Array, budget: jax.Array, height: int,
                      width: int) -> jax.Array:
  """Random θ (B, P) spending the whole per-sample budget (B,), inside the budget set."""
  return model.project(model.sample(key, budget, height, width), budget, height, width)


def _keep(theta, value, best_theta, best_loss):
  """Per sample, θ where its loss `value` beats the best so far: (best θ, best loss, better)."""
  better = value > best_loss
  return (jnp.where(better[:, None], theta, best_theta), jnp.where(better, value, best_loss),
          better)


def _ascend(model: Perturbation, loss_fn, x: jax.Array, theta, best_theta, best_loss, keys,
            budget, alpha, clip):
  """One attack step: scores θ, keeps it per sample where it beats the best so far, and ascends
  (steps of alpha × `model.scale`, in `model.steps`' direction), projected onto the budget.
  Returns (θ', best θ, best loss, where θ was better (B,))."""
  h, w = x.shape[1:3]

  def total(t):
    value = loss_fn(perturb(model, x, t, keys, clip))
    return jnp.sum(value), value

  (_, value), g = jax.value_and_grad(total, has_aux=True)(theta)
  best_theta, best_loss, better = _keep(theta, value, best_theta, best_loss)
  scale = model.scale(budget, h, w)
  theta = model.project(theta + alpha * scale * _direction(g * scale, model.steps), budget, h, w)
  return theta, best_theta, best_loss, better


# ----------------------------------------------------------------------------- attacking


def attack(loss_fn: Callable[[jax.Array], jax.Array], images: jax.Array, model: Perturbation,
           budget, key: jax.Array, *, steps: int = 20, restarts: int = 1, step_size=None,
           value_range: tuple[float, float] | None = (0.0, 1.0),
           unroll: bool | None = None) -> tuple[jax.Array, jax.Array]:
  """Projected gradient ascent on the model's parameters within a per-sample budget.

  Sign steps of `step_size` (default 2.5 / steps) times each parameter's natural size at the
  budget (`model.scale`), projected after each step; the first restart starts at θ = 0, the others
  from random parameters spending the whole budget, and noise models draw new noise per restart.
  The θ (and draw) of the highest loss seen is kept per sample, so more steps or restarts never
  return a weaker attack.

  Returns:
    (the perturbed images, θ (B, P)).
  """
  b = _budget(budget, images)
  n, h, w = images.shape[:3]
  alpha = (2.5 / max(steps, 1)) if step_size is None else step_size

  keys0 = sample_keys(key, n)
  best_theta, best_keys, best_loss = zeros(model, images), keys0, jnp.full((n,), -jnp.inf)
  for r in range(restarts):
    kr, ks = jax.random.split(jax.random.fold_in(key, r + 1))
    keys = sample_keys(kr, n) if (model.noise and r) else keys0
    theta = zeros(model, images) if r == 0 else random_parameters(model, ks, b, h, w)

    def body(_, state, keys=keys):
      theta, best_theta, best_keys, best_loss = state
      theta, best_theta, best_loss, better = _ascend(model, loss_fn, images, theta, best_theta,
                                                      best_loss, keys, b, alpha, value_range)
      return theta, best_theta, jnp.where(better[:, None], keys, best_keys), best_loss

    theta, best_theta, best_keys, best_loss = attacks.loop(
        body, (theta, best_theta, best_keys, best_loss), steps, unroll)
    # The last iterate, scored once more.
    value = loss_fn(perturb(model, images, theta, keys, value_range))
    best_theta, best_loss, better = _keep(theta, value, best_theta, best_loss)
    best_keys = jnp.where(better[:, None], keys, best_keys)
  adversarial = perturb(model, images, best_theta, best_keys, value_range)
  return jax.lax.stop_gradient(adversarial), best_theta


def _direction(g: jax.Array, steps: str) -> jax.Array:
  if steps == 'sign':
    return jnp.sign(g)
  return g / jnp.maximum(jnp.linalg.norm(g, axis=1, keepdims=True), _TINY)


def random_worst(loss_fn: Callable[[jax.Array], jax.Array], images: jax.Array,
                 model: Perturbation, budget, key: jax.Array, *, draws: int = 100,
                 value_range: tuple[float, float] | None = (0.0, 1.0)) -> jax.Array:
  """The highest per-sample loss over `draws` random parameters spending the whole budget (B,):
  what an attack must beat to be informative (the masking check's random baseline)."""
  b = _budget(budget, images)
  h, w = images.shape[1:3]

  def one(worst, k):
    ks, kn = jax.random.split(k)
    theta = random_parameters(model, ks, b, h, w)
    return jnp.maximum(worst, loss_fn(perturb(model, images, theta, kn, value_range))), None

  worst, _ = jax.lax.scan(one, jnp.full(images.shape[:1], -jnp.inf),
                          jax.random.split(key, draws))
  return worst


# ----------------------------------------------------------------------------- the evaluator's protocol


@dataclasses.dataclass(frozen=True)
class PhysicalPGD:
  """The physical attack in the iterative-attack protocol the evaluator runs (`init`, `step`,
  `result`; `attacks.run_iterative`): the budget `eps` is the model's physical budget per sample.

  Each step scores the current parameters, keeps the best so far per sample, and ascends; the
  result applies the best scored parameters. With `restarts` > 1 the evaluator runs the attack
  that many times and keeps each sample's worst run; every run then starts from random
  parameters spending the whole budget (`random_start`), and noise models draw new noise per run.
  """
  kind: str
  settings: tuple = ()           # sorted (name, value) pairs passed to `make`
  steps: int = 50
  restarts: int = 1
  step_size_factor: float = 2.5  # step = factor / steps × each parameter's scale at the budget
  random_start: bool = False
  clip: tuple[float, float] | None = None   # the value range images are normalised by
  unroll: bool | None = None     # the training attack's loop (`attacks.loop`)
  norm: str = 'physical'

  @property
  def model(self) -> Perturbation:
    return make(self.kind, **dict(self.settings))

  def sized(self, loss_fn, x: jax.Array, eps, key: jax.Array | None = None):
    """(the attacked batch, each sample's spent budget (B,) in the model's unit): the training
    attack of SAT, AMAT and AdvBias (one run, `restarts` ignored)."""
    state = attacks.loop(lambda i, s: self.step(loss_fn, x, s, eps, i),
                         self.init(loss_fn, x, eps, key), self.steps, self.unroll)
    h, w = x.shape[1:3]
    return (jax.lax.stop_gradient(self.result(x, state)),
            jax.lax.stop_gradient(self.model.strength(_chosen(state), h, w)))

  def __call__(self, loss_fn, x: jax.Array, eps, key: jax.Array | None = None) -> jax.Array:
    return self.sized(loss_fn, x, eps, key)[0]

  def init(self, loss_fn, x: jax.Array, eps, key: jax.Array | None):
    del loss_fn
    m, (n, h, w) = self.model, x.shape[:3]
    b = _budget(eps, x)
    keys = sample_keys(key, n)
    theta = zeros(m, x)
    if self.random_start or (self.restarts > 1 and key is not None):
      theta = random_parameters(m, jax.random.fold_in(keys[0], 7), b, h, w)
    return theta, theta, jnp.full((n,), -jnp.inf), keys

  def step(self, loss_fn, x: jax.Array, state, eps, i):
    del i
    theta, best_theta, best_loss, keys = state
    theta, best_theta, best_loss, _ = _ascend(
        self.model, loss_fn, x, theta, best_theta, best_loss, keys, _budget(eps, x),
        self.step_size_factor / max(self.steps, 1), self.clip)
    return theta, best_theta, best_loss, keys

  def result(self, x: jax.Array, state) -> jax.Array:
    return perturb(self.model, x, _chosen(state), state[3], self.clip)

  def describe(self) -> dict:
    m = self.model
    return {'name': f'{self.kind}-pgd-{self.steps}', 'kind': self.kind, 'unit': m.unit,
            'settings': dict(self.settings), 'steps': self.steps, 'restarts': self.restarts,
            'step': f'{self.step_size_factor}/{self.steps} x scale, {m.steps} direction',
            'random_start': self.random_start or self.restarts > 1,
            'noise': 'a fixed draw per run' if m.noise else 'none',
            'data_range': list(self.clip) if self.clip else 'each image\'s own'}


def _chosen(state) -> jax.Array:
  """A PhysicalPGD state's best scored θ per sample (the current θ where none was scored)."""
  theta, best_theta, best_loss, _ = state
  return jnp.where(jnp.isfinite(best_loss)[:, None], best_theta, theta)


@dataclasses.dataclass(frozen=True)
class PhysicalRandom:
  """Random parameters spending the whole budget, as an attack with no steps; with `restarts`
  draws the evaluator keeps each sample's worst: the baseline an attack must beat."""
  kind: str
  settings: tuple = ()
  restarts: int = 10
  clip: tuple[float, float] | None = None
  steps: int = 0
  norm: str = 'physical'
  gradient_free: bool = True

  @property
  def model(self) -> Perturbation:
    return make(self.kind, **dict(self.settings))

  def init(self, loss_fn, x: jax.Array, eps, key: jax.Array | None):
    del loss_fn
    m, (h, w) = self.model, x.shape[1:3]
    b = _budget(eps, x)
    keys = sample_keys(key, x.shape[0])
    return perturb(m, x, random_parameters(m, jax.random.fold_in(keys[0], 7), b, h, w), keys,
                   self.clip)

  def step(self, loss_fn, x, state, eps, i):
    return state

  def result(self, x, state):
    return state

  def describe(self) -> dict:
    return {'name': f'{self.kind}-random-{self.restarts}', 'kind': self.kind,
            'unit': self.model.unit, 'settings': dict(self.settings), 'steps': 0,
            'restarts': self.restarts, 'data_range': list(self.clip) if self.clip else
            'each image\'s own'}
