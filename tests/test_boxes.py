"""Box overlaps, box losses, NMS and the detection metrics (robust_med/boxes.py)."""

from __future__ import annotations

import contextlib
import io

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import boxes as bx

A, B = jnp.array([0., 0., 2., 2.]), jnp.array([1., 1., 3., 3.])


def test_iou_giou_ciou_hand_worked():
  # Intersection 1, union 7; enclosing box 3×3 = 9; centres (1, 1) and (2, 2): ρ² = 2, c² = 18.
  assert float(bx.iou(A, B)) == pytest.approx(1 / 7)
  assert float(bx.giou(A, B)) == pytest.approx(1 / 7 - 2 / 9)
  assert float(bx.ciou(A, B)) == pytest.approx(1 / 7 - 2 / 18)  # Same aspect: v = 0.
  # A 2×1 box against a 1×1 box with the same centre: IoU 1/2, ρ = 0,
  # v = 4/π² (atan 1 − atan 2)², α = v / (v − IoU + 1).
  wide, square = jnp.array([0., 0.5, 2., 1.5]), jnp.array([0.5, 0.5, 1.5, 1.5])
  v = 4 / np.pi ** 2 * (np.arctan(1.0) - np.arctan(2.0)) ** 2
  assert float(bx.ciou(square, wide)) == pytest.approx(0.5 - v / (v + 0.5) * v, rel=1e-5)
  assert float(bx.iou(A, A)) == pytest.approx(1.0) and float(bx.ciou(A, A)) == pytest.approx(1.0)
  far = jnp.array([10., 10., 12., 12.])
  assert float(bx.iou(A, far)) == 0.0 and float(bx.giou(A, far)) < -0.9
  np.testing.assert_allclose(bx.pairwise_iou(jnp.stack([A, B]), jnp.stack([B, far])),
                             [[1 / 7, 0], [1, 0]], atol=1e-6)


def test_ciou_loss_has_finite_gradients_and_pulls_boxes_together():
  g = jax.grad(lambda b: 1 - bx.ciou(b, B))(A)
  assert np.isfinite(g).all() and float(g[2]) < 0 and float(g[3]) < 0  # Grow towards B.


def test_nms_is_class_wise_and_static():
  boxes = jnp.array([[0, 0, 10, 10], [1, 1, 11, 11], [1, 1, 11, 11], [20, 20, 30, 30],
                     [0, 0, 10, 10]], jnp.float32)
  scores = jnp.array([0.9, 0.8, 0.7, 0.6, 0.05])
  labels = jnp.array([0, 0, 1, 0, 2])
  # B overlaps A (IoU 81/119 > 0.5, same class): suppressed; C is another class; E is below the
  # score threshold.
  idx, keep = jax.jit(lambda *a: bx.nms(*a, iou_threshold=0.5, score_threshold=0.1,
                                        max_detections=4))(boxes, scores, labels)
  assert idx.shape == (4,) and keep.tolist() == [True, True, True, False]
  assert idx[:3].tolist() == [0, 2, 3]
  # At a looser threshold B survives.
  idx, keep = bx.nms(boxes, scores, labels, iou_threshold=0.7, max_detections=5)
  assert idx[keep].tolist() == [0, 1, 2, 3, 4]
  # Batched with vmap.
  idx, keep = jax.vmap(lambda b, s, l: bx.nms(b, s, l, max_detections=3))(
      jnp.stack([boxes, boxes]), jnp.stack([scores, scores[::-1]]), jnp.stack([labels, labels]))
  assert idx.shape == keep.shape == (2, 3)


def test_average_iou_by_hand():
  gt = np.array([[[0, 0, 2, 2], [10, 10, 12, 12], [0, 0, 0, 0]]], np.float32)
  gt_labels, gt_valid = np.array([[0, 1, 0]]), np.array([[True, True, False]])
  pred = np.array([[[1, 1, 3, 3], [0, 0, 2, 2], [10, 10, 12, 13]]], np.float32)
  # Box 0 (class 0): best same-class prediction is pred 0 (1/7); pred 1 is class 1.
  # Box 1 (class 1): pred 1 does not overlap it, pred 2 (class 1) covers it: IoU 4/6.
  pred_labels, pred_valid = np.array([[0, 1, 1]]), np.array([[True, True, True]])
  got = bx.average_iou(pred, pred_labels, pred_valid, gt, gt_labels, gt_valid)
  np.testing.assert_allclose(got, [(1 / 7 + 4 / 6) / 2], rtol=1e-6)
  # No valid predictions: 0; no ground truth: NaN.
  assert bx.average_iou(pred, pred_labels, ~pred_valid, gt, gt_labels, gt_valid)[0] == 0.0
  none = np.zeros_like(gt_valid)
  assert np.isnan(bx.average_iou(pred, pred_labels, pred_valid, gt, gt_labels, none)[0])


def test_matched_box_iou_is_one_to_one_as_the_authors_match():
  """One detection serves one box (SarielMa/amat_conf's get_sample_iou), by hand."""
  v = np.array([[True, True]])
  # Two cells annotated on the same spot and one perfect box: average_iou gives each cell its best
  # overlap (1.0 on average); one to one, the box serves one cell: (1 + 0) / 2 = 0.5.
  cells = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], np.float32)
  box, label, score = np.array([[[0, 0, 10, 10]]], np.float32), np.array([[0]]), np.array([[0.9]])
  one = np.array([[True]])
  assert bx.average_iou(box, label, one, cells, np.array([[0, 0]]), v)[0] == pytest.approx(1.0)
  got = bx.matched_box_iou(box, score, label, one, cells, np.array([[0, 0]]), v)
  np.testing.assert_allclose(got, [[1.0, 0.0]])
  assert np.nanmean(got) == pytest.approx(0.5)
  # Two adjacent cells and one box over both: IoU 1/2 with each; one to one, 0.5 and 0.
  cells = np.array([[[0, 0, 10, 10], [10, 0, 20, 10]]], np.float32)
  box = np.array([[[0, 0, 20, 10]]], np.float32)
  np.testing.assert_allclose(bx.matched_box_iou(box, score, label, one, cells,
                                                np.array([[0, 0]]), v), [[0.5, 0.0]])
  # A box claimed by two detections keeps the higher-scoring one (IoU 1/2), not the better one.
  cell = np.array([[[0, 0, 10, 10], [0, 0, 0, 0]]], np.float32)
  dets = np.array([[[0, 0, 10, 5], [0, 0, 10, 10], [30, 30, 40, 40]]], np.float32)
  scores, labels = np.array([[0.9, 0.5, 0.8]]), np.array([[0, 0, 1]])
  valid, gt_valid = np.array([[True, True, True]]), np.array([[True, False]])
  got = bx.matched_box_iou(dets, scores, labels, valid, cell, np.array([[0, 0]]), gt_valid)
  np.testing.assert_allclose(got[0, 0], 0.5)
  assert np.isnan(got[0, 1])  # An invalid ground-truth slot.
  # Swapping the scores gives the box the perfect detection.
  got = bx.matched_box_iou(dets, scores[:, [1, 0, 2]], labels, valid, cell, np.array([[0, 0]]),
                           gt_valid)
  assert got[0, 0] == pytest.approx(1.0)
  # Only other-class detections: the box scores 0. No valid detection: the image is skipped (NaN).
  got = bx.matched_box_iou(dets, scores, np.array([[1, 1, 1]]), valid, cell, np.array([[0, 0]]),
                           gt_valid)
  assert got[0, 0] == 0.0
  got = bx.matched_box_iou(dets, scores, labels, ~valid, cell, np.array([[0, 0]]), gt_valid)
  assert np.isnan(got).all()


def fixture_detections(seed=0, images=8, classes=3, per_image=6, extra=4):
  rng = np.random.default_rng(seed)
  k = per_image + extra
  gt = np.zeros((images, per_image, 4), np.float32)
  xy = rng.uniform(0, 80, (images, per_image, 2))
  wh = rng.uniform(8, 30, (images, per_image, 2))
  gt[..., :2], gt[..., 2:] = xy, xy + wh
  gt_labels = rng.integers(0, classes, (images, per_image))
  gt_valid = rng.uniform(size=(images, per_image)) < 0.8
  pred = np.zeros((images, k, 4), np.float32)
  pred[:, :per_image] = gt + rng.normal(0, 3, gt.shape)  # Jittered matches ...
  xy = rng.uniform(0, 80, (images, extra, 2))
  pred[:, per_image:, :2], pred[:, per_image:, 2:] = xy, xy + rng.uniform(8, 30, (images, extra, 2))
  pred[..., 2:] = np.maximum(pred[..., 2:], pred[..., :2] + 1)
  pred_labels = np.concatenate([np.where(rng.uniform(size=gt_labels.shape) < 0.85, gt_labels,
                                         rng.integers(0, classes, gt_labels.shape)),
                                rng.integers(0, classes, (images, extra))], axis=1)
  pred_scores = rng.permutation(images * k).reshape(images, k) / (images * k) + 0.001
  pred_valid = rng.uniform(size=(images, k)) < 0.9
  return pred, pred_scores, pred_labels, pred_valid, gt, gt_labels, gt_valid


def pycocotools_ap(pred, pred_scores, pred_labels, pred_valid, gt, gt_labels, gt_valid, classes):
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  def xywh(b):
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

  anns = [{'id': len(gt[0]) * n + j + 1, 'image_id': n, 'category_id': int(gt_labels[n, j]),
           'bbox': xywh(gt[n, j]), 'area': float(np.prod(gt[n, j, 2:] - gt[n, j, :2])),
           'iscrowd': 0}
          for n in range(len(gt)) for j in range(gt.shape[1]) if gt_valid[n, j]]
  coco = COCO()
  coco.dataset = {'images': [{'id': n} for n in range(len(gt))], 'annotations': anns,
                  'categories': [{'id': c} for c in range(classes)]}
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
    dets = coco.loadRes([{'image_id': n, 'category_id': int(pred_labels[n, j]),
                          'bbox': xywh(pred[n, j]), 'score': float(pred_scores[n, j])}
                         for n in range(len(pred)) for j in range(pred.shape[1])
                         if pred_valid[n, j]])
    ev = COCOeval(coco, dets, 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  precision = ev.eval['precision'][:, :, :, 0, -1]  # (T, R, K), area 'all', maxDets 100.
  per_class = np.where((precision > -1).all(axis=1), precision.mean(axis=1), np.nan)
  return ev.stats[0], ev.stats[1], per_class


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_average_precision_equals_pycocotools(seed):
  det = fixture_detections(seed)
  ours = bx.average_precision(*det, num_classes=3)
  map50_95, map50, per_class = pycocotools_ap(*det, classes=3)
  np.testing.assert_allclose(ours, per_class, atol=1e-4)
  assert np.nanmean(ours) == pytest.approx(map50_95, abs=1e-4)
  assert np.nanmean(ours[0]) == pytest.approx(map50, abs=1e-4)
  assert 0.05 < map50_95 < 0.95  # A fixture that exercises both hits and misses.


def test_average_precision_edge_cases():
  gt = np.array([[[0, 0, 10, 10]]], np.float32)
  ones = np.ones((1, 1), bool)
  perfect = bx.average_precision(gt, np.ones((1, 1)), np.zeros((1, 1), int), ones, gt,
                                 np.zeros((1, 1), int), ones, num_classes=2)
  assert np.allclose(perfect[:, 0], 1.0) and np.isnan(perfect[:, 1]).all()
  missed = bx.average_precision(gt, np.ones((1, 1)), np.zeros((1, 1), int), ~ones, gt,
                                np.zeros((1, 1), int), ones, num_classes=1)
  assert np.allclose(missed, 0.0)


def _matched_reference(pred_boxes, pred_scores, pred_labels, pred_valid, gt_boxes, gt_labels,
                       gt_valid):
  """The authors' matching written as their loop: detections in order, a box keeps a later
  claimant only with a strictly higher score."""
  out = np.full(np.shape(gt_valid), np.nan)
  for n in range(len(gt_boxes)):
    g, p = np.flatnonzero(gt_valid[n]), np.flatnonzero(pred_valid[n])
    if not p.size:
      continue
    out[n, g] = 0.0
    best = {}
    for d in p:
      same = [j for j in g if gt_labels[n][j] == pred_labels[n][d]]
      if not same:
        continue
      ious = [bx.pairwise_iou(pred_boxes[n][d][None], gt_boxes[n][j][None], xp=np)[0, 0]
              for j in same]
      j = same[int(np.argmax(ious))]
      if j not in best or pred_scores[n][d] > best[j][0]:
        best[j] = (pred_scores[n][d], max(ious))
    for j, (_, iou) in best.items():
      out[n, j] = iou
  return out


def test_matched_box_iou_equals_the_authors_loop_on_random_scenes():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n, m, k = 3, 6, 12
    corner = rng.uniform(0, 40, size=(n, m, 2))
    gt = np.concatenate([corner, corner + rng.uniform(4, 15, size=(n, m, 2))], -1)
    jitter = gt[:, rng.integers(0, m, size=k)] + rng.normal(0, 3, size=(n, k, 4))
    det = np.concatenate([np.minimum(jitter[..., :2], jitter[..., 2:]),
                          np.maximum(jitter[..., :2], jitter[..., 2:]) + 1], -1)
    scores = rng.choice([0.2, 0.5, 0.9], size=(n, k))   # ties on purpose
    args = (det.astype(np.float32), scores, rng.integers(0, 2, size=(n, k)),
            rng.uniform(size=(n, k)) < 0.8, gt.astype(np.float32), rng.integers(0, 2, size=(n, m)),
            rng.uniform(size=(n, m)) < 0.8)
    np.testing.assert_allclose(bx.matched_box_iou(*args), _matched_reference(*args), atol=1e-6)
