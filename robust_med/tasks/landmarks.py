"""Landmark-detection head: a Multi-Task U-Net on ISBI 2015 cephalograms or synthetic data.

Landmark-detection head: the Multi-Task U-Net of Yao et al. ("Miss the Point", MICCAI 2020) on
ISBI 2015 cephalograms (or the synthetic landmark set), as in Ma & Liang's AMAT paper (§3.2).

Targets, per landmark, at the model's input resolution (pixel centres at integer coordinates):
* heatmap: a binary disk of radius r px (`landmarks.radius`) around the landmark;
* offset_x, offset_y: (landmark − pixel) / r inside the disk (0 outside).

Loss terms, each per sample (B,) — AMAT keeps one ξ per term:
* `heatmap`: `landmarks.heatmap_weight` × (pixel BCE, or 1 − mean soft Dice over landmarks);
* `offset_x`, `offset_y`: L1 error of the offset maps, averaged over the pixels inside the disks.

Decoding (`landmarks.decoder`), jitted and batched:
* 'vote' (after Yao et al.): every pixel votes at pixel + r·offset, weighted by its heatmap
  probability (with `landmarks.vote_threshold` > 0 only pixels above it vote); the landmark is the
  vote map's argmax, refined to the weighted mean of the votes that fell into that pixel
  (sub-pixel). With no vote at all: as 'argmax'. Yao et al.'s code lets the π r² most probable
  pixels vote unweighted; on the validation split of two 40-epoch STD models (96×80, experiments/
  README.md) weighted voting gave MRE 2.46 mm (Dice) and 8.84 mm (BCE) against 4.14 and 15.6 for
  the top-π r² rule and 2.46 and 28.3 for pixels above probability 0.5.
* 'argmax': the heatmap's most probable pixel plus r·offset there.
Predictions are mapped to full-resolution pixels (`to_full`, per axis) and then to mm (`spacing`).

Metrics: MRE (mm; mean and std over all landmarks of all images), SDR at 2 / 2.5 / 3 / 4 mm (the
fraction of landmarks within that radial error) and the MRE of each landmark. Lower MRE is better;
a sample's score is its negated per-image MRE.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_med import augment
from robust_med.data import ceph
from robust_med.errors import ConfigError
from robust_med.models.unet import MultiTaskUNet, unet_features
from robust_med.ranges import Range
from robust_med.tasks import base

SDR_RADII_MM = (2.0, 2.5, 3.0, 4.0)
HEATMAP_LOSSES = ('dice', 'bce')
DECODERS = ('vote', 'argmax')


def sdr_key(radius_mm: float) -> str:
  """'sdr_2mm', 'sdr_2.5mm', ...: the report's name of the SDR within `radius_mm`."""
  return f'sdr_{radius_mm:g}mm'


pixel_grid = augment.pixel_grid  # (x, y) of the pixel centres, each (H, W).


def encode(landmarks: jax.Array, size: tuple[int, int], radius: float) -> dict[str, jax.Array]:
  """Targets of landmarks (B, L, 2) (x, y) in input pixels: 'disk' (B, H, W, L) in {0, 1},
  'offset_x' and 'offset_y' (B, H, W, L), (landmark − pixel) / radius inside the disk, else 0."""
  x, y = pixel_grid(*size)
  dx = landmarks[:, None, None, :, 0] - x[None, :, :, None]
  dy = landmarks[:, None, None, :, 1] - y[None, :, :, None]
  disk = (dx ** 2 + dy ** 2 <= radius ** 2).astype(jnp.float32)
  return {'disk': disk, 'offset_x': disk * dx / radius, 'offset_y': disk * dy / radius}


def heatmap_bce(logits: jax.Array, disk: jax.Array) -> jax.Array:
  """Per-sample mean pixel binary cross-entropy over all landmarks' heatmaps."""
  bce = optax.sigmoid_binary_cross_entropy(logits, disk)
  return jnp.mean(bce, axis=(1, 2, 3))


def heatmap_dice(logits: jax.Array, disk: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Per-sample 1 − mean over landmarks of the soft Dice of the heatmap probabilities and disks."""
  probs = jax.nn.sigmoid(logits)
  inter = jnp.sum(probs * disk, axis=(1, 2))
  denom = jnp.sum(probs, axis=(1, 2)) + jnp.sum(disk, axis=(1, 2))
  return 1.0 - jnp.mean((2.0 * inter + smooth) / (denom + smooth), axis=-1)


def masked_l1(pred: jax.Array, target: jax.Array, disk: jax.Array) -> jax.Array:
  """Per-sample mean |pred − target| over the pixels inside the disks (0 when there are none)."""
  total = jnp.sum(jnp.abs(pred - target) * disk, axis=(1, 2, 3))
  return total / jnp.maximum(jnp.sum(disk, axis=(1, 2, 3)), 1.0)


def decode_argmax(outputs: Mapping[str, jax.Array], radius: float) -> jax.Array:
  """(B, L, 2) landmarks: the most probable heatmap pixel plus radius × its offset."""
  b, h, w, l = outputs['heatmap'].shape
  flat = lambda a: jnp.moveaxis(a, -1, 1).reshape(b, l, h * w)
  index = jnp.argmax(flat(outputs['heatmap']), axis=-1)
  pick = lambda a: jnp.take_along_axis(flat(a), index[..., None], axis=-1)[..., 0]
  x = (index % w).astype(jnp.float32) + radius * pick(outputs['offset_x'])
  y = (index // w).astype(jnp.float32) + radius * pick(outputs['offset_y'])
  return jnp.stack([x, y], axis=-1)


def decode_vote(outputs: Mapping[str, jax.Array], radius: float,
                threshold: float = 0.0) -> jax.Array:
  """(B, L, 2) landmarks by offset voting (see the module docstring): every pixel (above
  `threshold` in probability, when it is > 0) votes at pixel + r·offset with its heatmap
  probability as the weight."""
  b, h, w, l = outputs['heatmap'].shape
  flat = lambda a: jnp.moveaxis(a, -1, 1).reshape(b, l, h * w)
  x, y = (c.reshape(1, 1, h * w) for c in pixel_grid(h, w))
  vx = x + radius * flat(outputs['offset_x'])
  vy = y + radius * flat(outputs['offset_y'])
  prob = jax.nn.sigmoid(flat(outputs['heatmap']))
  votes = jnp.where(prob > threshold, prob, 0.0) if threshold > 0 else prob
  bx = jnp.clip(jnp.round(vx), 0, w - 1).astype(jnp.int32)
  by = jnp.clip(jnp.round(vy), 0, h - 1).astype(jnp.int32)
  cell = by * w + bx                                                   # (B, L, H·W)
  rows = jnp.arange(l).reshape(l, 1)
  # Per sample (vmapped, not one scatter over B·L rows): XLA then keeps a sharded batch sharded
  # instead of building the whole vote map on every device and summing it across them.
  vote_map = jax.vmap(lambda c, v: jnp.zeros((l, h * w), jnp.float32).at[rows, c].add(v))(
      cell, votes)                                                     # (B, L, H·W)
  winner = jnp.argmax(vote_map, axis=-1)                               # (B, L)
  chosen = votes * (cell == winner[..., None])
  weight = jnp.sum(chosen, axis=-1)
  count = jnp.maximum(weight, 1e-12)
  voted = jnp.stack([jnp.sum(chosen * vx, -1) / count, jnp.sum(chosen * vy, -1) / count], -1)
  return jnp.where((weight > 0)[..., None], voted, decode_argmax(outputs, radius))


def radial_errors_mm(pred: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
  """(B, L) radial errors in mm of predictions (B, L, 2) in input pixels: mapped to full-resolution
  pixels per axis (`to_full`), compared with `landmarks_full`, then scaled per axis by `spacing`."""
  full = pred * batch['to_full'][:, None, :]
  delta_mm = (full - batch['landmarks_full']) * batch['spacing'][:, None, :]
  return jnp.sqrt(jnp.sum(delta_mm ** 2, axis=-1))


def mean_shape_mre_mm(landmarks_full, spacing) -> float:
  """MRE (mm) of predicting each landmark at its mean position over the images: (N, L, 2)
  full-resolution pixels and (N, 2) mm per pixel. The level of a landmark detector that ignores
  its input (the mean is the best such constant up to the median's small gain)."""
  mm = np.asarray(landmarks_full, np.float64) * np.asarray(spacing, np.float64)[:, None, :]
  return float(np.mean(np.linalg.norm(mm - mm.mean(axis=0, keepdims=True), axis=-1)))


def landmark_metrics(errors_mm: np.ndarray, names: tuple[str, ...] = ()) -> dict[str, float]:
  """MRE ± std (mm) over all landmarks of all images, SDR at each radius of SDR_RADII_MM (fraction
  of landmarks within it) and the MRE of each landmark, from radial errors (N, L)."""
  e = np.asarray(errors_mm, np.float64)
  out = {'mre_mm': float(e.mean()), 'mre_std_mm': float(e.std())}
  out.update({sdr_key(r): float(np.mean(e <= r)) for r in SDR_RADII_MM})
  for k in range(e.shape[1]):
    out[f'mre_mm/{names[k] if k < len(names) else f"landmark{k + 1}"}'] = float(e[:, k].mean())
  return out


class Task(base.Task):
  """Landmark detection with heatmaps and offset maps (ISBI 2015 or the synthetic set)."""

  name = 'landmarks'
  primary_metric = 'mre_mm'
  higher_is_better = False
  sample_score_name = 'negated per-image MRE (mm)'
  sample_metric_name = 'per-image MRE (mm)'
  loss_term_names = ('heatmap', 'offset_x', 'offset_y')

  @classmethod
  def default_config(cls) -> dict[str, dict[str, Any]]:
    return {
        'data': {
            'annotation': 'mean',      # landmarks_<annotation>.csv: mean | senior | junior | ...
            'val_from': 'test1',       # 'val' = the first val_count images of this split, 'test'
            'val_count': 50,           # the rest (the AMAT authors' data_loader.py: 50 of Test1 validate)
            'num_landmarks': 19,
        },
        'landmarks': {
            'radius': 10.0,            # disk radius r in input pixels (Yao et al.: 0.05 × 200)
            'heatmap_loss': 'dice',    # 'dice' | 'bce' (Ma & Liang: Dice is far more robust)
            'heatmap_weight': 2.0,     # weight of the heatmap term (Yao et al.'s λ = 2)
            'decoder': 'vote',         # 'vote' | 'argmax'
            'vote_threshold': 0.0,     # > 0: only pixels above this heatmap probability vote
        },
    }

  @classmethod
  def config_ranges(cls) -> dict[str, Range]:
    return {'landmarks.heatmap_loss': HEATMAP_LOSSES, 'landmarks.decoder': DECODERS,
            'data.val_count': Range(0, note='0 = no val/test carved from data.val_from'),
            'data.num_landmarks': Range(1), 'landmarks.radius': Range(0, open_lo=True),
            'landmarks.heatmap_weight': Range(0, open_lo=True),
            'landmarks.vote_threshold': Range(0, 1, open_hi=True,
                                              note='a heatmap probability; 0 = every pixel votes')}

  @classmethod
  def check_config(cls, config) -> None:
    lm = config.landmarks
    size = tuple(config.data.patch_size)
    if 2 * lm.radius >= min(size):
      raise ConfigError(f'config.data.patch_size = {size} is too small for landmark disks of '
                        f'radius {lm.radius:g} px: each side needs more than {2 * lm.radius:g} '
                        'pixels; raise data.patch_size or lower landmarks.radius.')

  def splits(self) -> tuple[str, ...]:
    return ceph.split_names(self.config.data)

  def load_split(self, split: str):
    arrays, info = ceph.load_split(self.config.data, split)
    self.info = info
    # A useless model's MRE (for the masking checks): the best prediction that ignores the image,
    # every image's landmarks at the split's mean positions (mm).
    self._floor = mean_shape_mre_mm(arrays['landmarks_full'], arrays['spacing'])
    return arrays, info

  def data_signature(self, info) -> dict:
    return {'channels': int(info.channels), 'num_landmarks': int(info.num_landmarks),
            'input_size': [int(s) for s in info.input_size]}

  def build_model(self, info) -> MultiTaskUNet:
    m = self.config.model
    self.landmark_names = tuple(info.landmark_names)
    return MultiTaskUNet(num_landmarks=info.num_landmarks,
                         features=unet_features(m.base_width, m.depth, m.max_width))

  def targets(self, outputs, batch) -> dict[str, jax.Array]:
    return encode(batch['landmarks'], outputs['heatmap'].shape[1:3], self.config.landmarks.radius)

  def loss_terms(self, outputs, batch):
    lm = self.config.landmarks
    t = self.targets(outputs, batch)
    heatmap = (heatmap_dice if lm.heatmap_loss == 'dice' else heatmap_bce)(outputs['heatmap'],
                                                                            t['disk'])
    return {'heatmap': lm.heatmap_weight * heatmap,
            'offset_x': masked_l1(outputs['offset_x'], t['offset_x'], t['disk']),
            'offset_y': masked_l1(outputs['offset_y'], t['offset_y'], t['disk'])}

  def move_targets(self, batch, warp):
    """The landmarks (input pixels) follow the image, and so do the full-resolution copies the
    metrics read (landmarks_full = landmarks · to_full): an elastic corruption in shift.json is
    scored against the moved landmarks."""
    moved = augment.warp_points(warp, batch['landmarks'])
    out = {**batch, 'landmarks': moved}
    if 'landmarks_full' in batch and 'to_full' in batch:
      out['landmarks_full'] = moved * batch['to_full'][:, None, :]
    return out

  def decode(self, outputs) -> jax.Array:
    """(B, L, 2) predicted landmarks (x, y) in input pixels."""
    lm = self.config.landmarks
    if lm.decoder == 'argmax':
      return decode_argmax(outputs, lm.radius)
    return decode_vote(outputs, lm.radius, lm.vote_threshold)

  def eval_stats(self, outputs, batch):
    return {'radial_error_mm': radial_errors_mm(self.decode(outputs), batch)}

  def summarize(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    return landmark_metrics(stats['radial_error_mm'], getattr(self, 'landmark_names', ()))

  def sample_scores(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    return -np.asarray(stats['radial_error_mm'], np.float64).mean(axis=1)

  smoothing = 'median'
  certified_metric_name = ("certified per-image MRE (mm): the mean over landmarks of the largest "
                           "radial error the median-smoothed landmark can reach")

  def smoothing_answers(self, outputs):
    """The decoded landmarks (B, L, 2), (x, y) in input pixels."""
    return self.decode(outputs)

  def certified_metric(self, certified, arrays):
    """Each landmark's smoothed (x, y) lies in the box [lower, upper] (input pixels); its radial
    error is at most the distance (mm) from the truth to the box's farthest corner. The per-image
    MRE bound is the mean of those bounds (∞ where a bound is ∞)."""
    to_full = np.asarray(arrays['to_full'], np.float64)[:, None, :]
    truth = np.asarray(arrays['landmarks_full'], np.float64)
    spacing = np.asarray(arrays['spacing'], np.float64)[:, None, :]
    lower = np.asarray(certified['lower'], np.float64) * to_full
    upper = np.asarray(certified['upper'], np.float64) * to_full
    far = np.maximum(np.abs(lower - truth), np.abs(upper - truth)) * spacing
    return np.sqrt(np.sum(far ** 2, axis=-1)).mean(axis=1)

  def metric_floor(self) -> float:
    """MRE (mm) of the best model that ignores the image, on the split loaded last: every landmark
    at its mean position over the split (`mean_shape_mre_mm`). An unbounded attack that leaves the
    model better than this has not removed what the model reads from the image."""
    return getattr(self, '_floor', 0.0)

  def draw_certified(self, ax, image, certified, item) -> None:
    """True landmarks as green circles; each smoothed landmark's certified box (where it can be
    under any perturbation within the radius) in yellow, or a red cross on the truth where the
    box is unbounded."""
    import matplotlib.patches as patches
    base.show_image(ax, image)
    lower, upper = np.asarray(certified['lower']), np.asarray(certified['upper'])
    true = np.asarray(item['landmarks'])
    bounded = np.all(np.isfinite(lower) & np.isfinite(upper), axis=-1)
    for lo, hi in zip(lower[bounded], upper[bounded]):
      ax.add_patch(patches.Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False,
                                     edgecolor='yellow', lw=0.6))
    ax.scatter(true[:, 0], true[:, 1], s=10, facecolors='none', edgecolors='lime', lw=0.8)
    if (~bounded).any():
      ax.scatter(true[~bounded, 0], true[~bounded, 1], s=14, c='red', marker='x', lw=0.8)
    h, w = np.asarray(image).shape[:2]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)

  def draw(self, ax, image, outputs, item) -> None:
    """True landmarks as green circles, predictions as red crosses joined to them."""
    base.show_image(ax, image)
    pred = np.asarray(self.decode(jax.tree.map(lambda o: jnp.asarray(o)[None], outputs)))[0]
    true = np.asarray(item['landmarks'])
    for (px, py), (tx, ty) in zip(pred, true):
      ax.plot([tx, px], [ty, py], color='yellow', lw=0.5)
    ax.scatter(true[:, 0], true[:, 1], s=10, facecolors='none', edgecolors='lime', lw=0.8)
    ax.scatter(pred[:, 0], pred[:, 1], s=10, c='red', marker='x', lw=0.8)
    h, w = np.asarray(image).shape[:2]
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
