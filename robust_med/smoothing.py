"""Randomized smoothing: Monte-Carlo answers under Gaussian noise, and their certificates.

The statistics here turn a model's answers on noisy copies of an input into certificates valid
for every L2 perturbation up to a radius.

The smoothed model answers with an aggregate of the base model's answers f(x + δ), δ ~ N(0, σ²I):

- **Votes, one answer per image** (a class): the most frequent answer. Cohen, Rosenfeld & Kolter
  2019: `certify_votes` is CERTIFY (the answer chosen on n₀ selection samples, its probability
  bounded from below by Clopper–Pearson on n estimation samples, radius R = σ·Φ⁻¹(p̲_A), abstain
  when p̲_A < ½) and `predict_votes` is PREDICT (abstain unless a binomial test separates the two
  most frequent answers at level α).
- **Votes, many answers per image** (a class per pixel): Fischer, Baader & Vechev 2021
  (SegCertify). For a radius r, τ = Φ(r/σ); an element keeps its answer when the binomial test of
  "its answer's probability ≤ τ" is rejected, with Holm's (default) or Bonferroni's correction
  over the image's elements; it abstains otherwise. `certify_elements` does this for several
  radii from the same counts (each radius its own certificate at level α).
- **Real answers** (a coordinate, a box corner): the median. Chiang et al. 2020 (median smoothing):
  under any ‖δ‖₂ ≤ r the smoothed median stays between the Φ(−r/σ) and Φ(r/σ) percentiles of the
  clean input's answers; `median_bounds` bounds those percentiles by order statistics of the n
  samples with confidence 1 − α per bound.

Each image draws its noise from its own key (`image_keys`: the run's seed folded with the image's
id), so a certificate can be reproduced image by image. The functions here know nothing of heads;
a head says what its answers are and what its certified metric is (`Task.smoothing`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

from robust_med.errors import UserError

ABSTAIN = -1
CORRECTIONS = ('holm', 'bonferroni')


@dataclasses.dataclass(frozen=True)
class SmoothingSettings:
  """σ of the Gaussian noise (in the model's input units), n₀ selection and n estimation samples
  per image, α (the certificates hold with probability ≥ 1 − α), the multiple-testing correction
  over an image's elements, and how many noisy copies of each image one forward pass takes."""
  sigma: float
  n: int = 1000
  n0: int = 100
  alpha: float = 0.001
  correction: str = 'holm'
  chunk: int = 100

  def __post_init__(self):
    check_settings(self.sigma, self.n, self.alpha, self.n0, self.correction, self.chunk)


def check_settings(sigma: float, n: int, alpha: float, n0: int = 1, correction: str = 'holm',
                   chunk: int = 1) -> None:
  """One `UserError` naming the first impossible setting."""
  if not np.isfinite(sigma) or sigma <= 0:
    raise UserError(f'σ = {sigma}: smoothing needs Gaussian noise of positive standard deviation; '
                    'pass e.g. --sigma=0.25 (the σ the model was trained with).')
  if int(n) < 1 or int(n0) < 1:
    raise UserError(f'n = {n}, n0 = {n0}: smoothing needs at least one noisy sample to select '
                    'and one to estimate; pass e.g. --n=1000 --n0=100.')
  if not 0 < alpha < 1:
    raise UserError(f'α = {alpha}: the failure probability must lie strictly between 0 and 1; '
                    'pass e.g. --alpha=0.001.')
  if correction not in CORRECTIONS:
    raise UserError(f'correction {correction!r} is unknown: use one of {CORRECTIONS}.')
  if int(chunk) < 1:
    raise UserError(f'chunk = {chunk}: at least one noisy copy per forward pass; pass e.g. 100.')


# --- Statistics (NumPy/SciPy, host side) -----------------------------------------------------

def clopper_pearson(k, n, alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Two-sided Clopper–Pearson interval (coverage 1 − α) of a binomial proportion, k successes of
  n, elementwise."""
  k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
  lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
  hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
  return lo, hi


def lower_confidence_bound(k, n, alpha: float) -> np.ndarray:
  """One-sided Clopper–Pearson lower bound (coverage 1 − α) of a proportion: CERTIFY's p̲_A."""
  return clopper_pearson(k, n, 2 * alpha)[0]


def certify_votes(select_counts: np.ndarray, counts: np.ndarray, sigma: float,
                  alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cohen et al.'s CERTIFY for answers counted over the last axis: `select_counts` (..., C) from
  the n₀ selection samples pick the answer, `counts` (..., C) from n other samples bound its
  probability. Returns the answer (ABSTAIN where p̲_A < ½), the certified L2 radius σ·Φ⁻¹(p̲_A)
  (0 where abstained) and p̲_A."""
  select_counts, counts = np.asarray(select_counts), np.asarray(counts)
  answer = select_counts.argmax(axis=-1)
  n = counts.sum(axis=-1)
  n_a = np.take_along_axis(counts, answer[..., None], axis=-1)[..., 0]
  p_lower = lower_confidence_bound(n_a, n, alpha)
  certified = p_lower > 0.5
  radius = np.where(certified, sigma * special.ndtri(np.where(certified, p_lower, 0.75)), 0.0)
  return np.where(certified, answer, ABSTAIN), radius, p_lower


def largest_radius(n: int, sigma: float, alpha: float) -> float:
  """The largest radius CERTIFY can give with n estimation samples, whatever the model: every
  sample agreeing bounds p̲_A at α^(1/n) (Clopper–Pearson), so no radius exceeds σ·Φ⁻¹(α^(1/n))
  (2.46σ at n = 1000, α = 0.001). A limit of n, not of the model; SegCertify's per-element
  tests, corrected over the elements, stay below it too."""
  return float(sigma * special.ndtri(lower_confidence_bound(np.asarray(n), np.asarray(n), alpha)))


def majority_test(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The most frequent answer over the last axis of `counts`, and the p-value of the two-sided
  binomial test of its count against the runner-up's (p = ½)."""
  counts = np.asarray(counts)
  order = np.argsort(-counts, axis=-1, kind='stable')
  top = order[..., 0]
  n_a = np.take_along_axis(counts, top[..., None], axis=-1)[..., 0]
  n_b = np.take_along_axis(counts, order[..., 1:2], axis=-1)[..., 0] if counts.shape[-1] > 1 \
      else np.zeros_like(n_a)
  return top, np.minimum(1.0, 2 * stats.binom.cdf(n_b, n_a + n_b, 0.5))


def predict_votes(counts: np.ndarray, alpha: float) -> np.ndarray:
  """Cohen et al.'s PREDICT: the most frequent answer over the last axis of `counts`, or ABSTAIN
  when the binomial test of `majority_test` has p > α."""
  top, p = majority_test(counts)
  return np.where(p <= alpha, top, ABSTAIN)


def rejections(pvalues: np.ndarray, alpha: float, correction: str = 'holm',
               valid: np.ndarray | None = None) -> np.ndarray:
  """Which null hypotheses are rejected at family-wise error α, each family the last axis of
  `pvalues` (only its `valid` entries count, and only they can be rejected): Holm's step-down
  (the k-th smallest p-value, 1-based, rejected while p ≤ α / (m − k + 1)) or Bonferroni's
  p ≤ α / m."""
  p = np.asarray(pvalues, np.float64)
  valid = np.ones(p.shape, bool) if valid is None else np.broadcast_to(valid, p.shape)
  p = np.where(valid, p, np.inf)
  m = valid.sum(axis=-1, keepdims=True)
  if correction == 'bonferroni':
    return valid & (p <= alpha / np.maximum(m, 1))
  if correction != 'holm':
    raise UserError(f'correction {correction!r} is unknown: use one of {CORRECTIONS}.')
  order = np.argsort(p, axis=-1, kind='stable')
  sorted_p = np.take_along_axis(p, order, axis=-1)
  k = np.arange(p.shape[-1])
  below = sorted_p <= alpha / np.maximum(m - k, 1)
  # Step-down: reject the smallest p-values up to the first that fails.
  keep = np.cumprod(below, axis=-1).astype(bool)
  out = np.zeros(p.shape, bool)
  np.put_along_axis(out, order, keep, axis=-1)
  return out & valid


def certify_elements(select_counts: np.ndarray, counts: np.ndarray, sigma: float, alpha: float,
                     radii, correction: str = 'holm',
                     valid: np.ndarray | None = None) -> np.ndarray:
  """SegCertify for answers counted per element: `select_counts`, `counts` (B, *E, C), the
  elements of each image tested together (only the `valid` ones, (B, *E)). Returns (R, B, *E):
  at each radius r of `radii` the selected answer where its probability is shown > τ = Φ(r/σ) at
  family-wise error α over the image's elements, ABSTAIN elsewhere (and outside `valid`)."""
  select_counts, counts = np.asarray(select_counts), np.asarray(counts)
  answer = select_counts.argmax(axis=-1)
  n = counts.sum(axis=-1)
  n_a = np.take_along_axis(counts, answer[..., None], axis=-1)[..., 0]
  b = answer.shape[0]
  flat = lambda a: a.reshape(b, -1)
  ok = None if valid is None else flat(np.asarray(valid, bool))
  out = []
  for r in np.atleast_1d(np.asarray(radii, np.float64)):
    tau = special.ndtr(r / sigma)
    pvalues = stats.binom.sf(n_a - 1, n, tau)  # P(Binom(n, τ) ≥ n_A)
    keep = rejections(flat(pvalues), alpha, correction, ok).reshape(answer.shape)
    out.append(np.where(keep, answer, ABSTAIN))
  return np.stack(out)


def order_statistic_ranks(n: int, sigma: float, radius: float,
                          alpha: float) -> tuple[int | None, int | None]:
  """1-based ranks (k̲, k̄) of the order statistics that bound, each with confidence 1 − α, the
  Φ(−r/σ) percentile from below and the Φ(r/σ) percentile from above, from n samples; None
  where n samples cannot (the bound is then ∓∞)."""
  p_lo, p_hi = special.ndtr(-radius / sigma), special.ndtr(radius / sigma)
  # Upper: the smallest k with P(Binom(n, p_hi) ≤ k − 1) ≥ 1 − α.
  k_hi = int(stats.binom.ppf(1 - alpha, n, p_hi)) + 1
  # Lower: the largest k with P(Binom(n, p_lo) ≤ k − 1) ≤ α.
  j = int(stats.binom.ppf(alpha, n, p_lo))
  if stats.binom.cdf(j, n, p_lo) > alpha:
    j -= 1
  k_lo = j + 1
  return (k_lo if k_lo >= 1 else None), (k_hi if k_hi <= n else None)


def median_bounds(samples: np.ndarray, sigma: float, radius: float,
                  alpha: float) -> tuple[np.ndarray, np.ndarray]:
  """Chiang et al.'s median-smoothing bounds from `samples` (n, ...) of real answers: under any
  perturbation of L2 norm ≤ `radius`, the smoothed median lies in [lower, upper], each bound
  holding with probability ≥ 1 − α (±∞ where n is too small for that radius)."""
  samples = np.sort(np.asarray(samples, np.float64), axis=0)
  k_lo, k_hi = order_statistic_ranks(samples.shape[0], sigma, radius, alpha)
  lower = samples[k_lo - 1] if k_lo else np.full(samples.shape[1:], -np.inf)
  upper = samples[k_hi - 1] if k_hi else np.full(samples.shape[1:], np.inf)
  return lower, upper


def median(samples: np.ndarray) -> np.ndarray:
  """The smoothed answer of median smoothing: the sample median over the first axis."""
  return np.median(np.asarray(samples, np.float64), axis=0)


# --- Sampling (JAX, jitted, on the mesh) -------------------------------------------------------

def image_keys(seed: int, ids: jax.Array, stream: int = 0) -> jax.Array:
  """One key per image, from the seed, the image's id and a `stream` (selection, estimation,
  attack...): the same image draws the same noise in any batch, on any number of devices."""
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), stream))(
      jnp.asarray(ids, jnp.uint32))


def noisy_copies(keys: jax.Array, image: jax.Array, sigma: float, start, count: int) -> jax.Array:
  """`count` noisy copies of each image, (count, B, ...): copy j of image i (j counted from
  `start`) is image_i + σ·N(0, I) drawn from fold_in(keys[i], j)."""
  def one(j):
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, j), image.shape[1:],
                                                 image.dtype))(keys)
    return image + sigma * noise
  return jax.vmap(one)(start + jnp.arange(count))
