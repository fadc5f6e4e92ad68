"""Axis-aligned boxes: overlaps, box losses, NMS and the detection metrics (mAP).

Axis-aligned boxes (x1, y1, x2, y2) in continuous pixels: overlaps, box losses, NMS, and the
detection metrics.

The overlaps and NMS are JAX (jittable, static shapes, batched by `vmap`); the metrics are NumPy
on the host: `average_iou` (each ground-truth box's best IoU among the predictions of its class,
unmatched = 0, averaged over boxes), `matched_box_iou` (one-to-one, as the AMAT authors' code
matches) and COCO-style `average_precision`
(greedy matching by score, 101-point interpolated precision, IoU thresholds 0.50:0.05:0.95),
which the tests check against pycocotools.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def area(b, xp=jnp):
  return xp.maximum(b[..., 2] - b[..., 0], 0) * xp.maximum(b[..., 3] - b[..., 1], 0)


def _intersection(a, b, xp=jnp):
  w = xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0])
  h = xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1])
  return xp.maximum(w, 0) * xp.maximum(h, 0)


def iou(a, b, eps: float = 1e-9, xp=jnp):
  """Element-wise IoU of broadcastable (..., 4) boxes; `xp=np` computes it with NumPy on the
  host (the metrics), in the same float32 operations."""
  inter = _intersection(a, b, xp)
  return inter / (area(a, xp) + area(b, xp) - inter + eps)


def pairwise_iou(a, b, xp=jnp):
  """(N, M) IoU of (N, 4) and (M, 4) boxes."""
  return iou(a[:, None, :], b[None, :, :], xp=xp)


def giou(a, b, eps: float = 1e-9):
  """Generalised IoU (Rezatofighi et al. 2019): IoU − (enclosing − union) / enclosing."""
  inter = _intersection(a, b)
  union = area(a) + area(b) - inter + eps
  enclosing = area(jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                                    jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1)) + eps
  return inter / union - (enclosing - union) / enclosing


def ciou(a, b, eps: float = 1e-9):
  """Complete IoU (Zheng et al. 2020): IoU − ρ²/c² − α·v, with ρ the centre distance, c the
  enclosing box's diagonal and v the aspect-ratio consistency term (α without gradient)."""
  inter = _intersection(a, b)
  union = area(a) + area(b) - inter + eps
  overlap = inter / union
  lo, hi = jnp.minimum(a[..., :2], b[..., :2]), jnp.maximum(a[..., 2:], b[..., 2:])
  c2 = jnp.sum((hi - lo) ** 2, axis=-1) + eps
  rho2 = jnp.sum(((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) ** 2, axis=-1) / 4
  wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1] + eps
  wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1] + eps
  v = (4 / math.pi ** 2) * (jnp.arctan(wb / hb) - jnp.arctan(wa / ha)) ** 2
  alpha = jax.lax.stop_gradient(v / (v - overlap + 1 + eps))
  return overlap - rho2 / c2 - alpha * v


def ltrb_to_box(points, distances):
  """Boxes (..., 4) x1 y1 x2 y2 from anchor points (..., 2) (x, y) and their distances (..., 4)
  to the box's left, top, right and bottom edges (the anchor-free detector's box encoding)."""
  return jnp.concatenate([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def box_to_ltrb(points, boxes):
  """The inverse of `ltrb_to_box`: distances (..., 4) from points (..., 2) to the box edges
  (negative where the point lies outside the box)."""
  return jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)


def nms(boxes, scores, labels, *, iou_threshold: float = 0.5, score_threshold: float = 0.0,
        max_detections: int = 100):
  """Class-wise greedy non-maximum suppression on static shapes (jittable; `vmap` it over a
  batch). boxes (K, 4), scores (K,), labels (K,) → (indices (max_detections,) into the K boxes,
  keep mask (max_detections,)), in decreasing score. A box is dropped when a kept box of the same
  label overlaps it by more than `iou_threshold`, or when its score is ≤ `score_threshold`."""
  k = boxes.shape[0]
  order = jnp.argsort(-scores)
  b, s, l = boxes[order], scores[order], labels[order]
  overlap = pairwise_iou(b, b) * (l[:, None] == l[None, :])
  alive0 = s > score_threshold

  def body(i, alive):
    suppress = (overlap[i] > iou_threshold) & (jnp.arange(k) > i) & alive[i]
    return alive & ~suppress

  alive = jax.lax.fori_loop(0, k, body, alive0)
  # Kept boxes first (stable, so still by score), then the rest.
  rank = jnp.argsort(~alive, stable=True)[:max_detections]
  return order[rank], alive[rank]


# --------------------------------------------------------------------------------------------
# Metrics (NumPy, host side).


def _np_pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  # NumPy float32, as the jitted overlaps compute it: eager jnp would compile its operations
  # anew for every image's box counts.
  return pairwise_iou(np.asarray(a, np.float32).reshape(-1, 4),
                      np.asarray(b, np.float32).reshape(-1, 4), xp=np).astype(np.float64)


def average_iou(pred_boxes, pred_labels, pred_valid, gt_boxes, gt_labels, gt_valid) -> np.ndarray:
  """Per image, the mean over its valid ground-truth boxes of the best IoU among the valid
  predictions of the same class (0 when there is none): (N,). Images without ground truth get
  NaN. Arrays: boxes (N, K, 4), labels (N, K), valid (N, K) for predictions and ground truth."""
  out = np.full(len(gt_boxes), np.nan)
  for n in range(len(gt_boxes)):
    g = np.asarray(gt_valid[n], bool)
    if not g.any():
      continue
    p = np.asarray(pred_valid[n], bool)
    overlap = _np_pairwise_iou(np.asarray(gt_boxes[n])[g], np.asarray(pred_boxes[n])[p])
    same = np.asarray(gt_labels[n])[g][:, None] == np.asarray(pred_labels[n])[p][None, :]
    best = np.where(same, overlap, 0.0).max(axis=1, initial=0.0)
    out[n] = best.mean()
  return out


def matched_box_iou(pred_boxes, pred_scores, pred_labels, pred_valid, gt_boxes, gt_labels,
                    gt_valid) -> np.ndarray:
  """Each ground-truth box's IoU with the one detection matched to it, one to one, as the AMAT
  authors' YOLOv5 evaluation matches them (SarielMa/amat_conf, yolov5/evaluate_adv_avIOU.py,
  `get_sample_iou`): every valid detection goes to the ground-truth box of its class it overlaps
  most (ties: the first box); a box claimed by several detections keeps the highest-scoring one;
  a box no detection claimed scores 0. An image without any valid detection is skipped, as their
  loop skips it: its row is NaN, like the slots of invalid ground truth. Returns (N, M).

  Their average IoU is the mean of all non-NaN entries (pooled over boxes, not over images).
  Unlike `average_iou`, a detection serves one box only: one box covering two cells scores 0.5
  on average (its overlap with one cell, 0 for the other), where `average_iou` gives each cell
  its best overlap."""
  gt_valid = np.asarray(gt_valid, bool)
  out = np.full(gt_valid.shape, np.nan)
  for n in range(len(gt_boxes)):
    g = np.flatnonzero(gt_valid[n])
    p = np.flatnonzero(np.asarray(pred_valid[n], bool))
    if not p.size:
      continue
    out[n, g] = 0.0
    if not g.size:
      continue
    overlap = _np_pairwise_iou(np.asarray(pred_boxes[n])[p], np.asarray(gt_boxes[n])[g])
    same = np.asarray(pred_labels[n])[p][:, None] == np.asarray(gt_labels[n])[g][None, :]
    overlap = np.where(same, overlap, -1.0)                      # (detections, boxes)
    claimants = np.flatnonzero(same.any(axis=1))
    if not claimants.size:
      continue
    claimed = overlap[claimants].argmax(axis=1)                  # each one's box (ties: first)
    # Highest score first, the earlier detection among equal scores: each box's first entry in
    # this order is the claimant it keeps.
    scores = np.asarray(pred_scores[n], np.float64)[p][claimants]
    order = np.lexsort((claimants, -scores))
    box, first = np.unique(claimed[order], return_index=True)
    out[n, g[box]] = overlap[claimants[order][first], box]
  return out


def average_precision(pred_boxes, pred_scores, pred_labels, pred_valid, gt_boxes, gt_labels,
                      gt_valid, num_classes: int,
                      iou_thresholds=COCO_IOU_THRESHOLDS) -> np.ndarray:
  """COCO-style AP per (IoU threshold, class): (T, C), NaN for a class without ground truth.
  Per image and class, detections in decreasing score take the unmatched ground-truth box of
  highest IoU ≥ the threshold; precision over all images is made monotone and read at 101
  recall points (pycocotools' `bbox` evaluation, area 'all', no crowd boxes)."""
  thresholds = np.asarray(iou_thresholds, np.float64)
  ap = np.full((len(thresholds), num_classes), np.nan)
  for c in range(num_classes):
    scores, hits, npos = [], [], 0
    for n in range(len(gt_boxes)):
      g = np.asarray(gt_valid[n], bool) & (np.asarray(gt_labels[n]) == c)
      p = np.asarray(pred_valid[n], bool) & (np.asarray(pred_labels[n]) == c)
      npos += int(g.sum())
      if not p.any():
        continue
      s = np.asarray(pred_scores[n], np.float64)[p]
      order = np.argsort(-s, kind='mergesort')
      overlap = _np_pairwise_iou(np.asarray(pred_boxes[n])[p][order], np.asarray(gt_boxes[n])[g])
      hit = np.zeros((len(thresholds), len(order)), bool)
      for t, thr in enumerate(thresholds):
        taken = np.zeros(overlap.shape[1], bool)
        for d in range(len(order)):
          cand = np.where(taken, -1.0, overlap[d])
          if cand.size and cand.max() >= thr:
            j = int(np.argmax(cand))
            taken[j], hit[t, d] = True, True
      scores.append(s[order])
      hits.append(hit)
    if npos == 0:
      continue
    if not scores:
      ap[:, c] = 0.0
      continue
    s = np.concatenate(scores)
    order = np.argsort(-s, kind='mergesort')
    hit = np.concatenate(hits, axis=1)[:, order]
    tp, fp = np.cumsum(hit, axis=1), np.cumsum(~hit, axis=1)
    for t in range(len(thresholds)):
      recall = tp[t] / npos
      precision = tp[t] / np.maximum(tp[t] + fp[t], np.finfo(np.float64).eps)
      precision = np.maximum.accumulate(precision[::-1])[::-1]
      idx = np.searchsorted(recall, RECALL_POINTS, side='left')
      ap[t, c] = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)],
                          0.0).mean()
  return ap
