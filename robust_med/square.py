"""Square attack: gradient-free random search in the L∞ or L2 ball (Andriushchenko et al., ECCV 2020).

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

The L2 search (the paper's Algorithm 3) keeps the perturbation on the sphere of radius ε:

* start from a grid of squares of side ⌊min(H, W) / 5⌋, each holding the paper's "meta pseudo-
  Gaussian" pattern (two stacked halves of opposite sign whose values fall off as Σ 1/(k+1)² over
  concentric rectangles) with a random sign per square and channel, scaled to norm ε;
* at query i, pick two random s × s windows (s = round(√(p_i · H · W)), at least 3): the second
  window's perturbation moves into the first, which becomes a new pattern (random sign per
  channel, randomly transposed) plus its old perturbation's direction, each channel carrying the
  mass the two windows held plus its share of any budget left (after clipping); the whole
  perturbation is rescaled to norm ε and kept only when it raises the loss.
* p follows the same schedule from `p_init` (the paper's 0.1 for L2, 0.05 for L∞).

Every query costs one forward pass; `queries` counts the initial point too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import jax
import jax.numpy as jnp

from robust_med import attacks

# Queries (per 10 000) after which the paper halves the window fraction p.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
NORMS = ('linf', 'l2')
P_INIT = {'linf': 0.05, 'l2': 0.1}  # the paper's initial window fractions


def window_fraction(i, queries: int, p_init: float):
  """p at query `i` (0-based) of a budget of `queries`: `p_init` halved at each of the paper's
  points, rescaled to the budget."""
  scaled = jnp.asarray(i) * 10000 // queries
  halvings = sum((scaled > t).astype(jnp.int32) for t in P_HALVINGS)
  return p_init / 2.0 ** halvings


def window_side(p, height: int, width: int, smallest: int = 1):
  """The side s of the square window for fraction p of the image's H × W pixels (at least
  `smallest`, at most min(H, W) − 1)."""
  s = jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32)
  top = max(min(height, width) - 1, 1)
  return jnp.clip(s, min(smallest, top), top)


def _tail_sums(size: int) -> jax.Array:
  """C[j] = Σ_{k<j} 1/(k+1)², j = 0..size: the pseudo-Gaussian's values are differences of C."""
  return jnp.asarray(np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, size + 1) ** 2)]),
                     jnp.float32)


def _rectangle(u, v, rows, cols, tails):
  """The paper's pseudo-Gaussian on a rows × cols rectangle at local coordinates (u, v), zero
  outside: Σ_{k=m}^{K} 1/(k+1)², m the Chebyshev distance to the centre (rows//2, cols//2) and
  K = max(rows, cols)//2 (unnormalised)."""
  inside = (u >= 0) & (u < rows) & (v >= 0) & (v < cols)
  m = jnp.maximum(jnp.abs(u - rows // 2), jnp.abs(v - cols // 2))
  last = jnp.maximum(rows, cols) // 2
  size = tails.shape[0] - 1
  value = tails[jnp.clip(last + 1, 0, size)] - tails[jnp.clip(m, 0, size)]
  return jnp.where(inside, value, 0.0)


def meta_pattern(u, v, s, tails, span: int):
  """The paper's "meta pseudo-Gaussian" of side s at local coordinates (u, v) (zero outside the
  s × s square): the upper half a unit-norm pseudo-Gaussian, the lower half its negative on the
  remaining rows, the whole of unit norm. `span` ≥ s bounds the grid the norms are taken on."""
  grid = jnp.arange(span)
  gu, gv = grid[:, None], grid[None, :]
  top_rows, bottom_rows = s // 2, s - s // 2
  top_norm = jnp.sqrt(jnp.sum(_rectangle(gu, gv, top_rows, s, tails) ** 2))
  bottom_norm = jnp.sqrt(jnp.sum(_rectangle(gu, gv, bottom_rows, s, tails) ** 2))
  top = _rectangle(u, v, top_rows, s, tails) / jnp.maximum(top_norm, 1e-12)
  bottom = _rectangle(u - top_rows, v, bottom_rows, s, tails) / jnp.maximum(bottom_norm, 1e-12)
  halves = (top_norm > 0).astype(jnp.float32) + (bottom_norm > 0).astype(jnp.float32)
  return (top - bottom) / jnp.sqrt(jnp.maximum(halves, 1.0))


def _l2_norm(a, axis=(1, 2, 3)):
  return jnp.sqrt(jnp.sum(a * a, axis=axis, keepdims=True))


def _signs(key, shape):
  return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0)


def _images(x: jax.Array) -> tuple[int, int, int, int]:
  if x.ndim != 4:
    raise ValueError(f'Square attacks images (B, H, W, C); got shape {x.shape}.')
  return x.shape


@dataclasses.dataclass(frozen=True)
class SquareSettings:
  """A configured Square attack (L∞ or L2) in the iterative-attack protocol of
  `attacks.run_iterative` (`init` is the first query, each `step` one more), so the evaluator
  runs it like PGD and APGD. Its state is (best images, their losses, the search's key).
  `p_init` 0 takes the paper's value for the norm (`P_INIT`)."""
  queries: int = 1000
  p_init: float = 0.0
  clip: tuple[float, float] | None = None
  norm: str = 'linf'
  gradient_free = True  # the evaluator's masking check compares it with the gradient attacks

  def __post_init__(self):
    if self.norm not in NORMS:
      raise ValueError(f'Square is implemented for the norms {NORMS}, not {self.norm!r}.')
    if self.queries < 1:
      raise ValueError(f'queries = {self.queries} must be ≥ 1.')
    if not self.p_init:
      object.__setattr__(self, 'p_init', P_INIT[self.norm])

  @property
  def steps(self) -> int:
    return self.queries - 1

  def _clipped(self, x, delta):
    x_new = x + delta
    return x_new if self.clip is None else jnp.clip(x_new, self.clip[0], self.clip[1])

  def init(self, loss_fn: attacks.LossFn, x: jax.Array, eps, key: jax.Array | None):
    if key is None:
      raise ValueError('Square is a random search: it needs a PRNG key.')
    b, h, w, c = _images(x)
    eps = attacks.per_sample_eps(eps, x).reshape(b, 1, 1, 1)
    init_key, key = jax.random.split(key)
    if self.norm == 'linf':
      x_best = self._clipped(x, eps * _signs(init_key, (b, 1, w, c)))  # vertical stripes
    else:
      x_best = self._clipped(x, eps * self._l2_start(init_key, b, h, w, c))
    return x_best, loss_fn(x_best), key

  @staticmethod
  def _l2_start(key, b: int, h: int, w: int, c: int) -> jax.Array:
    """Unit-norm start: a grid of ⌊min(H, W)/5⌋-sided squares, each a meta pseudo-Gaussian
    with a random sign per sample, square and channel."""
    side = max(min(h, w) // 5, 1)
    blocks_h, blocks_w = h // side, w // side
    off_h, off_w = (h - side * blocks_h) // 2, (w - side * blocks_w) // 2
    rows, cols = np.arange(h) - off_h, np.arange(w) - off_w
    in_grid = ((rows >= 0) & (rows < side * blocks_h))[:, None] & \
              ((cols >= 0) & (cols < side * blocks_w))[None, :]
    block = np.where(in_grid, (rows // side)[:, None] * blocks_w + (cols // side)[None, :], 0)
    u, v = (rows % side)[:, None], (cols % side)[None, :]
    pattern = meta_pattern(jnp.asarray(u), jnp.asarray(v), side, _tail_sums(max(h, w) + 2),
                           side) * jnp.asarray(in_grid, jnp.float32)
    signs = _signs(key, (b, blocks_h * blocks_w, c))
    delta = pattern[None, :, :, None] * signs[:, jnp.asarray(block)]  # (B, H, W, C)
    return delta / jnp.maximum(_l2_norm(delta), 1e-12)

  def step(self, loss_fn: attacks.LossFn, x: jax.Array, state, eps, i):
    if self.norm == 'l2':
      return self._l2_step(loss_fn, x, state, eps, i)
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

  def _l2_step(self, loss_fn: attacks.LossFn, x: jax.Array, state, eps, i):
    x_best, loss_best, key = state
    b, h, w, c = _images(x)
    eps = attacks.per_sample_eps(eps, x).reshape(b, 1, 1, 1)
    query = i + 1
    keys = jax.random.split(jax.random.fold_in(key, query), 6)
    s = window_side(window_fraction(query, self.queries, self.p_init), h, w, smallest=3)
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)

    def window(k_row, k_col):
      r0 = jax.random.randint(k_row, (b, 1, 1, 1), 0, h - s + 1)
      c0 = jax.random.randint(k_col, (b, 1, 1, 1), 0, w - s + 1)
      return r0, c0, (rows >= r0) & (rows < r0 + s) & (cols >= c0) & (cols < c0 + s)
    r1, c1, first = window(keys[0], keys[1])
    _, _, second = window(keys[2], keys[3])
    delta = x_best - x
    spatial = (1, 2)
    left = jnp.maximum(eps ** 2 - jnp.sum(delta ** 2, axis=(1, 2, 3), keepdims=True), 0.0)
    held = jnp.sum((delta * (first | second)) ** 2, axis=spatial, keepdims=True)  # (B,1,1,C)
    old = delta * first
    u, v = rows - r1, cols - c1
    flip = jax.random.bernoulli(keys[4], 0.5)
    tails = _tail_sums(max(h, w) + 2)
    pattern = jnp.where(flip, meta_pattern(v, u, s, tails, max(h, w)),
                        meta_pattern(u, v, s, tails, max(h, w)))
    new = pattern * _signs(keys[5], (b, 1, 1, c)) + old / jnp.maximum(
        jnp.sqrt(jnp.sum(old ** 2, axis=spatial, keepdims=True)), 1e-12)
    new = new / jnp.maximum(jnp.sqrt(jnp.sum(new ** 2, axis=spatial, keepdims=True)), 1e-12)
    new = new * jnp.sqrt(left / c + held)
    delta = jnp.where(first, new, jnp.where(second, 0.0, delta))
    x_new = self._clipped(x, delta * eps / jnp.maximum(_l2_norm(delta), 1e-12))
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


# A pytree of static fields only, like APGDSettings: the evaluator runs it as one `fori_loop`
# (a thousand unrolled queries would take minutes to compile).
jax.tree_util.register_dataclass(SquareSettings, data_fields=[],
                                 meta_fields=[f.name for f in dataclasses.fields(SquareSettings)])


def square(loss_fn: attacks.LossFn, x: jax.Array, eps, key: jax.Array, *, norm: str = 'linf',
           queries: int = 1000, p_init: float = 0.0,
           clip: tuple[float, float] | None = None) -> jax.Array:
  """The Square attack in `norm` ('linf' or 'l2') on images `x` (B, H, W, C) with `queries`
  forward passes (`p_init` 0: the paper's for the norm); see the module docstring."""
  settings = SquareSettings(queries=queries, p_init=p_init, clip=tuple(clip) if clip else None,
                            norm=norm)
  return settings(loss_fn, x, eps, key, unroll=False)
