"""Statistics for the reports: ROC AUC and paired comparisons of two models with intervals.

Statistics shared by the reports: the ROC AUC of scores for a binary outcome, and the paired
comparison of two models measured on the same samples (Wilcoxon signed-rank and paired t-tests
from scipy, the paired effect size with bootstrap confidence intervals, Holm's correction)."""

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
