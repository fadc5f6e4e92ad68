"""2-D segmentation head: nnU-Net-style U-Net, Dice + cross-entropy, ADI and TVDI.

Metrics (as in Ma & Liang, AMAT):
* ADI, average Dice index: for each foreground class, the mean over samples of
  2TP / (2TP + FP + FN); then the mean over classes. A sample where the class is absent from both
  the prediction and the ground truth (0/0) is left out of that class's mean.
* TVDI, total-volume Dice index: the same ratio from TP, FP and FN summed over the whole set.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_med import data as data_lib
from robust_med.models.unet import UNet, unet_features
from robust_med.tasks import base


def soft_dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Per-sample 1 − mean soft Dice over foreground classes; logits (B,H,W,K), labels (B,H,W).

  `smooth` = 1 (one pixel) keeps a slice where a class is absent from scoring 0 when the model
  rightly predicts almost nothing of it; with a tiny smooth such slices dominate the loss.
  """
  probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)[..., 1:]
  inter = jnp.sum(probs * onehot, axis=(1, 2))
  denom = jnp.sum(probs, axis=(1, 2)) + jnp.sum(onehot, axis=(1, 2))
  dice = (2.0 * inter + smooth) / (denom + smooth)
  return 1.0 - jnp.mean(dice, axis=-1)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample mean pixel cross-entropy."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return jnp.mean(ce, axis=tuple(range(1, ce.ndim)))


def confusion_counts(pred: jax.Array, labels: jax.Array, num_classes: int) -> dict[str, jax.Array]:
  """Per-sample TP, FP, FN of each foreground class, each (B, num_classes − 1)."""
  p = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32)[..., 1:]
  g = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)[..., 1:]
  axes = tuple(range(1, p.ndim - 1))
  return {
      'tp': jnp.sum(p * g, axis=axes),
      'fp': jnp.sum(p * (1 - g), axis=axes),
      'fn': jnp.sum((1 - p) * g, axis=axes),
  }


def dice_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                 class_names: tuple[str, ...] = ()) -> dict[str, float]:
  """ADI and TVDI (and per-class values) from per-sample counts of shape (N, K)."""
  tp, fp, fn = (np.asarray(a, np.float64) for a in (tp, fp, fn))
  denom = 2 * tp + fp + fn
  with np.errstate(invalid='ignore', divide='ignore'):
    per_sample = np.where(denom > 0, 2 * tp / denom, np.nan)
  defined = np.any(denom > 0, axis=0)
  adi_per_class = np.array([np.nanmean(per_sample[:, k]) if defined[k] else np.nan
                            for k in range(tp.shape[1])])
  tot = 2 * tp.sum(0) + fp.sum(0) + fn.sum(0)
  with np.errstate(invalid='ignore', divide='ignore'):
    tvdi_per_class = np.where(tot > 0, 2 * tp.sum(0) / tot, np.nan)
  out = {'adi': float(np.nanmean(adi_per_class)), 'tvdi': float(np.nanmean(tvdi_per_class))}
  for k in range(tp.shape[1]):
    name = class_names[k] if k < len(class_names) else f'class{k + 1}'
    out[f'adi/{name}'] = float(adi_per_class[k])
    out[f'tvdi/{name}'] = float(tvdi_per_class[k])
  return out


class Task(base.Task):
  """Semantic segmentation of 2-D slices (MSD volumes or the synthetic phantoms)."""

  name = 'segmentation'
  primary_metric = 'adi'
  sample_score_name = 'per-sample mean Dice over the classes present'
  sample_metric_name = 'per-image Dice (mean over the classes present)'
  sample_metric_floor = 0.0
  loss_term_names = ('ce', 'dice')

  def splits(self) -> tuple[str, ...]:
    return data_lib.split_names(self.config.data)

  def load_split(self, split: str):
    arrays, info = data_lib.load_split(self.config.data, split)
    self.info = info
    return {k: arrays[k] for k in ('image', 'label', 'id')}, info

  def subset_note(self, info) -> str:
    if not info.split_volumes or info.num_volumes >= info.split_volumes:
      return ''
    return (f'only {info.num_volumes} of the split\'s {info.split_volumes} volumes were loaded '
            f'(data.max_volumes={self.config.data.max_volumes}): pass '
            '--config.data.max_volumes=0 to evaluate every volume')

  def data_signature(self, info) -> dict:
    return {'channels': int(info.channels), 'num_classes': int(info.num_classes)}

  def build_model(self, info) -> UNet:
    m = self.config.model
    self.class_names = tuple(info.class_names[1:])
    return UNet(num_classes=info.num_classes,
                features=unet_features(m.base_width, m.depth, m.max_width))

  def loss_terms(self, outputs, batch):
    labels = batch['label']
    return {'ce': cross_entropy_loss(outputs, labels), 'dice': soft_dice_loss(outputs, labels)}

  def eval_stats(self, outputs, batch):
    pred = jnp.argmax(outputs, axis=-1)
    return confusion_counts(pred, batch['label'], outputs.shape[-1])

  xi_score_name = 'hard Dice, the best foreground class'

  def xi_score(self, outputs, batch):
    """Each sample's hard Dice 2TP / (2TP + FP + FN + 1e-8), the largest over the foreground
    classes: the test the AMAT authors' nnU-Net code applies to noisy samples (SarielMa/amat_conf,
    nnUNetTrainer.getOnlineDiceMax used by nnUNetTrainerV2.classify_model_adv_output_seg)."""
    c = confusion_counts(jnp.argmax(outputs, axis=-1), batch['label'], outputs.shape[-1])
    tp, fp, fn = (c[k].astype(jnp.float32) for k in ('tp', 'fp', 'fn'))
    return jnp.max(2 * tp / (2 * tp + fp + fn + 1e-8), axis=-1)

  def sample_scores(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per-sample mean Dice over the classes present in the label or the prediction (1 when
    neither has any foreground)."""
    tp, fp, fn = (np.asarray(stats[k], np.float64) for k in ('tp', 'fp', 'fn'))
    denom = 2 * tp + fp + fn
    present = (denom > 0).sum(axis=1)
    dice_sum = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0).sum(axis=1)
    return np.where(present > 0, dice_sum / np.maximum(present, 1), 1.0)

  def summarize(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    return dice_metrics(stats['tp'], stats['fp'], stats['fn'], getattr(self, 'class_names', ()))

  def move_targets(self, batch, warp):
    """The label map follows the image (nearest-neighbour, so labels stay labels)."""
    from robust_med import augment
    return {**batch, 'label': augment.warp_images(warp, batch['label'], order=0)}

  def divergence(self, outputs_a, outputs_b):
    """Symmetric KL of the per-pixel class distributions, averaged over the pixels."""
    return base.symmetric_kl(outputs_a, outputs_b)

  def draw(self, ax, image, outputs, item) -> None:
    """The predicted classes filled in colour over the image, the ground truth as outlines of the
    same colours."""
    import matplotlib.pyplot as plt
    base.show_image(ax, image)
    num_classes = outputs.shape[-1]
    colors = plt.get_cmap('tab10')(np.arange(num_classes) % 10)
    pred = np.argmax(np.asarray(outputs), axis=-1)
    overlay = colors[pred]
    overlay[..., 3] = np.where(pred > 0, 0.4, 0.0)
    ax.imshow(overlay)
    for k in range(1, num_classes):
      if (item['label'] == k).any():
        ax.contour(item['label'] == k, levels=[0.5], colors=[colors[k]], linewidths=0.8)
