"""Square attack: gradient-free random search in the L∞ ball (Andriushchenko et al., ECCV 2020).

A check against gradient masking: it never looks at a gradient, so a model whose gradients are
zero, noisy or misleading cannot hide from it the way it hides from PGD. Like the attacks of
`robust_med.attacks` it takes `loss_fn(x) -> (B,)`, the per-sample loss to increase, the clean
batch `x` (B, H, W, C) and a per-sample budget `eps`, and returns a batch with
``‖x̃_i − x_i‖∞ ≤ eps_i`` (and in `clip` when given); samples are searched independently.

The search, per sample (the paper's Algorithm 1 with its L∞ proposal):

* start from vertical stripes: every column of every channel moved by ±ε (random signs);
* at query i, pick a random s × s window, s = round(√(p_i · H · W)) clipped to [1, min(H, W) − 1],
  and set the perturbation inside it to ±ε per channel (random signs); keep the proposal only when
  it raises the loss;
* p_i follows the paper's schedule: p_init halved at query fractions 10, 50, 200, 500, 1000, 2000,
  4000, 6000 and 8000 per 10 000 of the budget.

Every query costs one forward pass; `queries` counts the initial point too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from robust_med import attacks

# Queries (per 10 000) after which the paper halves the window fraction p.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(i, queries: int, p_init: float):
  """p at query `i` (0-based) of a budget of `queries`: `p_init` halved at each of the paper's
  points, rescaled to the budget."""
  scaled = jnp.asarray(i) * 10000 // queries
  halvings = sum((scaled > t).astype(jnp.int32) for t in P_HALVINGS)
  return p_init / 2.0 ** halvings


def window_side(p, height: int, width: int):
  """The side s of the square window for fraction p of the image's H × W pixels."""
  s = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  return jnp.clip(s, 1, max(min(height, width) - 1, 1))


def _signs(key, shape):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0)


def _images(x: jax.Array) -> tuple[int, int, int, int]:
  if x.ndim != 4:
    raise ValueError(f'Square attacks images (B, H, W, C); got shape {x.shape}.')
  return x.shape


@dataclasses.dataclass(frozen=True)
class SquareSettings:
  """A configured L∞ Square attack in the iterative-attack protocol of
  `attacks.run_iterative` (`init` is the first query, each `step` one more), so the evaluator
  runs it like PGD and APGD. Its state is (best images, their losses, the search's key)."""
  queries: int = 1000
  p_init: float = 0.05
  clip: tuple[float, float] | None = None
  norm: str = 'linf'
  gradient_free = True  # the evaluator's masking check compares it with the gradient attacks

  def __post_init__(self):
    if self.norm != 'linf':
      raise ValueError(f'Square is implemented for the L∞ norm only, not {self.norm!r}.')
    if self.queries < 1:
      raise ValueError(f'queries = {self.queries} must be ≥ 1.')

  @property
  def steps(self) -> int:
    return self.queries - 1

  def _clipped(self, x, delta):
    x_new = x + delta
    return x_new if self.clip is None else jnp.clip(x_new, self.clip[0], self.clip[1])

  def init(self, loss_fn: attacks.LossFn, x: jax.Array, eps, key: jax.Array | None):
    if key is None:
      raise ValueError('Square is a random search: it needs a PRNG key.')
    b, _, w, c = _images(x)
    eps = attacks.per_sample_eps(eps, x).reshape(b, 1, 1, 1)
    init_key, key = jax.random.split(key)
    x_best = self._clipped(x, eps * _signs(init_key, (b, 1, w, c)))  # vertical stripes
    return x_best, loss_fn(x_best), key

  def step(self, loss_fn: attacks.LossFn, x: jax.Array, state, eps, i):
    x_best, loss_best, key = state
    b, h, w, c = _images(x)
    eps = attacks.per_sample_eps(eps, x).reshape(b, 1, 1, 1)
    query = i + 1
    pos_key, sign_key = jax.random.split(jax.random.fold_in(key, query))
    s = window_side(window_fraction(query, self.queries, self.p_init), h, w)
    r0 = jax.random.randint(pos_key, (b, 1, 1, 1), 0, h - s + 1)
    c0 = jax.random.randint(jax.random.fold_in(pos_key, 1), (b, 1, 1, 1), 0, w - s + 1)
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)
    inside = (rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s)
    x_new = self._clipped(x, jnp.where(inside, eps * _signs(sign_key, (b, 1, 1, c)),
                                       x_best - x))
    loss_new = loss_fn(x_new)
    better = loss_new > loss_best
    return (jnp.where(better.reshape(b, 1, 1, 1), x_new, x_best),
            jnp.where(better, loss_new, loss_best), key)

  def result(self, x: jax.Array, state) -> jax.Array:
    return state[0]

  def __call__(self, loss_fn: attacks.LossFn, x: jax.Array, eps, key: jax.Array | None = None,
               unroll: bool | None = None) -> jax.Array:
    return attacks.run_iterative(self, loss_fn, x, eps, key, unroll=unroll)

  def describe(self) -> dict:
    """What a report records about the attack."""
    return {'name': f'square-{self.queries}', 'norm': self.norm, 'steps': self.queries,
            'step_size': f'random search, p_init={self.p_init}', 'restarts': 1,
            'random_start': True,
            'data_range': list(self.clip) if self.clip else 'unbounded (no clipping)'}


def square_linf(loss_fn: attacks.LossFn, x: jax.Array, eps, key: jax.Array, *,
                queries: int = 1000, p_init: float = 0.05,
                clip: tuple[float, float] | None = None) -> jax.Array:
  """The L∞ Square attack on images `x` (B, H, W, C) with `queries` forward passes; see the
  module docstring."""
  settings = SquareSettings(queries=queries, p_init=p_init,
                            clip=tuple(clip) if clip else None)
  return settings(loss_fn, x, eps, key, unroll=False)  # ε = 0: stripes and windows of ±0.
