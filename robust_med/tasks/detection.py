"""Object-detection head: an anchor-free YOLO-style detector on BCCD or synthetic cells.

Object-detection head: a compact anchor-free YOLO-style detector (`models/yolo.py`) on BCCD blood
cells (or the synthetic detection set), as in the AMAT paper's third task (Ma & Liang §3.3).

Target assignment, per sample inside the jitted step, on static shapes (B, M boxes, A anchor
points), after YOLOv8's task-aligned assigner (read, not copied), with no gradient through it:
* candidates of a ground-truth box: the anchor points inside it and within
  `detection.center_radius` strides of its centre (a box too small to hold one takes the point
  nearest its centre);
* each box takes its `detection.top_k` candidates of highest alignment
  s^α · IoU^β (s: the predicted probability of the box's class, IoU: of the predicted box);
* a point taken by several boxes keeps the one its prediction overlaps most.

Loss terms, each per sample (B,) — AMAT keeps one ξ per term — normalised by the sample's number of
positive points (at least 1), as in YOLOX:
* `box`: `detection.box_weight` × Σ over positives of 1 − CIoU(predicted, assigned box);
* `obj`: Σ over every point of the objectness BCE (target 1 at positives, 0 elsewhere);
* `cls`: Σ over positives of the class BCE (one-hot target).

Post-processing (jitted, outside any gradient path): score = σ(obj) · σ(best class logit), the
`detection.pre_nms` best points, class-wise NMS at `detection.nms_iou` keeping up to
`detection.max_detections` above `detection.map_score_threshold` (0.001, as YOLOv5's val.py).

Metrics (host side, `robust_med.boxes`): `avg_iou` — the average IoU as the AMAT authors' code
computes it (SarielMa/amat_conf, yolov5/evaluate_adv_avIOU.py, `get_sample_iou`): every detection
kept (score ≥ `detection.map_score_threshold`, 0.001 as theirs) claims the same-class box it
overlaps most, a box keeps its highest-scoring claimant (one to one), unclaimed boxes count 0, and
the mean is pooled over the boxes of the images that have a detection (an image without any is
skipped, as their loop skips it); `avg_iou_best` — each ground-truth box's best IoU among the
detections of its class scoring ≥ `detection.score_threshold` (0.25), one detection may serve
several boxes, unmatched = 0, averaged over every box of the split (robust_med's earlier
`avg_iou`: it does not skip images whose detections an attack removed);
COCO-style `map50_95` and `map50` over every detection kept (101-point interpolation, checked
against pycocotools), and the AP@0.5:0.95 of each class. A sample's score for the worst case is its
image's one-to-one average IoU (0 for an image with boxes but no detection, 1 for one without boxes).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_med import boxes as box_lib
from robust_med.data import voc
from robust_med.errors import ConfigError
from robust_med.models.yolo import STRIDES, Detector, anchor_points
from robust_med.ranges import Range
from robust_med.tasks import base


def candidates(points, strides, gt_boxes, gt_valid, radius: float):
  """(M, A) candidate mask of one image: points inside a valid box and within `radius` strides of
  its centre; a valid box with no such point takes the point nearest its centre."""
  px, py = points[None, :, 0], points[None, :, 1]
  x1, y1, x2, y2 = (gt_boxes[:, i, None] for i in range(4))
  inside = (px > x1) & (px < x2) & (py > y1) & (py < y2)
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  reach = radius * strides[None, :]
  near = (jnp.abs(px - cx) < reach) & (jnp.abs(py - cy) < reach)
  cand = inside & near & gt_valid[:, None]
  dist = (px - cx) ** 2 + (py - cy) ** 2
  nearest = jax.nn.one_hot(jnp.argmin(dist, axis=1), points.shape[0], dtype=bool)
  lonely = ~cand.any(axis=1, keepdims=True) & gt_valid[:, None]
  return cand | (nearest & lonely)


def top_indices(values: jax.Array, k: int) -> jax.Array:
  """The indices of the k largest values along the last axis, largest first, ties to the lower
  index: `jax.lax.top_k`'s, by a stable sort. XLA partitions a sort along a sharded batch axis,
  whereas it gathers a vmapped `top_k`'s whole batch onto every device (an all-gather in every
  step on more than one device, which could hang 2 host devices under load)."""
  index = jax.lax.broadcasted_iota(jnp.int32, values.shape, values.ndim - 1)
  _, order = jax.lax.sort((-values, index), dimension=values.ndim - 1, is_stable=True,
                          num_keys=1)
  return order[..., :k]


def assign(pred_boxes, cls_probs, points, strides, gt_boxes, gt_labels, gt_valid, *,
           top_k: int = 10, radius: float = 2.5, alpha: float = 0.5, beta: float = 6.0):
  """Task-aligned assignment of one image (see the module docstring): (positive (A,) bool,
  index (A,) of the assigned ground-truth box). pred_boxes (A, 4), cls_probs (A, C),
  points (A, 2), strides (A,), gt_boxes (M, 4), gt_labels (M,), gt_valid (M,)."""
  cand = candidates(points, strides, gt_boxes, gt_valid, radius)           # (M, A)
  overlap = box_lib.pairwise_iou(gt_boxes, pred_boxes)                    # (M, A)
  score = cls_probs[:, gt_labels].T                                         # (M, A)
  align = score ** alpha * overlap ** beta
  # Candidates first; among equally aligned ones (an untrained model), the nearest to the centre.
  centre = (gt_boxes[:, None, :2] + gt_boxes[:, None, 2:]) / 2
  closeness = 1.0 / (1.0 + jnp.sum((points[None] - centre) ** 2, -1) / strides[None] ** 2)
  ranked = jnp.where(cand, align + 1e-9 * closeness, -1.0)
  k = min(top_k, points.shape[0])
  top = top_indices(ranked, k)                                              # (M, k)
  chosen = jnp.zeros_like(cand).at[jnp.arange(cand.shape[0])[:, None], top].set(True) & cand
  index = jnp.argmax(jnp.where(chosen, overlap, -1.0), axis=0)             # (A,)
  return chosen.any(axis=0), index


def detection_loss_terms(outputs, batch, *, top_k: int, radius: float, alpha: float,
                         beta: float, box_weight: float) -> dict[str, jax.Array]:
  """The three per-sample loss terms (B,) of the module docstring."""
  image_size = batch['image'].shape[1]
  points, strides = (jnp.asarray(a) for a in anchor_points(image_size))
  num_classes = outputs['cls'].shape[-1]
  sg = jax.lax.stop_gradient
  positive, index = jax.vmap(lambda pb, cp, gb, gl, gv: assign(
      pb, cp, points, strides, gb, gl, gv, top_k=top_k, radius=radius, alpha=alpha, beta=beta))(
          sg(outputs['box']), sg(jax.nn.sigmoid(outputs['cls'])), batch['boxes'], batch['labels'],
          batch['valid'])
  take = lambda a: jnp.take_along_axis(a, index[..., None] if a.ndim == 3 else index, axis=1)
  target_box = take(batch['boxes'])                                         # (B, A, 4)
  target_cls = jax.nn.one_hot(take(batch['labels']), num_classes)           # (B, A, C)
  pos = positive.astype(jnp.float32)
  num_pos = jnp.maximum(pos.sum(axis=1), 1.0)
  box = jnp.sum(pos * (1.0 - box_lib.ciou(outputs['box'], target_box)), axis=1)
  obj = jnp.sum(optax.sigmoid_binary_cross_entropy(outputs['obj'], pos), axis=1)
  cls = jnp.sum(pos[..., None] * optax.sigmoid_binary_cross_entropy(outputs['cls'], target_cls),
                axis=(1, 2))
  return {'box': box_weight * box / num_pos, 'obj': obj / num_pos, 'cls': cls / num_pos}


def postprocess(outputs, *, pre_nms: int, nms_iou: float, score_threshold: float,
                max_detections: int) -> dict[str, jax.Array]:
  """Detections of a batch: 'det_box' (B, D, 4), 'det_score' (B, D), 'det_label' (B, D),
  'det_valid' (B, D), best first (see the module docstring)."""
  probs = jax.nn.sigmoid(outputs['obj'])[..., None] * jax.nn.sigmoid(outputs['cls'])
  label = jnp.argmax(probs, axis=-1)
  score = jnp.max(probs, axis=-1)
  k = min(pre_nms, score.shape[1])
  top = top_indices(score, k)                                                # (B, k)
  top_score = jnp.take_along_axis(score, top, axis=1)
  top_box = jnp.take_along_axis(outputs['box'], top[..., None], axis=1)
  top_label = jnp.take_along_axis(label, top, axis=1)
  d = min(max_detections, k)
  keep, valid = jax.vmap(lambda b, s, l: box_lib.nms(
      b, s, l, iou_threshold=nms_iou, score_threshold=score_threshold, max_detections=d))(
          top_box, top_score, top_label)
  gather = lambda a: jnp.take_along_axis(a, keep[..., None] if a.ndim == 3 else keep, axis=1)
  return {'det_box': gather(top_box), 'det_score': jnp.where(valid, gather(top_score), 0.0),
          'det_label': gather(top_label), 'det_valid': valid}


def detection_metrics(stats: Mapping[str, np.ndarray], class_names: tuple[str, ...],
                      score_threshold: float) -> dict[str, float]:
  """avg_iou (the AMAT authors' one-to-one average IoU over every detection kept), map50_95,
  map50 and the AP@0.5:0.95 of each class (over every detection kept), and avg_iou_best (over
  every ground-truth box, its best IoU with detections scoring ≥ `score_threshold`)."""
  gt = (stats['gt_box'], stats['gt_label'], stats['gt_valid'])
  confident = stats['det_valid'] & (stats['det_score'] >= score_threshold)
  per_image = box_lib.average_iou(stats['det_box'], stats['det_label'], confident, *gt)
  counts = np.asarray(stats['gt_valid']).sum(axis=1)
  has = counts > 0
  # The AMAT authors' average IoU (boxes.matched_box_iou): one-to-one, over every detection kept,
  # pooled over the boxes of the images with a detection; 0 when no image has one.
  matched = box_lib.matched_box_iou(stats['det_box'], stats['det_score'], stats['det_label'],
                                    stats['det_valid'], *gt)
  out = {'avg_iou': float(np.nanmean(matched)) if (~np.isnan(matched)).any() else 0.0}
  ap = box_lib.average_precision(stats['det_box'], stats['det_score'], stats['det_label'],
                                 stats['det_valid'], *gt, num_classes=len(class_names))
  with np.errstate(invalid='ignore'):
    present = ~np.isnan(ap[0])
    out.update(map50_95=float(ap[:, present].mean()) if present.any() else 0.0,
               map50=float(ap[0, present].mean()) if present.any() else 0.0)
  for c, name in enumerate(class_names):
    if present[c]:
      out[f'ap50_95/{name}'] = float(ap[:, c].mean())
  out['avg_iou_best'] = float(np.sum(per_image[has] * counts[has]) / max(counts.sum(), 1))
  out['detections_per_image'] = float(confident.sum(axis=1).mean())
  return out


class Task(base.Task):
  """Object detection with an anchor-free YOLO-style detector (BCCD or the synthetic set)."""

  name = 'detection'
  primary_metric = 'avg_iou'
  higher_is_better = True
  sample_score_name = "the image's average IoU"
  sample_metric_name = 'per-image one-to-one average IoU (0 when every box is missed)'
  sample_metric_floor = 0.0
  loss_term_names = ('box', 'obj', 'cls')
  # A detector that fires everywhere keeps a fair average IoU without looking at the image (a
  # flood of confident boxes overlaps every cell somewhere), so the huge-budget masking check
  # drives mAP@0.5:0.95, whose useless-model value is 0, instead.
  floor_metric = 'map50_95'

  @classmethod
  def default_config(cls) -> dict[str, dict[str, Any]]:
    return {
        'data': {
            'image_size': 320,            # letterbox square side (the authors' train_AMAT.py: 320)
            'max_boxes': 32,              # static boxes per image (BCCD has up to 30)
            'class_names': voc.BCCD_CLASSES,  # VOC class names, in label order
        },
        'detection': {
            'top_k': 10,                  # points assigned per ground-truth box
            'center_radius': 2.5,         # candidates within this many strides of a box centre
            'align_alpha': 0.5,           # alignment s^α · IoU^β (YOLOv8: 0.5, 6)
            'align_beta': 6.0,
            'box_weight': 5.0,            # weight of the CIoU term (YOLOX: 5)
            'pre_nms': 300,               # best points entering NMS
            'nms_iou': 0.6,               # class-wise NMS IoU (YOLOv5 val.py: 0.6)
            'max_detections': 100,        # static detections per image after NMS
            'map_score_threshold': 0.001,  # detections kept for mAP (YOLOv5 val.py: 0.001)
            'score_threshold': 0.25,      # detections counted by avg_iou_best and drawn
        },
    }

  @classmethod
  def config_ranges(cls) -> dict[str, Range]:
    return {'data.image_size': Range(STRIDES[-1]), 'data.max_boxes': Range(1),
            'model.depth': Range(0, note='bottlenecks per CSP block; 0 = none'),
            'detection.top_k': Range(1), 'detection.pre_nms': Range(1),
            'detection.max_detections': Range(1),
            **{f'detection.{k}': Range(0, 1, open_hi=True)
               for k in ('nms_iou', 'map_score_threshold', 'score_threshold')},
            **{f'detection.{k}': Range(0, open_lo=True)
               for k in ('center_radius', 'box_weight', 'align_alpha', 'align_beta')}}

  @classmethod
  def check_config(cls, config) -> None:
    size = config.data.image_size
    if not isinstance(size, int) or size < STRIDES[-1] or size % STRIDES[-1]:
      raise ConfigError(f'config.data.image_size = {size!r} must be a multiple of '
                        f'{STRIDES[-1]} (the detector\'s coarsest stride), e.g. 320.')
    if config.data.tune_fraction:
      raise ConfigError(f'config.data.tune_fraction = {config.data.tune_fraction}: the detection '
                        'head reads its splits from the VOC split files; add a '
                        'ImageSets/Main/tune.txt and pass --config.data.eval_split=tune instead.')
    if not config.data.class_names:
      raise ConfigError('config.data.class_names is empty: list the VOC class names in label '
                        "order, e.g. ('RBC', 'WBC', 'Platelets').")

  def splits(self) -> tuple[str, ...]:
    return voc.split_names(self.config.data)

  def load_split(self, split: str):
    arrays, info = voc.load_split(self.config.data, split)
    self.class_names = info.class_names
    return arrays, info

  def data_signature(self, info) -> dict:
    return {'channels': int(info.channels), 'class_names': list(info.class_names)}

  def build_model(self, info) -> Detector:
    self.class_names = tuple(info.class_names)
    m = self.config.model
    return Detector(num_classes=info.num_classes, width=m.base_width, depth=m.depth)

  def loss_terms(self, outputs, batch):
    d = self.config.detection
    return detection_loss_terms(outputs, batch, top_k=d.top_k, radius=d.center_radius,
                                alpha=d.align_alpha, beta=d.align_beta, box_weight=d.box_weight)

  def move_targets(self, batch, warp):
    """Boxes become the enclosing boxes of their warped outlines, clipped to the image; a box
    pushed out of the image (no area left) is no longer valid."""
    from robust_med import augment
    h, w = batch['image'].shape[1:3]
    boxes = augment.warp_boxes(warp, batch['boxes'], h, w)
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    valid = batch['valid'] & (area > 1.0)
    return {**batch, 'boxes': jnp.where(valid[..., None], boxes, batch['boxes']), 'valid': valid}

  def detect(self, outputs) -> dict[str, jax.Array]:
    d = self.config.detection
    return postprocess(outputs, pre_nms=d.pre_nms, nms_iou=d.nms_iou,
                       score_threshold=d.map_score_threshold, max_detections=d.max_detections)

  def eval_stats(self, outputs, batch):
    return {**self.detect(outputs), 'gt_box': batch['boxes'], 'gt_label': batch['labels'],
            'gt_valid': batch['valid']}

  def _class_names(self) -> tuple[str, ...]:
    return tuple(getattr(self, 'class_names', ()) or self.config.data.class_names)

  def summarize(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    return detection_metrics(stats, self._class_names(), self.config.detection.score_threshold)

  def sample_scores(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each image's one-to-one average IoU (`avg_iou`'s matching): 0 for an image with boxes but
    no detection (where `avg_iou` skips the image, the worst case counts it as missed), 1 for an
    image without boxes (nothing to miss)."""
    gt_valid = np.asarray(stats['gt_valid'], bool)
    matched = box_lib.matched_box_iou(stats['det_box'], stats['det_score'], stats['det_label'],
                                      stats['det_valid'], stats['gt_box'], stats['gt_label'],
                                      gt_valid)
    sums = np.where(gt_valid, np.nan_to_num(matched, nan=0.0), 0.0).sum(axis=1)
    counts = gt_valid.sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 1.0)

  smoothing = 'median'
  certified_metric_name = (
      "certified per-image best IoU before NMS: for each ground-truth box, the largest IoU lower "
      "bound among anchor points whose smoothed score of the box's class is certified ≥ "
      "detection.score_threshold (0 where none), averaged over the image's boxes (1 for an image "
      "without boxes)")

  def smoothing_answers(self, outputs):
    """Per anchor point (B, A, C + 4): each class's score σ(obj)·σ(cls_c), then the box
    (x1, y1, x2, y2) in pixels: the detector's fixed-size outputs, median-smoothed coordinate by
    coordinate as in Chiang et al. 2020."""
    probs = jax.nn.sigmoid(outputs['obj'])[..., None] * jax.nn.sigmoid(outputs['cls'])
    return jnp.concatenate([probs, outputs['box']], axis=-1)

  def certified_metric(self, certified, arrays):
    """With every class score and box coordinate of every anchor point bounded: an anchor point
    certainly detects class c when its score's lower bound is ≥ `detection.score_threshold`; its
    box then contains the inner box (the bounds' tightest corners) and lies in the outer one, so
    its IoU with a ground-truth box g is at least I(inner, g) / (|g| + |outer| − I(inner, g)).
    Each box of an image takes the best such bound among the anchor points that certainly detect
    its class (`avg_iou_best`'s matching, but before NMS, which the certificate does not cover)."""
    best = self._certified_matches(certified, arrays)[0].max(axis=1)          # (N, M)
    valid = np.asarray(arrays['valid'], bool)
    counts = valid.sum(axis=1)
    return np.where(counts > 0, np.where(valid, best, 0.0).sum(axis=1) / np.maximum(counts, 1),
                    1.0)

  def _certified_matches(self, certified, arrays):
    """(bound (N, A, M): the IoU lower bound of anchor point a against ground-truth box m, 0
    where a does not certainly detect m's class; inner and outer boxes (N, A, 4))."""
    lower = np.asarray(certified['lower'], np.float64)
    upper = np.asarray(certified['upper'], np.float64)
    c = lower.shape[-1] - 4
    fires = lower[..., :c] >= self.config.detection.score_threshold          # (N, A, C)
    lo, hi = lower[..., c:], upper[..., c:]
    inner = np.stack([hi[..., 0], hi[..., 1], lo[..., 2], lo[..., 3]], axis=-1)
    outer = np.stack([lo[..., 0], lo[..., 1], hi[..., 2], hi[..., 3]], axis=-1)
    gt = np.asarray(arrays['boxes'], np.float64)                               # (N, M, 4)
    labels = np.asarray(arrays['labels'], np.int64)
    span = lambda a, b: np.clip(np.minimum(a[..., 2:], b[..., 2:]) -
                                np.maximum(a[..., :2], b[..., :2]), 0, None)
    with np.errstate(invalid='ignore'):
      meet = span(inner[:, :, None], gt[:, None])                               # (N, A, M, 2)
      overlap = np.nan_to_num(meet[..., 0] * meet[..., 1])
      side = np.clip(outer[..., 2:] - outer[..., :2], 0, None)
      outer_area = side[..., 0] * side[..., 1]                                  # (N, A)
      gt_area = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])           # (N, M)
      bound = overlap / (gt_area[:, None] + outer_area[..., None] - overlap)
    bound = np.nan_to_num(bound, nan=0.0, posinf=0.0)
    detects = np.take_along_axis(fires, np.clip(labels, 0, c - 1)[:, None, :], axis=2)
    return np.where(detects, bound, 0.0), inner, outer

  def draw_certified(self, ax, image, certified, item) -> None:
    """Ground-truth boxes in green; for each, the anchor point with the best certified IoU: its
    inner box (solid orange: what its box surely covers) and outer box (dashed: where it surely
    lies), with the bound; a ground-truth box no anchor point certainly detects is red."""
    base.show_image(ax, image)
    one = lambda a: np.asarray(a)[None]
    bound, inner, outer = self._certified_matches(jax.tree.map(one, dict(certified)),
                                                  jax.tree.map(one, dict(item)))
    bound, inner, outer = bound[0], inner[0], outer[0]
    for m in np.flatnonzero(np.asarray(item['valid'], bool)):
      a = int(bound[:, m].argmax())
      if bound[a, m] <= 0:
        _rectangle(ax, item['boxes'][m], 'red')
        continue
      _rectangle(ax, item['boxes'][m], 'lime')
      _rectangle(ax, inner[a], 'orange')
      _rectangle(ax, outer[a], 'orange', linestyle='--')
      ax.text(outer[a][0], outer[a][1], f'{bound[a, m]:.2f}', color='orange', fontsize=4,
              va='bottom')
    h, w = np.asarray(image).shape[:2]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)

  def draw(self, ax, image, outputs, item) -> None:
    """Ground-truth boxes in green, confident detections in red with class and score."""
    base.show_image(ax, image)
    det = jax.tree.map(lambda a: np.asarray(a)[0],
                       self.detect(jax.tree.map(lambda o: jnp.asarray(o)[None], outputs)))
    names = self._class_names()
    for box in np.asarray(item['boxes'])[np.asarray(item['valid'], bool)]:
      _rectangle(ax, box, 'lime')
    keep = det['det_valid'] & (det['det_score'] >= self.config.detection.score_threshold)
    for box, label, score in zip(det['det_box'][keep], det['det_label'][keep],
                                 det['det_score'][keep]):
      _rectangle(ax, box, 'red')
      name = names[label] if label < len(names) else str(label)
      ax.text(box[0], box[1], f'{name} {score:.2f}', color='red', fontsize=4, va='bottom')
    h, w = np.asarray(image).shape[:2]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _rectangle(ax, box, color: str, linestyle: str = '-') -> None:
  import matplotlib.patches as patches  # Drawing only; keeps the module import light.
  x1, y1, x2, y2 = (float(v) for v in box)
  ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=0.6,
                                 linestyle=linestyle))
