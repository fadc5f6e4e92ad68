"""Adversarial attacks on a batch, independent of any task or model.

Every attack takes `loss_fn(x) -> (B,)`, the per-sample loss to *increase*, the clean batch `x`
of shape (B, ...) and a per-sample budget `eps` (a scalar or a (B,) vector), and returns the
perturbed batch. Guarantees, for every sample i:

* ``‖x̃_i − x_i‖ ≤ eps_i`` in the attack's norm (up to float rounding), and
* ``eps_i == 0`` leaves sample i unchanged.

Samples are attacked independently because the gradient of ``sum(loss_fn(x))`` with respect to
``x_i`` is the gradient of ``loss_fn(x)[i]`` alone, as long as the model treats samples
independently (instance or layer norm, no batch norm in training mode).

All functions are pure and jittable. XLA:CPU compiles straight-line code in time proportional to
its length, and runs it a little faster than a `lax.fori_loop` (about 9 % for the segmentation
demo's training step); so loops of up to `UNROLL_MAX_STEPS` steps are unrolled on CPU (the training
attacks), and longer ones, and every loop on accelerators, are `fori_loop`s (see
`benchmarks/train_step.py --unroll`). A model's convolutions must be `robust_med.models.conv.Conv`
for the loop to be fast on CPU (with `flax.linen.Conv` XLA:CPU runs their input gradients 3-4x
slower inside loops; models/conv.py). Pass `unroll` to choose yourself.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array], jax.Array]
Norm = Literal['l2', 'linf']
NORMS = ('l2', 'linf')
_TINY = 1e-12


def _check_norm(norm: str) -> None:
  if norm not in NORMS:
    raise ValueError(f'Unknown attack norm {norm!r}: use one of {NORMS}.')


def per_sample_eps(eps, x: jax.Array) -> jax.Array:
  """Broadcasts a scalar or (B,) budget to shape (B, 1, ..., 1) for a batch `x`."""
  eps = jnp.asarray(eps, dtype=x.dtype)
  if eps.ndim == x.ndim:
    return eps
  eps = jnp.broadcast_to(eps, x.shape[:1])
  return eps.reshape(x.shape[:1] + (1,) * (x.ndim - 1))


def _flat_norm(v: jax.Array) -> jax.Array:
  """Per-sample L2 norm, shaped (B, 1, ..., 1)."""
  sq = jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=1)
  return jnp.sqrt(sq).reshape(v.shape[:1] + (1,) * (v.ndim - 1))


def perturbation_norm(delta: jax.Array, norm: Norm = 'l2') -> jax.Array:
  """Per-sample norm of a perturbation, shape (B,)."""
  _check_norm(norm)
  flat = delta.reshape(delta.shape[0], -1)
  if norm == 'l2':
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=1))
  return jnp.max(jnp.abs(flat), axis=1)


def project(delta: jax.Array, eps: jax.Array, norm: Norm) -> jax.Array:
  """Projects each sample's perturbation onto its ε-ball (eps shaped (B, 1, ..., 1))."""
  if norm == 'linf':
    return jnp.clip(delta, -eps, eps)
  n = _flat_norm(delta)
  return delta * jnp.minimum(1.0, eps / jnp.maximum(n, _TINY))


def steepest_direction(grad: jax.Array, norm: Norm) -> jax.Array:
  """The unit-norm ascent direction for the norm: sign(g) for L∞, g/‖g‖₂ for L2."""
  if norm == 'linf':
    return jnp.sign(grad)
  return grad / jnp.maximum(_flat_norm(grad), _TINY)


def random_in_ball(key: jax.Array, x: jax.Array, eps: jax.Array, norm: Norm) -> jax.Array:
  """Uniform random perturbation inside each sample's ε-ball (eps shaped (B, 1, ..., 1))."""
  if norm == 'linf':
    return jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
  k_dir, k_rad = jax.random.split(key)
  direction = jax.random.normal(k_dir, x.shape, x.dtype)
  direction = direction / jnp.maximum(_flat_norm(direction), _TINY)
  dim = x[0].size
  radius = jax.random.uniform(k_rad, eps.shape, x.dtype) ** (1.0 / dim)
  return direction * radius * eps


def random_on_sphere(key: jax.Array, x: jax.Array, eps, norm: Norm = 'l2') -> jax.Array:
  """`x` plus random noise of norm exactly ε per sample (the baseline a real attack must beat)."""
  _check_norm(norm)
  eps = per_sample_eps(eps, x)
  if norm == 'linf':
    return x + eps * jnp.sign(jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0))
  noise = jax.random.normal(key, x.shape, x.dtype)
  return x + eps * noise / jnp.maximum(_flat_norm(noise), _TINY)


def _apply(x: jax.Array, delta: jax.Array, clip) -> jax.Array:
  if clip is None:
    return x + delta
  lo, hi = clip
  return jnp.clip(x + delta, lo, hi)


def _input_grad(loss_fn: LossFn, x: jax.Array) -> jax.Array:
  return jax.grad(lambda z: jnp.sum(loss_fn(z)))(x)


# config.attack.unroll: how the training attack's loop is compiled.
UNROLL_CHOICES = {'auto': None, 'unrolled': True, 'loop': False}


#: The longest loop `default_unroll` unrolls on CPU: compiling an unrolled step of a small U-Net
#: takes 1–2 s there, so PGD-100 + APGD-100 unrolled would compile for many minutes.
UNROLL_MAX_STEPS = 20


def default_unroll(steps: int | None = None) -> bool:
  """Unroll attack loops on CPU (slightly faster steps there) unless they are longer than
  `UNROLL_MAX_STEPS` (compile time); loop elsewhere (faster compiles, no speed lost)."""
  return jax.default_backend() == 'cpu' and (steps is None or steps <= UNROLL_MAX_STEPS)


def pgd(loss_fn: LossFn,
        x: jax.Array,
        eps,
        *,
        norm: Norm = 'l2',
        steps: int = 20,
        step_size=None,
        key: jax.Array | None = None,
        clip: tuple[float, float] | None = None,
        unroll: bool | None = None) -> jax.Array:
  """Projected gradient ascent on `loss_fn` inside per-sample ε-balls (Madry et al. 2018).

  Args:
    loss_fn: maps a batch (B, ...) to per-sample losses (B,).
    x: the clean batch.
    eps: budget, a scalar or a (B,) vector; must be ≥ 0.
    norm: 'l2' or 'linf'.
    steps: number of gradient steps.
    step_size: scalar or (B,) vector; defaults to 2.5·ε/steps per sample, so the iterates can cross
      the ball and come back (the Madry et al. rule of thumb).
    key: when given, start from a uniform random point in the ball; else start at `x`.
    clip: optional (lo, hi) data range the perturbed batch is clipped to.
    unroll: Python-unrolled loop (True) or `lax.fori_loop` (False); default
      `default_unroll(steps)`.

  Returns:
    The perturbed batch, same shape and dtype as `x`.
  """
  _check_norm(norm)
  alpha = (default_step_size(eps, x, steps, clip=clip, norm=norm) if step_size is None
           else step_size)
  delta = pgd_init(x, eps, norm=norm, key=key, clip=clip)

  def body(_, delta):
    return pgd_update(loss_fn, x, delta, eps, alpha, norm=norm, clip=clip)

  return jax.lax.stop_gradient(x + loop(body, delta, steps, unroll))


def loop(body, state, steps: int, unroll: bool | None = None):
  """`body(i, state)` for i = 0..steps-1: a Python-unrolled loop or a `lax.fori_loop`
  (default `default_unroll(steps)`)."""
  if unroll is None:
    unroll = default_unroll(steps)
  if unroll:
    for i in range(steps):
      state = body(i, state)
    return state
  return jax.lax.fori_loop(0, steps, body, state)


def default_step_size(eps, x: jax.Array, steps: int, factor: float = 2.5, *,
                      clip: tuple[float, float] | None = None, norm: Norm = 'l2') -> jax.Array:
  """factor·ε/steps per sample, shape (B,).

  With a data range `clip`, ε is first capped at the range's diameter (hi − lo in L∞,
  (hi − lo)·√D in L2, D the values per sample): a larger budget reaches no further image, and the
  uncapped step would only throw every pixel from one end of the range to the other (the sign
  steps of L∞ PGD at ε = 10 on [0, 1] data visit nothing but the corners of the cube).
  """
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
  if clip is not None:
    eps = jnp.minimum(eps, range_diameter(x, clip, norm))
  return factor * eps / jnp.maximum(steps, 1)


def range_diameter(x: jax.Array, clip: tuple[float, float], norm: Norm) -> float:
  """The largest distance between two images in the data range `clip`, in the attack's norm."""
  width = float(clip[1]) - float(clip[0])
  return width * math.sqrt(math.prod(x.shape[1:])) if norm == 'l2' else width


def pgd_init(x: jax.Array, eps, *, norm: Norm = 'l2', key: jax.Array | None = None,
             clip: tuple[float, float] | None = None) -> jax.Array:
  """PGD's starting perturbation: zero, or uniform in the ball when `key` is given."""
  if key is None:
    return jnp.zeros_like(x)
  delta = random_in_ball(key, x, per_sample_eps(eps, x), norm)
  return _apply(x, delta, clip) - x


def pgd_update(loss_fn: LossFn, x: jax.Array, delta: jax.Array, eps, step_size, *,
               norm: Norm = 'l2', clip: tuple[float, float] | None = None) -> jax.Array:
  """One PGD step on the perturbation `delta`: ascend, project onto the ε-ball, clip to the range.

  Exposed so that long evaluation attacks can run as a host loop over jitted chunks of steps.
  """
  return _ascend(x, delta, _input_grad(loss_fn, x + delta), eps, step_size, norm, clip)


def _ascend(x, delta, grad, eps, step_size, norm: Norm, clip) -> jax.Array:
  """delta + step along the steepest ascent direction, projected onto the ε-ball and clipped."""
  eps_b = per_sample_eps(eps, x)
  alpha = per_sample_eps(step_size, x)
  delta = project(delta + alpha * steepest_direction(grad, norm), eps_b, norm)
  return _apply(x, delta, clip) - x


def boundary_pgd(terms_fn: Callable[[jax.Array], jax.Array], x: jax.Array, eps, xi, *,
                 norm: Norm = 'l2', steps: int = 20, step_size=None,
                 key: jax.Array | None = None, clip: tuple[float, float] | None = None,
                 unroll: bool | None = None,
                 check_last: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PGD on the summed loss terms that also remembers, per sample, the first iterate at which a
  term reaches its threshold (`terms_fn(x̃)[i, k] ≥ xi[k]` for some k): where the noise stops
  being acceptable. The `stop_near_boundary` mode of the AMAT authors' library
  (SarielMa/amat_conf, AMAT_check_margin_one_batch, which their published training loops do not
  call) refines a margin to the distance of that point; this runs in the same pass as the training
  attack.

  Args:
    terms_fn: maps a batch (B, ...) to per-sample per-term losses (B, K).
    x: the clean batch.
    eps: budget, a scalar or a (B,) vector.
    xi: (K,) thresholds.
    norm, steps, step_size, key, clip, unroll: as for `pgd`.
    check_last: whether to evaluate `terms_fn` at the last iterate to check it too. A caller that
      evaluates the loss there anyway (AMAT's training loss) passes False and finishes with
      `boundary_finish`, saving one forward pass per step.

  Returns:
    (x_final, x_boundary, crossed): the last PGD iterate (what the adversarial loss uses); per
    sample the first iterate, start point and last iterate included, at which a term reached its
    threshold, or the last iterate where none did; and whether one did, (B,) bool.
  """
  _check_norm(norm)
  alpha = (default_step_size(eps, x, steps, clip=clip, norm=norm) if step_size is None
           else step_size)
  xi = jnp.asarray(xi, x.dtype)
  expand = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))

  def remember(terms, delta, boundary, crossed):
    now = jnp.any(terms >= xi, axis=-1) & ~crossed
    return jnp.where(expand(now), delta, boundary), crossed | now

  def summed(z):
    terms = terms_fn(z)
    return jnp.sum(terms), terms

  def body(_, state):
    delta, boundary, crossed = state
    grad, terms = jax.grad(summed, has_aux=True)(x + delta)
    boundary, crossed = remember(terms, delta, boundary, crossed)
    return _ascend(x, delta, grad, eps, alpha, norm, clip), boundary, crossed

  delta = pgd_init(x, eps, norm=norm, key=key, clip=clip)
  delta, boundary, crossed = loop(body, (delta, delta, jnp.zeros(x.shape[:1], bool)), steps,
                                  unroll)
  x_final = jax.lax.stop_gradient(x + delta)
  x_boundary = jax.lax.stop_gradient(x + boundary)
  if not check_last:
    return x_final, x_boundary, jax.lax.stop_gradient(crossed)
  return boundary_finish(x_final, x_boundary, crossed, terms_fn(x_final), xi)


def boundary_finish(x_final: jax.Array, x_boundary: jax.Array, crossed: jax.Array,
                    last_terms: jax.Array, xi) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The last check of `boundary_pgd(..., check_last=False)`: given the (B, K) loss terms at the
  last iterate, a sample that crosses only there gets it as its boundary point, and one that
  never crossed gets the last iterate. Returns (x_final, x_boundary, crossed) as `boundary_pgd`."""
  last_terms = jax.lax.stop_gradient(last_terms)
  now = jnp.any(last_terms >= jnp.asarray(xi, last_terms.dtype), axis=-1) & ~crossed
  crossed = crossed | now
  keep = crossed & ~now
  expand = lambda v: v.reshape((-1,) + (1,) * (x_final.ndim - 1))
  return x_final, jnp.where(expand(keep), x_boundary, x_final), crossed


def _signed_step(loss_fn: LossFn, x, eps, norm: Norm, clip, sign: float) -> jax.Array:
  _check_norm(norm)
  eps_b = per_sample_eps(eps, x)
  g = _input_grad(loss_fn, x)
  delta = sign * eps_b * steepest_direction(g, norm)
  return jax.lax.stop_gradient(_apply(x, delta, clip))


def fgsm(loss_fn: LossFn, x: jax.Array, eps, *, norm: Norm = 'linf',
         clip: tuple[float, float] | None = None) -> jax.Array:
  """One step of size ε along the steepest ascent direction: x + ε·sign(∇L) for L∞ (Goodfellow 2015)."""
  return _signed_step(loss_fn, x, eps, norm, clip, +1.0)


def inverse_fgsm(loss_fn: LossFn, x: jax.Array, eps, *, norm: Norm = 'linf',
                 clip: tuple[float, float] | None = None) -> jax.Array:
  """"Helpful" noise: one step of size ε that *decreases* the loss, x − ε·sign(∇L) for L∞."""
  return _signed_step(loss_fn, x, eps, norm, clip, -1.0)


ATTACKS = {'pgd': pgd, 'fgsm': fgsm, 'inverse_fgsm': inverse_fgsm}


def run_iterative(attack, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None = None,
                  unroll: bool | None = None) -> jax.Array:
  """Runs an iterative attack given as settings with `init`, `step` and `result` (see
  `PGDSettings`): `init(loss_fn, x, eps, key) -> state`, `step(loss_fn, x, state, eps, i) -> state`
  for i = 0..steps-1 (i may be traced), `result(x, state) -> x_adv`.

  The evaluator runs the same three functions as a host loop over jitted chunks of steps, so an
  attack written this way is usable in training, in scripts and in long evaluations alike.
  """
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
  state = attack.init(loss_fn, x, eps, key)
  if unroll is None:
    unroll = default_unroll(attack.steps)
  if unroll:
    for i in range(attack.steps):
      state = attack.step(loss_fn, x, state, eps, jnp.int32(i))
  else:
    state = jax.lax.fori_loop(0, attack.steps,
                              lambda i, s: attack.step(loss_fn, x, s, eps, i), state)
  return jax.lax.stop_gradient(attack.result(x, state))


@dataclasses.dataclass(frozen=True)
class PGDSettings:
  """A configured PGD (the budget is given per call), shared by training and evaluation."""
  norm: str = 'l2'
  steps: int = 20
  step_size_factor: float = 2.5   # step = factor · ε / steps
  random_start: bool = False
  clip: tuple[float, float] | None = None
  unroll: bool | None = None      # None: `default_unroll(steps)`

  @classmethod
  def from_config(cls, c, clip=None) -> 'PGDSettings':
    """From a config section with norm, steps, step_size_factor, random_start and optionally
    unroll ('auto', 'unrolled' or 'loop')."""
    clip = tuple(clip) if clip else None
    return cls(norm=c.norm, steps=c.steps, step_size_factor=c.step_size_factor,
               random_start=c.random_start, clip=clip,
               unroll=UNROLL_CHOICES[c.get('unroll', 'auto')])

  def step_size(self, eps, x: jax.Array) -> jax.Array:
    return default_step_size(eps, x, self.steps, self.step_size_factor, clip=self.clip,
                             norm=self.norm)

  # The iterative-attack protocol of `run_iterative`; the state is the perturbation.
  def init(self, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None) -> jax.Array:
    del loss_fn
    return pgd_init(x, eps, norm=self.norm, key=key if self.random_start else None,
                    clip=self.clip)

  def step(self, loss_fn: LossFn, x: jax.Array, delta: jax.Array, eps, i) -> jax.Array:
    del i
    return pgd_update(loss_fn, x, delta, eps, self.step_size(eps, x), norm=self.norm,
                      clip=self.clip)

  def result(self, x: jax.Array, delta: jax.Array) -> jax.Array:
    return x + delta

  def __call__(self, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None = None,
               unroll: bool | None = None) -> jax.Array:
    return pgd(loss_fn, x, eps, norm=self.norm, steps=self.steps,
               step_size=self.step_size(eps, x), key=key if self.random_start else None,
               clip=self.clip, unroll=self.unroll if unroll is None else unroll)

  def sized(self, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None = None):
    """(the attacked batch, each sample's perturbation norm (B,) in the attack's norm)."""
    x_adv = self(loss_fn, x, eps, key)
    return x_adv, perturbation_norm(x_adv - x, self.norm)

  def describe(self) -> dict[str, Any]:
    """What a report records so a number never travels without the attack that produced it. (With
    a data range, budgets past its diameter step as the diameter does: `describe_at` says so for
    such a budget.)"""
    return {'name': f'pgd-{self.steps}', 'norm': self.norm, 'steps': self.steps,
            'step_size': f'{self.step_size_factor}*eps/{self.steps}', 'restarts': 1,
            'random_start': self.random_start,
            'data_range': list(self.clip) if self.clip else 'unbounded (no clipping)'}


def describe_at(attack: PGDSettings, eps: float, x: jax.Array) -> dict[str, Any]:
  """`attack.describe()` for a run at budget `eps`, with the step it really takes when `eps` is
  past the data range's diameter (the huge-budget masking check's attack)."""
  out = {**attack.describe(), 'eps': eps}
  diameter = range_diameter(x, attack.clip, attack.norm) if attack.clip else math.inf
  if eps > diameter:
    out['step_size'] = (f'{attack.step_size_factor}*{diameter:g}/{attack.steps} (ε past the data '
                        f'range\'s diameter {diameter:g} steps as the diameter)')
  return out


# A pytree whose steps and step-size factor are data: a jitted function taking a `PGDSettings` as
# an argument compiles once for every PGD of the same norm, start and range (the evaluator's
# PGD-100, its weak PGD-20 check and its huge-ε check share one compiled loop).
jax.tree_util.register_dataclass(PGDSettings, data_fields=['steps', 'step_size_factor'],
                                 meta_fields=['norm', 'random_start', 'clip', 'unroll'])


class OnBase:
  """Mixin of an attack that runs another, `base` (a transfer attack, a per-patch attack): it
  has the base's steps and norm."""

  @property
  def steps(self) -> int:
    return self.base.steps

  @property
  def norm(self) -> str:
    return self.base.norm


@dataclasses.dataclass(frozen=True)
class RandomNoise:
  """Random noise of norm exactly ε per sample, as an attack with no steps: the baseline every
  real attack must beat (a model whose gradients are masked fails to)."""
  norm: str = 'l2'
  clip: tuple[float, float] | None = None
  steps: int = 0

  def init(self, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None) -> jax.Array:
    del loss_fn
    if key is None:
      raise ValueError('RandomNoise needs a PRNG key.')
    return _apply(x, random_on_sphere(key, x, eps, self.norm) - x, self.clip)

  def step(self, loss_fn: LossFn, x: jax.Array, state: jax.Array, eps, i) -> jax.Array:
    raise NotImplementedError('RandomNoise has no steps.')

  def result(self, x: jax.Array, state: jax.Array) -> jax.Array:
    return state

  def describe(self) -> dict[str, Any]:
    return {'name': 'random-noise', 'norm': self.norm, 'steps': 0, 'step_size': 'none',
            'restarts': 1, 'random_start': True,
            'data_range': list(self.clip) if self.clip else 'unbounded (no clipping)'}
