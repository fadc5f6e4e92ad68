"""VAFA-style frequency-domain attack: adversarial quantization of block-DCT coefficients.

Hanif et al. (MICCAI 2023, "Frequency Domain Adversarial Training for Robust Volumetric Medical
Segmentation"; the authors' code, asif-hanif/vafa) attack a volume through its frequency content,
as JPEG compression perturbs an image: the volume (on a 0-255 grey scale, shifted by −128) is cut
into non-overlapping cubes, each cube's orthonormal 3-D DCT-II coefficients c are quantized as
q·round(c / q) with one step q per coefficient, and the steps are what the attack optimises: a
signed-gradient ascent of the loss on q (step 1), kept in [q_min, q_max]. q starts at q_max
(the strongest compression) and the rounding is AdvDrop's differentiable approximation, whose
sharpness α falls from 0.1 towards 0 over the steps. The budget is q_max: a coefficient moves by
at most q_max / 2 grey levels, so a block's perturbation has an L2 norm of at most
q_max / 2 · sqrt(voxels in the block) grey levels.

Generic in the number of spatial dims: 3-D blocks on volumes (B, X, Y, Z, C) and 2-D blocks on
images (B, H, W, C) (the authors' VAFA-2D transforms axial slices the same way). Sizes that the
block does not divide are padded with edge values and cropped back.

What this implementation does differently from the authors' code, and why:
* Input units: their inputs are in [0, 1] and are multiplied by 255; here `grey_level` is the
  size of one grey level in the model's input units (1/255 for [0, 1] inputs; for z-scored
  volumes, e.g. the training intensities' robust range / 255), so q_max keeps its meaning.
* Their code stretches each axial slice of the perturbed volume to [0, 1] before the model sees
  it (not in the paper, and a constant slice divides by zero); here the model sees the
  dequantized volume itself, clipped to `clip` when given.
* Their loss adds 1 − SSIM between clean and attacked blocks (weight 1, optional in their code);
  this attack maximises the loss alone (any perceptual term can be folded into `loss_fn`).
* The returned example is quantized with exact rounding (a real quantization at the final q),
  not the last soft-rounded iterate.
* q_max = 0 leaves a sample unchanged (the clean point of a robustness curve); for 0 < q_max <
  q_min the steps are kept at q_max.

Floor: imports only `errors` (an attack: it knows nothing of tasks or models).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy import fft as jfft

from robust_med.errors import ConfigError

LossFn = Callable[[jax.Array], jax.Array]


def _block_shape(block: int | Sequence[int], nd: int) -> tuple[int, ...]:
  shape = (int(block),) * nd if isinstance(block, (int, float)) else tuple(int(b) for b in block)
  if len(shape) != nd or min(shape) < 1:
    raise ConfigError(f'VAFA block {block}: give one positive size, or one per spatial axis '
                      f'({nd}), e.g. 8.')
  return shape


def _pad(x: jax.Array, block: tuple[int, ...]) -> jax.Array:
  pads = [(0, 0)] + [(0, -s % b) for s, b in zip(x.shape[1:-1], block)] + [(0, 0)]
  return jnp.pad(x, pads, mode='edge') if any(p for _, p in pads) else x


def _split(x: jax.Array, block: tuple[int, ...]) -> jax.Array:
  """(B, *spatial, C) → (B, C, *counts, *block): the blocks, their voxels on the last axes."""
  nd = len(block)
  counts = [s // b for s, b in zip(x.shape[1:-1], block)]
  shape = [x.shape[0]] + [v for n, b in zip(counts, block) for v in (n, b)] + [x.shape[-1]]
  y = x.reshape(shape)
  order = [0, 2 * nd + 1] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
  return y.transpose(order)


def _merge(blocks: jax.Array, block: tuple[int, ...]) -> jax.Array:
  """The inverse of `_split`."""
  nd = len(block)
  counts = blocks.shape[2:2 + nd]
  order = [0] + [v for i in range(nd) for v in (2 + i, 2 + nd + i)] + [1]
  y = blocks.transpose(order)
  return y.reshape([blocks.shape[0]] + [n * b for n, b in zip(counts, block)] + [blocks.shape[1]])


def block_dct(x: jax.Array, block: int | Sequence[int]) -> jax.Array:
  """Orthonormal DCT-II of each non-overlapping block of `x` (B, *spatial, C) whose spatial
  sizes the block divides: (B, C, *block counts, *block)."""
  block = _block_shape(block, x.ndim - 2)
  axes = tuple(range(-len(block), 0))
  return jfft.dctn(_split(x, block), type=2, axes=axes, norm='ortho')


def block_idct(coefficients: jax.Array, block: int | Sequence[int]) -> jax.Array:
  """The inverse of `block_dct`: (B, C, *counts, *block) → (B, *spatial, C)."""
  nd = (coefficients.ndim - 2) // 2
  block = _block_shape(block, nd)
  axes = tuple(range(-nd, 0))
  return _merge(jfft.idctn(coefficients, type=2, axes=axes, norm='ortho'), block)


def soft_round(u: jax.Array, alpha) -> jax.Array:
  """AdvDrop's differentiable rounding (Duan et al., ICCV 2021), as VAFA uses it: floor(u) +
  (1 + s·tanh(k·(u − floor(u) − 1/2))) / 2 with s = 1 / (1 − α), k = ln(2/α − 1): exact at the
  integers, continuous, and closer to round(u) as α → 0 (α in (0, 1))."""
  f = jax.lax.stop_gradient(jnp.floor(u))
  s = 1.0 / (1.0 - alpha)
  k = jnp.log(2.0 / alpha - 1.0)
  return f + (1.0 + s * jnp.tanh(k * (u - f - 0.5))) / 2.0


def _per_sample(value, x: jax.Array) -> jax.Array:
  v = jnp.asarray(value, jnp.float32)
  return jnp.broadcast_to(v, (x.shape[0],)) if v.ndim == 0 else v


@dataclasses.dataclass(frozen=True)
class VAFASettings:
  """A configured VAFA attack (the budget q_max is given per call), in the iterative-attack
  protocol the evaluator runs (`init`, `step`, `result`; the state is the quantization steps q):
  `VAFASettings(...)(loss_fn, x, q_max)` is `vafa(loss_fn, x, q_max, ...)`."""
  steps: int = 20
  block: int | tuple[int, ...] = 8
  q_min: float = 5.0
  alpha: float = 0.1
  grey_level: float = 1 / 255
  offset: float = 128.0
  clip: tuple[float, float] | None = None
  norm = 'quantization'  # Its budget is a quantization step bound, not an Lp radius.

  def __post_init__(self):
    if self.steps < 1:
      raise ConfigError(f'VAFA steps={self.steps}: use at least 1 (Hanif et al.: 20).')
    if not 0 < self.alpha < 1:
      raise ConfigError(f"VAFA alpha={self.alpha}: use a sharpness in (0, 1) (Hanif et al.'s "
                        'code: 0.1).')
    if self.grey_level <= 0:
      raise ConfigError(f'VAFA grey_level={self.grey_level}: give the size of one grey level in '
                        "the model's input units (> 0; 1/255 for inputs in [0, 1]).")

  def _coefficients(self, x: jax.Array):
    block = _block_shape(self.block, x.ndim - 2)
    return block, block_dct(_pad((x / self.grey_level) - self.offset, block), block)

  def _image(self, x: jax.Array, q: jax.Array, rounding) -> jax.Array:
    block, coefficients = self._coefficients(x)
    safe = jnp.maximum(q, 1e-6)
    y = (block_idct(rounding(coefficients / safe) * safe, block) + self.offset) * self.grey_level
    y = y[(slice(None), *(slice(0, s) for s in x.shape[1:-1]))]
    budget = jnp.max(q.reshape(q.shape[0], -1), axis=1) > 0  # q_max = 0: left unchanged
    y = jnp.where(budget[(slice(None),) + (None,) * (x.ndim - 1)], y, x)
    return y if self.clip is None else jnp.clip(y, *self.clip)

  def _bounds(self, x: jax.Array, q_max):
    q_hi = _per_sample(q_max, x)
    return q_hi, jnp.minimum(q_hi, self.q_min)

  def init(self, loss_fn: LossFn, x: jax.Array, q_max, key=None) -> jax.Array:
    del loss_fn, key
    _, coefficients = self._coefficients(x)
    hi = self._bounds(x, q_max)[0]
    return jnp.broadcast_to(hi[(slice(None),) + (None,) * (coefficients.ndim - 1)],
                            coefficients.shape)

  def step(self, loss_fn: LossFn, x: jax.Array, q: jax.Array, q_max, i) -> jax.Array:
    a = self.alpha * (1.0 - i / self.steps)  # the authors' schedule: 0.1, 0.095, ..., 0.005
    objective = lambda v: jnp.sum(loss_fn(self._image(x, v, lambda u: soft_round(u, a))))
    hi, lo = self._bounds(x, q_max)
    expand = (slice(None),) + (None,) * (q.ndim - 1)
    return jnp.clip(q + jnp.sign(jax.grad(objective)(q)), lo[expand], hi[expand])

  def result(self, x: jax.Array, q: jax.Array) -> jax.Array:
    return self._image(x, q, jnp.round)

  def __call__(self, loss_fn: LossFn, x: jax.Array, q_max, key=None) -> jax.Array:
    q = jax.lax.fori_loop(0, self.steps, lambda t, v: self.step(loss_fn, x, v, q_max, t),
                          self.init(loss_fn, x, q_max))
    return self.result(x, q)

  def describe(self) -> dict:
    return {'name': f'vafa-{self.steps}', 'norm': self.norm, 'steps': self.steps,
            'budget': 'q_max: the largest quantization step of a block-DCT coefficient, in grey '
                      'levels',
            'block': list(self.block) if isinstance(self.block, tuple) else self.block,
            'q_min': self.q_min, 'alpha': self.alpha, 'grey_level': self.grey_level,
            'restarts': 1, 'random_start': False,
            'data_range': list(self.clip) if self.clip else 'unbounded (no clipping)'}


def vafa(loss_fn: LossFn, x: jax.Array, q_max, *, block: int | Sequence[int] = 8,
         steps: int = 20, q_min: float = 5.0, alpha: float = 0.1, grey_level: float = 1 / 255,
         offset: float = 128.0, clip: tuple[float, float] | None = None) -> jax.Array:
  """The VAFA adversarial example of `x` (B, *spatial, C) for the per-sample loss `loss_fn`
  (B,): block-DCT coefficients quantized with per-coefficient steps q in [q_min, q_max] chosen
  by `steps` signed-gradient steps on q (see the module docstring). `q_max` is a scalar or a
  (B,) vector of budgets in grey levels (0: the sample is returned unchanged)."""
  block = block if isinstance(block, (int, float)) else tuple(int(b) for b in block)
  return VAFASettings(steps=steps, block=block, q_min=q_min, alpha=alpha,
                      grey_level=grey_level, offset=offset,
                      clip=tuple(clip) if clip is not None else None)(loss_fn, x, q_max)


def max_l2(x_shape: Sequence[int], q_max: float, block: int | Sequence[int],
           grey_level: float = 1 / 255) -> float:
  """The largest L2 norm (input units) a VAFA perturbation of budget `q_max` can have on one
  sample of shape (*spatial, C) (before clipping): every coefficient off by at most q_max / 2
  grey levels, over the padded grid."""
  nd = len(x_shape) - 1
  block = _block_shape(block, nd)
  padded = [s + (-s % b) for s, b in zip(x_shape[:-1], block)]
  return 0.5 * q_max * grey_level * math.sqrt(math.prod(padded) * x_shape[-1])
