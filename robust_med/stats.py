"""Statistics for the reports: ROC AUC and paired comparisons of two models with intervals.

Statistics shared by the reports: the ROC AUC of scores for a binary outcome, and the paired
comparison of two models measured on the same samples (Wilcoxon signed-rank and paired t-tests
from scipy, the paired effect size with bootstrap confidence intervals, Holm's correction).

With several training seeds per model (`compare_seeded`), a model's per-sample values are an
array (seeds, samples): the difference is that of the seed means, its interval a bootstrap over
samples (paired: the same samples for both models) and, independently for each model, over its
seeds; the tests run on the per-sample differences of the seed means. `minimum_detectable`
turns the observed spread of the paired differences into the smallest difference the samples
resolve (the MDE of a two-sided test at power 0.8), and `verdict` writes the one-line claim."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as scipy_stats


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """ROC AUC of `scores` for the boolean `positive` labels (Mann–Whitney U with tied ranks
  averaged); NaN when one of the two outcomes is absent."""
  positive = np.asarray(positive, bool).ravel()
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    return float('nan')
  ranks = scipy_stats.rankdata(np.asarray(scores, np.float64).ravel())
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cohens_dz(diff: np.ndarray, axis: int = -1) -> np.ndarray:
  """Cohen's d_z of paired differences: mean / sample standard deviation (NaN when constant)."""
  diff = np.asarray(diff, np.float64)
  sd = diff.std(axis=axis, ddof=1)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(sd > 0, diff.mean(axis=axis) / np.where(sd > 0, sd, 1.0), np.nan)


def bootstrap_ci(diff: np.ndarray, statistic, *, n_resamples: int, confidence: float,
                 seed: int) -> tuple[float, float]:
  """`confidence` interval of `statistic(diff, axis)` over the paired samples by
  `scipy.stats.bootstrap` (BCa; the percentile method where BCa is undefined, e.g. constant
  differences); (NaN, NaN) for fewer than two samples."""
  diff = np.asarray(diff, np.float64)
  if len(diff) < 2:
    return float('nan'), float('nan')
  for method in ('BCa', 'percentile'):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      res = scipy_stats.bootstrap((diff,), statistic, n_resamples=n_resamples,
                                  confidence_level=confidence, method=method, vectorized=True,
                                  random_state=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isfinite(low) and np.isfinite(high):
      return low, high
  return low, high


def _mean(d, axis=-1):
  return np.mean(d, axis=axis)


def paired_comparison(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10000,
                      confidence: float = 0.95, seed: int = 0) -> dict:
  """Compares paired measurements `b` against `a` (same samples, same order): the means, the mean
  and median of the differences b − a, the two-sided Wilcoxon signed-rank test
  (`scipy.stats.wilcoxon`, zero differences dropped) and paired t-test (`scipy.stats.ttest_rel`),
  and the effect size — the mean difference and Cohen's d_z — each with a bootstrap confidence
  interval. A test that cannot be computed (every difference zero, fewer than two pairs) has
  p-value NaN and says why under 'note'."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f'paired samples must be two 1-D arrays of one length, got {a.shape} and '
                     f'{b.shape}')
  diff = b - a
  n = len(diff)
  out = {'n': int(n), 'mean_a': float(a.mean()) if n else float('nan'),
         'mean_b': float(b.mean()) if n else float('nan'),
         'mean_diff': float(diff.mean()) if n else float('nan'),
         'median_diff': float(np.median(diff)) if n else float('nan'),
         'cohens_dz': float(cohens_dz(diff)) if n > 1 else float('nan')}
  notes = []
  if n < 2:
    notes.append('fewer than two pairs')
  if n >= 2 and np.all(diff == 0):
    notes.append('every difference is zero')
    out.update(wilcoxon_statistic=float('nan'), wilcoxon_p=float('nan'),
               t_statistic=float('nan'), t_p=float('nan'))
  elif n >= 2:
    w = scipy_stats.wilcoxon(b, a)
    t = scipy_stats.ttest_rel(b, a)
    out.update(wilcoxon_statistic=float(w.statistic), wilcoxon_p=float(w.pvalue),
               t_statistic=float(t.statistic), t_p=float(t.pvalue))
  else:
    out.update(wilcoxon_statistic=float('nan'), wilcoxon_p=float('nan'),
               t_statistic=float('nan'), t_p=float('nan'))
  ci = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
  out['mean_diff_ci'] = list(bootstrap_ci(diff, _mean, **ci))
  out['cohens_dz_ci'] = list(bootstrap_ci(diff, cohens_dz, **ci)) if n > 1 and np.std(diff) > 0 \
      else [float('nan'), float('nan')]
  if notes:
    out['note'] = '; '.join(notes)
  return out


def holm(p_values) -> np.ndarray:
  """Holm–Bonferroni adjusted p-values of a family of tests (NaN stays NaN and is not counted)."""
  p = np.asarray(p_values, np.float64)
  out = np.full_like(p, np.nan)
  valid = np.flatnonzero(np.isfinite(p))
  m = len(valid)
  order = valid[np.argsort(p[valid], kind='stable')]
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out


def seed_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the mean of one figure over training seeds and its Student-t interval
  (NaN bounds with fewer than two seeds)."""
  v = np.asarray(values, np.float64)
  mean = float(v.mean()) if len(v) else float('nan')
  if len(v) < 2:
    return mean, float('nan'), float('nan')
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1)
               / np.sqrt(len(v)))
  return mean, mean - half, mean + half


def hierarchical_bootstrap_ci(a: np.ndarray, b: np.ndarray, *, n_resamples: int = 10000,
                              confidence: float = 0.95, seed: int = 0,
                              chunk: int = 500) -> tuple[float, float]:
  """Percentile interval of mean_i(mean_seeds b[:, i] − mean_seeds a[:, i]) for `a` (Sa, N) and
  `b` (Sb, N) measured on the same N samples: each resample draws the samples with replacement
  (the same draw for both models: paired) and, independently, each model's seeds with
  replacement. With one seed each it is the percentile bootstrap of the paired mean difference.
  (NaN, NaN) for fewer than two samples."""
  a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'paired samples must have one length, got {a.shape} and {b.shape}')
  n = a.shape[1]
  if n < 2:
    return float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  out = []
  for start in range(0, n_resamples, chunk):
    r = min(chunk, n_resamples - start)
    images = rng.integers(0, n, (r, n))
    means = []
    for m in (a, b):
      seeds = rng.integers(0, len(m), (r, len(m)))
      # (r, N): each resample's seed mean per sample, then read at the resampled samples.
      per_sample = m[seeds].mean(axis=1)
      means.append(np.take_along_axis(per_sample, images, axis=1).mean(axis=1))
    out.append(means[1] - means[0])
  out = np.concatenate(out)
  tail = (1 - confidence) / 2
  # Differences of means of discrete scores (0/1 per seed, thirds over three seeds) that are
  # exactly 0 come out of floating point as ±2e-16: rounded away, so the interval says 0.
  low, high = np.round(np.quantile(out, [tail, 1 - tail]), 12)
  return float(low), float(high)


def minimum_detectable(diff_sd: float, n: int, *, alpha: float = 0.05,
                       power: float = 0.8) -> float:
  """The smallest mean paired difference that `n` samples with paired-difference standard
  deviation `diff_sd` resolve with probability `power` in a two-sided test at level `alpha`
  (normal approximation: (z_{1−α/2} + z_power) · sd / √n); NaN below two samples."""
  if n < 2 or not np.isfinite(diff_sd):
    return float('nan')
  z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
  return float(z * diff_sd / np.sqrt(n))


def samples_needed(diff_sd: float, difference: float, *, alpha: float = 0.05,
                   power: float = 0.8) -> float:
  """How many samples resolve a mean paired difference `difference` (the inverse of
  `minimum_detectable`); inf for a zero difference."""
  if difference == 0 or not np.isfinite(difference):
    return float('inf')
  z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
  return float(np.ceil((z * diff_sd / abs(difference)) ** 2))


def compare_seeded(a, b, *, n_resamples: int = 10000, confidence: float = 0.95,
                   seed: int = 0) -> dict:
  """`paired_comparison` of model `b` against model `a` from per-sample values of shape
  (seeds, samples) (one seed: shape (samples,)): the tests and effect size on the per-sample
  seed means, the mean difference's interval by `hierarchical_bootstrap_ci` (samples and seeds;
  'samples_ci' keeps the one over the samples alone, of the seed means),
  and the minimum detectable difference (`minimum_detectable`, α = 1 − confidence, power 0.8)
  from the spread of the per-sample differences."""
  a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
  out = paired_comparison(a.mean(axis=0), b.mean(axis=0), n_resamples=n_resamples,
                          confidence=confidence, seed=seed)
  out['seeds'] = [int(len(a)), int(len(b))]
  out['samples_ci'] = out['mean_diff_ci']  # over the samples alone, of the seed means
  out['mean_diff_ci'] = list(hierarchical_bootstrap_ci(a, b, n_resamples=n_resamples,
                                                       confidence=confidence, seed=seed))
  diff = b.mean(axis=0) - a.mean(axis=0)
  out['diff_sd'] = float(diff.std(ddof=1)) if len(diff) > 1 else float('nan')
  out['mde'] = minimum_detectable(out['diff_sd'], len(diff), alpha=1 - confidence)
  out['samples_needed'] = samples_needed(out['diff_sd'], out['mean_diff'], alpha=1 - confidence)
  return out


ZERO_TOLERANCE = 1e-9  # relative: interval bounds closer to 0 than this are 0


def resolved(comparison: dict, p_key: str = 'wilcoxon_p_holm', alpha: float = 0.05) -> bool:
  """A difference is resolved when the (Holm-adjusted) Wilcoxon p-value is below `alpha` and
  the bootstrap interval of the mean difference excludes zero by more than floating-point noise
  (a bound of 2e-16 is a bound of 0: `ZERO_TOLERANCE`)."""
  p = comparison.get(p_key, comparison.get('wilcoxon_p', float('nan')))
  low, high = comparison['mean_diff_ci']
  tol = ZERO_TOLERANCE * max(1.0, abs(low), abs(high))
  return bool(np.isfinite(p) and p < alpha and (low > tol or high < -tol))


def verdict(name_b: str, name_a: str, comparison: dict, *, what: str, unit: str = '',
            higher_is_better: bool = True, alpha: float = 0.05) -> str:
  """One line: 'AMAT − SAT ε=5, worst-case MRE over the grid: −0.44 mm [−1.1, +0.2],
  Holm p = 0.21: not resolved'."""
  p = comparison.get('wilcoxon_p_holm', comparison.get('wilcoxon_p', float('nan')))
  p_name = 'Holm p' if 'wilcoxon_p_holm' in comparison else 'p'
  low, high = comparison['mean_diff_ci']
  unit = f' {unit}' if unit else ''
  text = (f'{name_b} − {name_a}, {what}: {comparison["mean_diff"]:+.3g}{unit} '
          f'[{low:+.3g}, {high:+.3g}], {p_name} = {p:.2g}')
  if resolved(comparison, 'wilcoxon_p_holm' if 'wilcoxon_p_holm' in comparison
              else 'wilcoxon_p', alpha):
    better = (comparison['mean_diff'] > 0) == higher_is_better
    return f'{text}: resolved, {name_b if better else name_a} better'
  return f'{text}: not resolved'
