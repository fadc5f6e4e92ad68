"""Segmentation head on 2-D slices or 3-D volumes: U-Net, Dice + cross-entropy, ADI, TVDI, HD95.

The model is an nnU-Net-style U-Net; on volumes the metrics add each volume's HD95 and average
surface distance.

Volumes (`data.ndim = 3`): each record is a whole volume in a common padded grid with an `in_image`
mask. Training batches are patches of `data.patch_size` cut by the data pipeline (`training_batch`,
nnU-Net's rule: the last `data.foreground_fraction` of each batch centred on foreground); the
model is the U-Net wrapped in `models.sliding.SlidingWindow`, so that evaluation, attacks and ξ
see whole volumes through overlapping Gaussian-weighted windows, and an attack's budget is per
volume. A sample is a volume everywhere: its id, its AMAT margin, its Dice.

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
from robust_med import smoothing as smoothing_lib
from robust_med import surface_distance
from robust_med.data import patches as patches_lib
from robust_med.errors import ConfigError
from robust_med.models.sliding import SliceWise, SlidingWindow
from robust_med.models.unet import UNet, unet_features
from robust_med.tasks import base

_SPATIAL = lambda a: tuple(range(1, a.ndim - 1))  # The spatial axes of (B, *spatial, K).


def soft_dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1.0,
                   valid: jax.Array | None = None) -> jax.Array:
  """Per-sample 1 − mean soft Dice over foreground classes; logits (B, *spatial, K), labels
  (B, *spatial); `valid` (B, *spatial), when given, leaves the other voxels out.

  `smooth` = 1 (one pixel) keeps a slice where a class is absent from scoring 0 when the model
  rightly predicts almost nothing of it; with a tiny smooth such slices dominate the loss.
  """
  probs = jax.nn.softmax(logits, axis=-1)[..., 1:]
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)[..., 1:]
  if valid is not None:
    probs = probs * valid[..., None].astype(probs.dtype)
  axes = _SPATIAL(probs)
  inter = jnp.sum(probs * onehot, axis=axes)
  denom = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = (2.0 * inter + smooth) / (denom + smooth)
  return 1.0 - jnp.mean(dice, axis=-1)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       valid: jax.Array | None = None) -> jax.Array:
  """Per-sample mean pixel cross-entropy (over the `valid` voxels when given)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  axes = tuple(range(1, ce.ndim))
  if valid is None:
    return jnp.mean(ce, axis=axes)
  w = valid.astype(ce.dtype)
  return jnp.sum(ce * w, axis=axes) / jnp.maximum(jnp.sum(w, axis=axes), 1.0)


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


def surface_metrics(hd95: np.ndarray, asd: np.ndarray,
                    class_names: tuple[str, ...] = ()) -> dict[str, float]:
  """Mean HD95 and ASD over volumes (per class, and the mean over classes) from (N, K) arrays."""
  out = {}
  for key, values in (('hd95_mm', hd95), ('asd_mm', asd)):
    values = np.asarray(values, np.float64)
    per_class = values.mean(axis=0)
    out[key] = float(per_class.mean())
    for k in range(values.shape[1]):
      name = class_names[k] if k < len(class_names) else f'class{k + 1}'
      out[f'{key}/{name}'] = float(per_class[k])
  return out


def logits_of(outputs):
  """The full-resolution logits of a U-Net's outputs (deep supervision's dict, or the array)."""
  return outputs['logits'] if isinstance(outputs, dict) else outputs


def deep_supervision_weights(n: int) -> np.ndarray:
  """nnU-Net's weights of the full-resolution output and `n` coarser ones: 1, 1/2, 1/4, ...
  normalised to sum 1."""
  w = 0.5 ** np.arange(n + 1)
  return w / w.sum()


def downsample_labels(labels: jax.Array, scale: int) -> jax.Array:
  """Every 2^scale-th voxel along each spatial axis of (B, *spatial): the label map on the grid
  of a decoder level 2^scale coarser (nearest neighbour; nnU-Net also downsamples the
  segmentation by nearest neighbour for deep supervision). With SAME-padded stride-2
  convolutions that level has ⌈size / 2^scale⌉ voxels per axis, as this slice does."""
  step = 2 ** scale
  return labels[(slice(None),) + (slice(None, None, step),) * (labels.ndim - 1)]


class DeepSupervised:
  """`model` applied with its deep-supervision outputs (`aux=True`): the training model of a
  U-Net with `model.deep_supervision` > 0. Same parameters; every other attribute is the
  model's."""

  def __init__(self, model):
    self.model = model

  def apply(self, variables, x, *args, **kwargs):
    return self.model.apply(variables, x, *args, aux=True, **kwargs)

  def __getattr__(self, name: str):
    return getattr(self.model, name)

  def __repr__(self) -> str:
    return f'DeepSupervised({self.model!r})'


class Task(base.Task):
  """Semantic segmentation of 2-D slices or of 3-D volumes (MSD volumes or the synthetic
  phantoms)."""

  name = 'segmentation'
  primary_metric = 'adi'
  sample_score_name = 'per-sample mean Dice over the classes present'
  sample_metric_name = 'per-image Dice (mean over the classes present)'
  sample_metric_floor = 0.0
  loss_term_names = ('ce', 'dice')

  supports_deep_supervision = True

  @classmethod
  def check_config(cls, config) -> None:
    ds = config.model.get('deep_supervision', 0)
    if ds and (not isinstance(ds, int) or ds > config.model.depth - 2):
      raise ConfigError(f'config.model.deep_supervision = {ds}: give an integer from 0 to '
                        f'model.depth - 2 = {config.model.depth - 2} (the decoder levels below '
                        'full resolution, never the bottleneck), or raise model.depth.')
    d = config.data
    model_ndim = config.model.get('ndim', 0) or d.get('ndim', 2)
    if model_ndim == 1:
      raise ConfigError('config.model.ndim = 1: use 0 (the data\'s dims), 2 or 3.')
    if d.get('ndim', 2) != 3:
      if model_ndim != 2:
        raise ConfigError(f'config.model.ndim = {model_ndim} but the data are 2-D slices: a 3-D '
                          'model needs volumes (config.data.ndim = 3); set model.ndim to 0.')
      if len(d.patch_size) != 2:
        raise ConfigError(f'config.data.patch_size = {tuple(d.patch_size)}: slices need two '
                          'sizes (or set config.data.ndim = 3 for volumes).')
      return
    if model_ndim == 2 and ds:
      raise ConfigError(f'config.model.deep_supervision = {ds} with a 2-D model on volumes '
                        '(model.ndim = 2, data.ndim = 3): it trains slice by slice on whole '
                        'volumes, where the coarser outputs are not used; set '
                        'model.deep_supervision = 0, or model.ndim = 0 for a 3-D U-Net.')
    if len(d.patch_size) != model_ndim:
      raise ConfigError(f'config.data.patch_size = {tuple(d.patch_size)} for a {model_ndim}-D '
                        f'model: give {model_ndim} sizes (the {model_ndim}-D training patch).')
    for key in ('spacing', 'volume_shape'):
      if d[key] and len(d[key]) != 3:
        raise ConfigError(f'config.data.{key} = {tuple(d[key])}: give three sizes or ().')
    if model_ndim == 3 and d.volume_shape and any(
        v < p for v, p in zip(d.volume_shape, d.patch_size)):
      raise ConfigError(f'config.data.volume_shape = {tuple(d.volume_shape)} is smaller than '
                        f'config.data.patch_size = {tuple(d.patch_size)}: the windows must fit '
                        'in the grid; raise volume_shape or lower patch_size.')
    if config.method.get('augment', False):
      raise ConfigError('config.method.augment is on, but the geometric augmentation is 2-D '
                        'only and the data are volumes (config.data.ndim = 3): turn it off '
                        '(methods that need two augmented views, such as rtda, do not apply '
                        'to volumes yet).')

  @property
  def volumes(self) -> bool:
    return int(self.config.data.get('ndim', 2)) == 3

  @property
  def model_ndim(self) -> int:
    return int(self.config.model.get('ndim', 0) or self.config.data.get('ndim', 2))

  def splits(self) -> tuple[str, ...]:
    return data_lib.split_names(self.config.data)

  def load_split(self, split: str):
    arrays, info = data_lib.load_split(self.config.data, split)
    self.info = info
    keys = ('image', 'label', 'id') + (('in_image',) if self.volumes else ())
    return {k: arrays[k] for k in keys}, info

  def training_batch(self, batch, rng):
    """Volumes: a patch of `data.patch_size` from each volume of the batch, the last
    `data.foreground_fraction` of them centred on a foreground voxel (`data.patches`). The
    sample keeps its volume's id (its AMAT margin is the volume's)."""
    if not self.volumes or self.model_ndim != 3:  # A slice-wise model trains on whole volumes.
      return batch
    patch = tuple(int(p) for p in self.config.data.patch_size)
    labels = batch['label']
    shapes = [labels.shape[1:]] * len(labels)
    # Each training volume's foreground voxels, found once (the labels never change).
    known = self.__dict__.setdefault('_foreground', {})
    for i, label in zip(batch['id'], labels):
      if int(i) not in known:
        known[int(i)] = patches_lib.foreground_voxels(label)
    foreground = [known[int(i)] for i in batch['id']]
    starts = patches_lib.sample_starts(shapes, foreground, patch, range(len(labels)),
                                       self.config.data.foreground_fraction, rng)
    out = dict(batch)
    for key in ('image', 'label', 'in_image'):
      out[key] = np.stack([patches_lib.crop(a, s, patch) for a, s in zip(batch[key], starts)])
    return out

  def subset_note(self, info) -> str:
    if not info.split_volumes or info.num_volumes >= info.split_volumes:
      return ''
    return (f'only {info.num_volumes} of the split\'s {info.split_volumes} volumes were loaded '
            f'(data.max_volumes={self.config.data.max_volumes}): pass '
            '--config.data.max_volumes=0 to evaluate every volume')

  def data_signature(self, info) -> dict:
    signature = {'channels': int(info.channels), 'num_classes': int(info.num_classes)}
    if self.model_ndim == 3:  # 2-D models keep the signature they were saved with.
      signature['ndim'] = 3
    return signature

  def build_model(self, info):
    m = self.config.model
    self.class_names = tuple(info.class_names[1:])
    self.spacing = tuple(getattr(info, 'spacing', ()) or ())
    unet = UNet(num_classes=info.num_classes,
                features=unet_features(m.base_width, m.depth, m.max_width),
                deep_supervision=int(m.get('deep_supervision', 0)))
    if not self.volumes:
      return unet
    if self.model_ndim == 2:
      return SliceWise(unet, axis=self.config.data.slice_axis, multiple=2 ** (m.depth - 1))
    return SlidingWindow(unet, self.config.data.patch_size, overlap=m.sliding_overlap,
                         windows_per_batch=m.windows_per_batch)

  def training_model(self, model):
    """With `model.deep_supervision` > 0, the U-Net with its coarser outputs (`DeepSupervised`);
    on whole volumes (the ξ pass, evaluation) the sliding window stitches the logits alone."""
    return DeepSupervised(model) if self.config.model.get('deep_supervision', 0) else model

  def loss_terms(self, outputs, batch):
    """Per sample: cross-entropy and soft Dice of the logits; with deep supervision's outputs,
    each term is nnU-Net's weighted sum over the scales (`deep_supervision_weights`), the labels
    and the valid mask subsampled to each scale's grid."""
    labels, valid = batch['label'], batch.get('in_image')
    if not isinstance(outputs, dict):
      return {'ce': cross_entropy_loss(outputs, labels, valid),
              'dice': soft_dice_loss(outputs, labels, valid=valid)}
    scales = (outputs['logits'], *outputs['deep'])
    weights = deep_supervision_weights(len(scales) - 1)
    terms = {'ce': 0.0, 'dice': 0.0}
    for s, (w, logits) in enumerate(zip(weights, scales)):
      y = downsample_labels(labels, s)
      v = None if valid is None else downsample_labels(valid, s)
      terms['ce'] = terms['ce'] + w * cross_entropy_loss(logits, y, v)
      terms['dice'] = terms['dice'] + w * soft_dice_loss(logits, y, valid=v)
    return terms

  def eval_stats(self, outputs, batch):
    outputs = logits_of(outputs)
    pred = jnp.argmax(outputs, axis=-1)
    valid = batch.get('in_image')
    if valid is not None:
      pred = jnp.where(valid, pred, 0)
    stats = confusion_counts(pred, batch['label'], outputs.shape[-1])
    if self.volumes:  # HD95 and ASD per volume and class, in mm.
      stats.update(surface_distance.batched(pred, batch['label'], outputs.shape[-1],
                                            getattr(self, 'spacing', ()) or None, valid))
    return stats

  xi_score_name = 'hard Dice, the best foreground class'

  def xi_score(self, outputs, batch):
    """Each sample's hard Dice 2TP / (2TP + FP + FN + 1e-8), the largest over the foreground
    classes: the test the AMAT authors' nnU-Net code applies to noisy samples (SarielMa/amat_conf,
    nnUNetTrainer.getOnlineDiceMax used by nnUNetTrainerV2.classify_model_adv_output_seg)."""
    outputs = logits_of(outputs)
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

  smoothing = 'vote'
  certified_metric_name = ('certified per-sample mean Dice: each class counts its abstained '
                           'pixels as errors (a miss where the pixel is that class, a false alarm '
                           'elsewhere)')

  def smoothing_answers(self, outputs):
    """The predicted class of each pixel or voxel (B, *spatial)."""
    return jnp.argmax(logits_of(outputs), axis=-1).astype(jnp.int32)

  def num_answers(self, outputs) -> int:
    return int(logits_of(outputs).shape[-1])

  def certified_metric(self, certified, arrays):
    """The per-sample mean Dice (`sample_scores`) that holds whatever the abstained pixels become:
    for each foreground class, an abstained pixel is a false negative where the label is that
    class and a false positive elsewhere. A lower bound of each class's Dice, and so of their
    mean (each class's worst case is taken separately). Padding (`in_image` False) is left out."""
    answer = np.asarray(certified['answer'])
    labels = np.asarray(arrays['label'])
    valid = self.answer_mask(arrays)
    valid = np.ones(labels.shape, bool) if valid is None else np.asarray(valid, bool)
    abstained = answer == smoothing_lib.ABSTAIN
    axes = tuple(range(1, labels.ndim))
    tp, fp, fn = [], [], []
    for c in range(1, int(certified['num_answers'])):
      is_c = (labels == c) & valid
      said_c = ((answer == c) | abstained) & valid
      tp.append(np.sum(is_c & (answer == c), axis=axes))
      fp.append(np.sum(~is_c & said_c, axis=axes))
      fn.append(np.sum(is_c & (answer != c), axis=axes))
    stack = lambda v: np.stack(v, axis=1) if v else np.zeros((len(labels), 0))
    return self.sample_scores({'tp': stack(tp), 'fp': stack(fp), 'fn': stack(fn)})

  def summarize(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    names = getattr(self, 'class_names', ())
    out = dice_metrics(stats['tp'], stats['fp'], stats['fn'], names)
    if 'hd95' in stats:
      out.update(surface_metrics(stats['hd95'], stats['asd'], names))
    return out

  def move_targets(self, batch, warp):
    """The label map follows the image (nearest-neighbour, so labels stay labels)."""
    from robust_med import augment
    return {**batch, 'label': augment.warp_images(warp, batch['label'], order=0)}

  def divergence(self, outputs_a, outputs_b):
    """Symmetric KL of the per-pixel class distributions, averaged over the pixels."""
    return base.symmetric_kl(logits_of(outputs_a), logits_of(outputs_b))

  def section(self, item):
    """Volumes: the slice along the last axis with the most foreground."""
    label = np.asarray(item['label'])
    if label.ndim < 3:
      return None
    z = int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0)))
    return (slice(None), slice(None), z)

  def draw_certified(self, ax, image, certified, item) -> None:
    """The certified classes filled in colour, the abstained pixels in magenta, the ground
    truth as outlines."""
    import matplotlib.pyplot as plt
    base.show_image(ax, image)
    answer = np.asarray(certified['answer'])
    num_classes = int(certified['num_answers'])
    colors = plt.get_cmap('tab10')(np.arange(num_classes) % 10)
    overlay = colors[np.clip(answer, 0, None)]
    overlay[..., 3] = np.where(answer > 0, 0.4, 0.0)
    abstained = answer == smoothing_lib.ABSTAIN
    overlay[abstained] = (1.0, 0.0, 1.0, 0.7)
    ax.imshow(overlay)
    for k in range(1, num_classes):
      if (item['label'] == k).any():
        ax.contour(item['label'] == k, levels=[0.5], colors=[colors[k]], linewidths=0.8)
    ax.text(0.02, 0.02, f'abstained (magenta) {abstained.mean():.1%}', fontsize=5, color='white',
            transform=ax.transAxes, va='bottom',
            bbox={'facecolor': 'black', 'alpha': 0.6, 'pad': 1, 'lw': 0})

  def draw(self, ax, image, outputs, item) -> None:
    """The predicted classes filled in colour over the image, the ground truth as outlines of the
    same colours."""
    import matplotlib.pyplot as plt
    base.show_image(ax, image)
    outputs = logits_of(outputs)
    num_classes = outputs.shape[-1]
    colors = plt.get_cmap('tab10')(np.arange(num_classes) % 10)
    pred = np.argmax(np.asarray(outputs), axis=-1)
    overlay = colors[pred]
    overlay[..., 3] = np.where(pred > 0, 0.4, 0.0)
    ax.imshow(overlay)
    for k in range(1, num_classes):
      if (item['label'] == k).any():
        ax.contour(item['label'] == k, levels=[0.5], colors=[colors[k]], linewidths=0.8)
