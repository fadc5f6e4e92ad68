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


def square_linf(loss_fn: attacks.LossFn, x: jax.Array, eps, key: jax.Array, *,
                queries: int = 1000, p_init: float = 0.05,
                clip: tuple[float, float] | None = None) -> jax.Array:
  """The L∞ Square attack on images `x` (B, H, W, C); see the module docstring."""
  if x.ndim != 4:
    raise ValueError(f'Square attacks images (B, H, W, C); got shape {x.shape}.')
  if queries < 1:
    raise ValueError(f'queries = {queries} must be ≥ 1.')
  b, h, w, c = x.shape
  eps = attacks.per_sample_eps(eps, x).reshape(b, 1, 1, 1)

  def clipped(delta):
    x_new = x + delta
    if clip is not None:
      x_new = jnp.clip(x_new, clip[0], clip[1])
    return x_new

  init_key, key = jax.random.split(key)
  x_best = clipped(eps * _signs(init_key, (b, 1, w, c)))
  loss_best = loss_fn(x_best)
  rows = jnp.arange(h).reshape(1, h, 1, 1)
  cols = jnp.arange(w).reshape(1, 1, w, 1)

  def query(i, carry):
    x_best, loss_best = carry
    k = jax.random.fold_in(key, i)
    pos_key, sign_key = jax.random.split(k)
    s = window_side(window_fraction(i, queries, p_init), h, w)
    r0 = jax.random.randint(pos_key, (b, 1, 1, 1), 0, h - s + 1)
    c0 = jax.random.randint(jax.random.fold_in(pos_key, 1), (b, 1, 1, 1), 0, w - s + 1)
    inside = (rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s)
    delta = jnp.where(inside, eps * _signs(sign_key, (b, 1, 1, c)), x_best - x)
    x_new = clipped(delta)
    loss_new = loss_fn(x_new)
    better = loss_new > loss_best
    return (jnp.where(better.reshape(b, 1, 1, 1), x_new, x_best),
            jnp.where(better, loss_new, loss_best))

  x_best, _ = jax.lax.fori_loop(1, queries, query, (x_best, loss_best))
  # A zero budget leaves the sample unchanged (the stripes were ±0).
  return jnp.where(eps > 0, x_best, x)
