"""Small batches, keys and per-sample losses shared by the attack tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import attacks

NORMS = ('l2', 'linf')
EPS = np.array([0.0, 0.1, 0.5, 2.0], np.float32)  # Per-sample budgets, 0 included.
TOL = 1e-5


def batch(seed: int, shape, lo: float = -1.0, hi: float = 1.0) -> jax.Array:
  """A random batch, drawn with NumPy (jax.random would compile threefry for every shape)."""
  return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, shape), jnp.float32)


def key(seed: int) -> jax.Array:
  """An 'rbg' PRNG key: random starts compile several times faster than with threefry."""
  return jax.random.key(seed, impl='rbg')


def mlp_params(dim: int, seed: int = 1, hidden: int = 8):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(dim, hidden)) / np.sqrt(dim), jnp.float32),
          jnp.asarray(rng.normal(size=hidden) * 0.1, jnp.float32),
          jnp.asarray(rng.normal(size=hidden), jnp.float32))


def mlp_loss(x: jax.Array, params) -> jax.Array:
  """A tiny per-sample nonlinear loss: softplus of a one-hidden-layer tanh MLP, (B,)."""
  w1, b1, w2 = params
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1)
  return jax.nn.softplus(h @ w2)


def norms(x_adv: jax.Array, x: jax.Array, norm: str) -> np.ndarray:
  return np.asarray(attacks.perturbation_norm(x_adv - x, norm))
