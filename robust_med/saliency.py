"""Saliency maps of any model in the project, jitted and batched.

Every method explains a scalar per sample, `score_fn(outputs, target) -> (B,)` (the classification
head: the logit of the target class, before the softmax), and returns one non-negative map per
image at the input's resolution, (B, H, W), where a higher value means more salient:

* `gradcam` (Selvaraju et al. 2017): at the layer named `layer` (a Flax module path such as
  `stage3_block0`, or '' for the last top-level module whose output is a spatial map (B, h, w, C)),
  channel weights α_c = the spatial mean of ∂score/∂A_c, map = ReLU(Σ_c α_c A_c).
* `gradcam++` (Chattopadhay et al. 2018): weights Σ_ij a_ij^c ReLU(∂score/∂A_ij^c) with
  a = g² / (2g² + Σ_ab A_ab^c g³), the closed form for an exponentiated score.
* `gradient` (Simonyan et al. 2014): max over channels of |∂score/∂x|.
* `smoothgrad` (Smilkov et al. 2017): the mean of `gradient` maps over `smoothgrad_samples`
  copies of x with Gaussian noise of σ = `smoothgrad_sigma` × (the image's max − min).
* `integrated_gradients` (Sundararajan et al. 2017): attributions (x − x′) · ∫₀¹ ∇score(x′ +
  α(x − x′)) dα by the trapezoid rule over `ig_steps` intervals from the baseline x′ named by
  `ig_baseline`: 'mean' (a constant image at each image's mean value, the default), 'blur' (the
  image blurred by a Gaussian of σ = side / 16) or 'zero' (a black image); the map is
  Σ_channels |attribution|. Completeness: the attributions sum to score(x) − score(x′) up to the
  quadrature error (`Explainer.attributions` returns both, and robust_med.interpret reports the
  gap). Beware 'zero' with this project's networks: with bias-free convolutions and group norm
  the score is scale-invariant in x except in a vanishing neighbourhood of 0, so score(0) differs
  from its limit along the path and no number of steps makes the attributions complete (measured
  on a BUSI ResNet: 130–1800 % completeness error at 128 steps, vs 0.2–1.3 % from 'mean').

Grad-CAM maps (at the layer's resolution) are upsampled to the input size by bilinear
interpolation with half-pixel centres (`jax.image.resize`, 'bilinear'). Maps are not normalised:
every alignment metric of `robust_med.alignment` is invariant to scaling a map by a positive
factor, and figures scale each map to its own maximum (`normalise`).

The layer is reached without editing the model: `flax.linen.intercept_methods` records the
named module's output and adds a zero perturbation to it, whose gradient is ∂score/∂A.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robust_med.errors import ConfigError

IG_BASELINES = ('mean', 'blur', 'zero')
METHODS = ('gradcam', 'gradcam++', 'gradient', 'smoothgrad', 'integrated_gradients')
CAM_METHODS = ('gradcam', 'gradcam++')
DESCRIPTIONS = {
    'gradcam': 'Grad-CAM: ReLU(Σ_c α_c A_c), α_c = spatial mean of ∂score/∂A_c at the layer',
    'gradcam++': 'Grad-CAM++: ReLU(Σ_c w_c A_c), w_c = Σ_ij a_ij ReLU(∂score/∂A_ij)',
    'gradient': 'input gradient: max over channels of |∂score/∂x|',
    'smoothgrad': 'SmoothGrad: mean |∂score/∂x| (max over channels) over Gaussian-noised copies',
    'integrated_gradients': 'integrated gradients from a constant baseline: Σ_channels |attribution|',
}
INTERPOLATION = 'bilinear'


@dataclasses.dataclass(frozen=True)
class SaliencySettings:
  method: str = 'gradcam'
  layer: str = ''                  # Grad-CAM(++): module path; '' = last top-level spatial module
  smoothgrad_samples: int = 25
  smoothgrad_sigma: float = 0.15   # fraction of each image's value range
  ig_steps: int = 64
  ig_baseline: str = 'mean'
  seed: int = 0

  @classmethod
  def from_config(cls, c, method: str = '') -> 'SaliencySettings':
    """From the `interpret` config section (`method` overrides `c.method`)."""
    return cls(method=method or c.method, layer=c.layer,
               smoothgrad_samples=c.smoothgrad_samples, smoothgrad_sigma=c.smoothgrad_sigma,
               ig_steps=c.ig_steps, ig_baseline=c.ig_baseline, seed=c.seed)


def check_settings(s: SaliencySettings) -> None:
  if s.method not in METHODS:
    raise ConfigError(f'Unknown saliency method {s.method!r}: use one of {METHODS}.')
  if s.smoothgrad_samples < 1 or s.ig_steps < 1:
    raise ConfigError(f'smoothgrad_samples = {s.smoothgrad_samples} and ig_steps = {s.ig_steps} '
                      'must be ≥ 1.')
  if s.ig_baseline not in IG_BASELINES:
    raise ConfigError(f'Unknown ig_baseline {s.ig_baseline!r}: use one of {IG_BASELINES}.')
  if s.smoothgrad_sigma < 0:
    raise ConfigError(f'smoothgrad_sigma = {s.smoothgrad_sigma} is negative: use e.g. 0.15.')


def _path(module: nn.Module) -> str:
  return '/'.join(module.path)


def spatial_layers(model: nn.Module, params, image_shape, dtype=jnp.float32) -> list:
  """(name, output shape) of every module call whose output is a spatial map (B, h, w, C), in call
  order (names are Flax module paths, e.g. 'stage3_block0' or 'stage3_block0/Conv_1')."""
  found: dict[str, tuple] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    name = _path(context.module)
    if (context.method_name == '__call__' and name and isinstance(out, jax.Array)
        and out.ndim == 4):
      found.pop(name, None)
      found[name] = tuple(out.shape)
    return out

  def run(p, x):
    with nn.intercept_methods(record):
      return model.apply({'params': p}, x)
  jax.eval_shape(run, params, jax.ShapeDtypeStruct((1, *image_shape[1:]), dtype))
  return list(found.items())


def resolve_layer(model: nn.Module, params, image_shape, layer: str) -> str:
  """`layer`, checked against the model's spatial layers ('' = the last top-level one). One
  `ConfigError` naming the candidates when it does not exist."""
  candidates = spatial_layers(model, params, image_shape)
  names = [n for n, _ in candidates]
  if not names:
    raise ConfigError('The model has no module with a spatial output (B, h, w, C): Grad-CAM needs '
                      'one; use --method=gradient, smoothgrad or integrated_gradients.')
  if not layer:
    top = [n for n in names if '/' not in n]
    return (top or names)[-1]
  if layer not in names:
    raise ConfigError(f'config.interpret.layer = {layer!r} is not a module of the model with a '
                      f'spatial output: use one of {names}.')
  return layer


def _with_layer(model, params, x, layer: str, delta):
  """The model's outputs, with `delta` added to the output of module `layer`, and that output."""
  captured = []

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and _path(context.module) == layer:
      out = out + delta
      captured.append(out)
    return out
  with nn.intercept_methods(intercept):
    outputs = model.apply({'params': params}, x)
  return outputs, captured[-1]


def upsample(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """(B, h, w) maps resized to (B, H, W) bilinearly (half-pixel centres)."""
  if maps.shape[1:] == tuple(size):
    return maps
  return jax.image.resize(maps, (maps.shape[0], *size), method=INTERPOLATION)


def normalise(maps: np.ndarray) -> np.ndarray:
  """Each map divided by its maximum (all-zero maps stay zero), for display."""
  maps = np.asarray(maps, np.float32)
  peak = maps.reshape(len(maps), -1).max(axis=1)
  return maps / np.where(peak > 0, peak, 1.0)[:, None, None]


def ig_baseline(x: jax.Array, kind: str) -> jax.Array:
  """The integrated-gradients baseline of the images `x` (B, H, W, C) named by `kind`."""
  if kind == 'zero':
    return jnp.zeros_like(x)
  if kind == 'mean':
    return jnp.broadcast_to(jnp.mean(x, axis=(1, 2, 3), keepdims=True), x.shape)
  import dm_pix
  sigma = max(x.shape[1:3]) / 16
  return jax.vmap(lambda im: dm_pix.gaussian_blur(im, sigma, kernel_size=int(6 * sigma) | 1))(x)


def attribution_map(attributions: jax.Array) -> jax.Array:
  """The integrated-gradients map (B, H, W) of attributions (B, H, W, C): Σ_channels |·|."""
  return jnp.sum(jnp.abs(attributions), axis=-1)


def completeness_error(attributions: jax.Array, gap: jax.Array) -> jax.Array:
  """|Σ attributions − gap| / |gap| per image (B,): 0 for exactly complete attributions."""
  return jnp.abs(jnp.sum(attributions, axis=(1, 2, 3)) - gap) / jnp.abs(gap)


class Explainer:
  """Saliency maps of `model` for the per-sample score `score_fn(outputs, target) -> (B,)`.

  `maps(params, x, target)` returns (B, H, W) maps by `settings.method`; `attributions` the signed
  integrated-gradients attributions (B, H, W, C) and the score gap they should sum to. Each piece
  is one jitted function of a batch (SmoothGrad and integrated gradients loop over noise samples
  and interpolation steps on the host, so convolutions stay unrolled and fast on CPUs).
  """

  def __init__(self, model: nn.Module, score_fn: Callable, settings: SaliencySettings,
               layer: str = ''):
    check_settings(settings)
    self.model, self.score_fn, self.settings = model, score_fn, settings
    self.layer = layer
    self._grad = jax.jit(self._grad_impl)
    self._cam = jax.jit(self._cam_impl, static_argnames=('plus',))
    self._scores = jax.jit(self._scores_impl)

  def _scores_impl(self, params, x, target):
    return self.score_fn(self.model.apply({'params': params}, x), target)

  def _grad_impl(self, params, x, target):
    return jax.grad(lambda v: jnp.sum(self._scores_impl(params, v, target)))(x)

  def _cam_impl(self, params, x, target, *, plus: bool):
    shape = jax.eval_shape(lambda v: _with_layer(self.model, params, v, self.layer, 0.)[1], x)
    zero = jnp.zeros(shape.shape, shape.dtype)

    def total(delta):
      outputs, a = _with_layer(self.model, params, x, self.layer, delta)
      return jnp.sum(self.score_fn(outputs, target)), a
    g, a = jax.grad(total, has_aux=True)(zero)
    if plus:
      g2, g3 = g ** 2, g ** 3
      denom = 2 * g2 + jnp.sum(a, axis=(1, 2), keepdims=True) * g3
      coef = jnp.where(g != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
      weights = jnp.sum(coef * jax.nn.relu(g), axis=(1, 2))
    else:
      weights = jnp.mean(g, axis=(1, 2))
    cam = jax.nn.relu(jnp.einsum('bhwc,bc->bhw', a, weights))
    return upsample(cam, x.shape[1:3])

  def maps(self, params, x: jax.Array, target: jax.Array) -> jax.Array:
    """Saliency maps (B, H, W) of the images `x` for the per-sample `target`."""
    method = self.settings.method
    if method in CAM_METHODS:
      return self._cam(params, x, target, plus=method == 'gradcam++')
    if method == 'gradient':
      return jnp.max(jnp.abs(self._grad(params, x, target)), axis=-1)
    if method == 'smoothgrad':
      s = self.settings
      span = jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True)
      key = jax.random.key(s.seed)
      total = jnp.zeros(x.shape[:3], jnp.float32)
      for i in range(s.smoothgrad_samples):
        noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        g = self._grad(params, x + s.smoothgrad_sigma * span * noise, target)
        total = total + jnp.max(jnp.abs(g), axis=-1)
      return total / s.smoothgrad_samples
    return attribution_map(self.attributions(params, x, target)[0])

  def attributions(self, params, x: jax.Array, target: jax.Array):
    """Integrated-gradients attributions (B, H, W, C) and score(x) − score(baseline) (B,)."""
    s = self.settings
    baseline = ig_baseline(x, s.ig_baseline)
    m = s.ig_steps
    total = jnp.zeros_like(x)
    for k in range(m + 1):
      weight = 0.5 if k in (0, m) else 1.0
      total = total + weight * self._grad(params, baseline + (k / m) * (x - baseline), target)
    attributions = (x - baseline) * total / m
    gap = self._scores(params, x, target) - self._scores(params, baseline, target)
    return attributions, gap
