"""Saliency-to-annotation agreement: how well a saliency map matches a binary lesion mask.

How well a saliency map agrees with a binary annotation mask (e.g. a lesion outlined by a
clinician), per image.

* `iou@k` / `dice@k`: the top-k % region — the ⌈k/100 · H·W⌉ most salient pixels (ties broken in
  raster order, so the region always has that size) — against the mask.
* `pointing`: 1 when the most salient pixel (the first maximum in raster order) lies inside the
  mask, else 0 (Zhang et al. 2016, without tolerance); a flat map (every pixel equal) scores 0.
* `energy`: the energy-based pointing game (Wang et al. 2020, Score-CAM): the fraction of the map's
  total saliency inside the mask (0 for an all-zero map).
* `auc`: the ROC AUC of the saliency values as a per-pixel predictor of the mask (0.5: no better
  than chance; ties averaged).

Every metric is invariant to multiplying a map by a positive factor. Images whose mask is empty
have nothing to point at: `alignment_metrics` leaves them out and counts them.
"""

from __future__ import annotations

import math

import numpy as np

from robust_med.errors import ConfigError
from robust_med.stats import binary_auc

SINGLE_METRICS = ('pointing', 'energy', 'auc')


def check_top_k(top_k) -> tuple[float, ...]:
  """The top-k percentages, each in (0, 100]; one `ConfigError` otherwise."""
  ks = tuple(float(k) for k in (top_k if isinstance(top_k, (list, tuple)) else (top_k,)))
  bad = [k for k in ks if not 0 < k <= 100]
  if not ks or bad:
    raise ConfigError(f'config.interpret.top_k = {ks}: every k must be a percentage in '
                      '(0, 100], e.g. (5, 10, 20).')
  return ks


def metric_names(top_k) -> list[str]:
  """Names of the metrics `image_metrics` returns, in report order."""
  ks = check_top_k(top_k)
  return ([f'iou@{k:g}' for k in ks] + [f'dice@{k:g}' for k in ks] + list(SINGLE_METRICS))


def top_k_region(saliency: np.ndarray, k: float) -> np.ndarray:
  """Boolean map of the ⌈k/100 · pixels⌉ most salient pixels (ties: earlier in raster order)."""
  flat = np.asarray(saliency, np.float64).ravel()
  n = max(1, math.ceil(k / 100 * flat.size - 1e-9))
  order = np.argsort(-flat, kind='stable')
  region = np.zeros(flat.size, bool)
  region[order[:n]] = True
  return region.reshape(np.shape(saliency))


def iou_dice(region: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  region, mask = np.asarray(region, bool), np.asarray(mask, bool)
  inter = float(np.logical_and(region, mask).sum())
  union = float(np.logical_or(region, mask).sum())
  total = float(region.sum() + mask.sum())
  return (inter / union if union else 0.0), (2 * inter / total if total else 0.0)


def pointing_game(saliency: np.ndarray, mask: np.ndarray) -> float:
  s = np.asarray(saliency, np.float64).ravel()
  if s.size == 0 or s.max() == s.min():
    return 0.0
  return float(np.asarray(mask, bool).ravel()[int(np.argmax(s))])


def energy_pointing_game(saliency: np.ndarray, mask: np.ndarray) -> float:
  s = np.clip(np.asarray(saliency, np.float64), 0, None)
  total = s.sum()
  return float(s[np.asarray(mask, bool)].sum() / total) if total > 0 else 0.0


def image_metrics(saliency: np.ndarray, mask: np.ndarray, top_k) -> dict[str, float]:
  """Every alignment metric of one (H, W) map against one non-empty (H, W) mask."""
  out = {}
  ks = check_top_k(top_k)
  pairs = [iou_dice(top_k_region(saliency, k), mask) for k in ks]
  out.update({f'iou@{k:g}': p[0] for k, p in zip(ks, pairs)})
  out.update({f'dice@{k:g}': p[1] for k, p in zip(ks, pairs)})
  out['pointing'] = pointing_game(saliency, mask)
  out['energy'] = energy_pointing_game(saliency, mask)
  out['auc'] = binary_auc(np.asarray(saliency).ravel(), np.asarray(mask, bool).ravel())
  return out


def annotated(masks: np.ndarray) -> np.ndarray:
  """Boolean (N,): which masks have at least one annotated pixel."""
  masks = np.asarray(masks)
  return masks.reshape(len(masks), -1).any(axis=1)


def alignment_metrics(saliency: np.ndarray, masks: np.ndarray, top_k) -> dict[str, np.ndarray]:
  """Per-image metrics (name -> (N,)) of maps (N, H, W) against masks (N, H, W); both must hold
  only images with a non-empty mask (`annotated`)."""
  saliency, masks = np.asarray(saliency), np.asarray(masks)
  if saliency.shape != masks.shape:
    raise ValueError(f'saliency {saliency.shape} and masks {masks.shape} differ in shape')
  rows = [image_metrics(s, m, top_k) for s, m in zip(saliency, masks)]
  return {name: np.array([r[name] for r in rows], np.float64) for name in metric_names(top_k)}


def map_agreement(a: np.ndarray, b: np.ndarray, k: float) -> dict[str, np.ndarray]:
  """How much two sets of maps of the same images agree (e.g. clean vs attacked): per image, the
  Spearman rank correlation of their pixels and the IoU of their top-k % regions."""
  from scipy import stats as scipy_stats
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rho, iou = [], []
  for x, y in zip(a, b):
    if np.ptp(x) == 0 or np.ptp(y) == 0:
      rho.append(float('nan'))
    else:
      rho.append(float(scipy_stats.spearmanr(x.ravel(), y.ravel()).statistic))
    iou.append(iou_dice(top_k_region(x, k), top_k_region(y, k))[0])
  return {'spearman': np.array(rho), f'iou@{k:g}': np.array(iou)}
