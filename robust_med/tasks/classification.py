"""Image-classification head: a pre-activation ResNet on npz, image folders or synthetic data.

Image-classification head: a pre-activation ResNet with group norm on MedMNIST-format npz files,
BUSI-style npz files with a split column, image folders (PNG/JPEG/DICOM) or the synthetic lesion
set (`robust_med.data.classification`).

Loss: one term, `ce`, the per-sample softmax cross-entropy, optionally weighted by class
(`classification.class_weights = 'balanced'`: w_k = N / (K·N_k) from the training split's counts,
for imbalanced data such as the pneumonia copy with 10 % normal images).

Metrics (`summarize`): `accuracy`, `balanced_accuracy` (the mean of the per-class sensitivities
over the classes present), `auc` (binary: the ROC AUC of the positive class; more classes: the
macro average of one-vs-rest AUCs over the classes present with both outcomes, as scikit-learn's
`roc_auc_score(multi_class='ovr', average='macro')`), and `sensitivity/<class>` (recall of each
class). A sample's score for the worst case is its probability margin p_y − max_{k≠y} p_k, which
is negative exactly when it is misclassified.

RTDA's consistency compares the class distributions of two predictions with the symmetric KL
divergence (`divergence`); a class does not move with the image, so the two augmented views may
differ in geometry (`outputs_move_with_image = False`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from robust_med.data import classification as cls_data
from robust_med.errors import ConfigError
from robust_med.models.resnet import ResNetClassifier
from robust_med.ranges import Range
from robust_med.stats import binary_auc
from robust_med.tasks import base

CLASS_WEIGHTS = ('none', 'balanced')


def classification_metrics(probs: np.ndarray, labels: np.ndarray,
                           class_names: tuple[str, ...] = ()) -> dict[str, float]:
  """Accuracy, balanced accuracy, macro AUC and per-class sensitivity of class probabilities
  (N, K) against integer labels (N,)."""
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels, np.int64)
  k = probs.shape[1]
  pred = probs.argmax(axis=1)
  out = {'accuracy': float(np.mean(pred == labels)) if len(labels) else float('nan')}
  sensitivity = {}
  for c in range(k):
    name = class_names[c] if c < len(class_names) else str(c)
    present = labels == c
    sensitivity[name] = float(np.mean(pred[present] == c)) if present.any() else float('nan')
  values = [v for v in sensitivity.values() if not np.isnan(v)]
  out['balanced_accuracy'] = float(np.mean(values)) if values else float('nan')
  if k == 2:
    out['auc'] = binary_auc(probs[:, 1], labels == 1)
  else:
    aucs = [binary_auc(probs[:, c], labels == c) for c in range(k)]
    aucs = [a for a in aucs if not np.isnan(a)]
    out['auc'] = float(np.mean(aucs)) if aucs else float('nan')
  out.update({f'sensitivity/{name}': v for name, v in sensitivity.items()})
  return out


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """w_k = N / (K · N_k) over the K classes present (scikit-learn's 'balanced': every class then
  weighs N / K in total, and the mean weight is 1); absent classes get weight 0."""
  counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
  present = max(int((counts > 0).sum()), 1)
  with np.errstate(divide='ignore'):
    weights = np.where(counts > 0, counts.sum() / (present * counts), 0.0)
  return weights.astype(np.float32)


def dlr_loss(logits: jax.Array, labels: jax.Array, target: jax.Array | None = None) -> jax.Array:
  """The difference-of-logits-ratio loss (Croce & Hein 2020), per sample, to maximise:
  untargeted −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3), targeted −(z_y − z_t) / (z_π1 − (z_π3 +
  z_π4)/2), with z_π the logits sorted in decreasing order. It is invariant to shifting and
  scaling the logits. With fewer classes than the scale needs, the targeted scale uses z_π3 (three
  classes) and both use 1 (two classes: an unnormalised logit margin)."""
  k = logits.shape[-1]
  z = jnp.sort(logits, axis=-1)[:, ::-1]
  true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  if target is None:
    other = jnp.max(jnp.where(jax.nn.one_hot(labels, k, dtype=bool), -jnp.inf, logits), axis=-1)
    scale = z[:, 0] - z[:, 2] if k >= 3 else jnp.ones_like(true)
  else:
    other = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    scale = (z[:, 0] - (z[:, 2] + z[:, 3]) / 2 if k >= 4 else
             z[:, 0] - z[:, 2] if k == 3 else jnp.ones_like(true))
  return -(true - other) / (scale + 1e-12)


class Task(base.Task):
  """Image classification (BUSI, PneumoniaMNIST and any MedMNIST-format or folder dataset)."""

  name = 'classification'
  primary_metric = 'accuracy'
  higher_is_better = True
  sample_score_name = "the true class's probability margin p_y − max_{k≠y} p_k"
  sample_metric_name = 'correct (1) or not (0)'
  sample_metric_floor = 0.0
  attack_objectives = ('dlr',)
  has_attack_targets = True
  loss_term_names = ('ce',)
  outputs_move_with_image = False

  @classmethod
  def default_config(cls) -> dict[str, dict[str, Any]]:
    return {
        'data': {
            'image_size': 64,             # square side images are resized to (pixels)
            'class_names': (),            # in label order; () = from the data
            'image_key': 'images',        # split-column npz: the image array
            'label_key': 'label',         # split-column npz: the label array
            'shift_image_key': '',        # split-column npz: another copy of the images (e.g.
                                          # BUSI's 28 px 'images_28'), resized to image_size and
                                          # reported as a cross-resolution shift in shift.json
        },
        'model': {
            'stages': 4,                  # ResNet stages (the width doubles at each)
            'stem_stride': 1,             # stride of the stem convolution
        },
        'classification': {
            'class_weights': 'none',      # 'none' | 'balanced' (inverse training frequency)
        },
    }

  @classmethod
  def config_ranges(cls) -> dict[str, Range]:
    return {'data.image_size': Range(1), 'model.stages': Range(1), 'model.stem_stride': Range(1),
            'classification.class_weights': CLASS_WEIGHTS}

  @classmethod
  def check_config(cls, config) -> None:
    m = config.model
    size, shrink = config.data.image_size, m.stem_stride * 2 ** (m.stages - 1)
    if not isinstance(size, int) or size < shrink:
      raise ConfigError(f'config.data.image_size = {size!r} is smaller than the network\'s '
                        f'total stride {shrink} (stem_stride · 2^(stages − 1)): raise image_size '
                        'or use fewer stages.')
    if config.data.tune_fraction:
      raise ConfigError(f'config.data.tune_fraction = {config.data.tune_fraction}: the '
                        'classification head reads the splits the data declares; add a tune '
                        'split to the data and pass --config.data.eval_split=tune instead.')

  def splits(self) -> tuple[str, ...]:
    return cls_data.split_names(self.config.data)

  def load_split(self, split: str, image_key: str | None = None):
    arrays, info = cls_data.load_split(self.config.data, split, image_key)
    self.class_names = tuple(info.class_names)
    n = len(arrays['id'])
    arrays['weight'] = np.ones(n, np.float32)
    if (self.config.classification.class_weights == 'balanced'
        and split == self.config.data.train_split):
      weights = balanced_class_weights(arrays['label'], info.num_classes)
      arrays['weight'] = weights[arrays['label']]
    return arrays, info

  def subset_note(self, info) -> str:
    missing = cls_data.missing_classes(info)
    if not missing:
      return ''
    return (f'the {info.split!r} split has no images of the class(es) {", ".join(missing)}: '
            'their recall and every per-class figure for them are undefined, and accuracy '
            'says nothing of them')

  def data_signature(self, info) -> dict:
    return {'channels': int(info.channels), 'class_names': list(info.class_names),
            'image_size': int(info.image_size)}

  def build_model(self, info) -> ResNetClassifier:
    self.class_names = tuple(info.class_names)
    m = self.config.model
    return ResNetClassifier(num_classes=info.num_classes, base_width=m.base_width,
                            blocks=m.depth, stages=m.stages, stem_stride=m.stem_stride,
                            max_width=m.max_width)

  def loss_terms(self, outputs, batch):
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs, batch['label'])
    return {'ce': ce * batch['weight'] if 'weight' in batch else ce}

  def attack_objective(self, name, outputs, batch):
    """'dlr': the difference-of-logits-ratio loss of Croce & Hein (2020), untargeted, or
    targeted when the batch holds 'attack_target' (APGD-T)."""
    if name != 'dlr':
      return super().attack_objective(name, outputs, batch)
    return dlr_loss(outputs, batch['label'], batch.get('attack_target'))

  def attack_target(self, outputs, batch, rank):
    """The `rank`-th most likely wrong class of the clean logits."""
    logits = jnp.where(jax.nn.one_hot(batch['label'], outputs.shape[-1], dtype=bool), -jnp.inf,
                       outputs)
    return jnp.argsort(-logits, axis=-1)[:, rank - 1]

  def num_attack_targets(self, outputs):
    return int(outputs.shape[-1]) - 1

  def eval_stats(self, outputs, batch):
    return {'probs': jax.nn.softmax(outputs, axis=-1), 'label': batch['label']}

  def _class_names(self) -> tuple[str, ...]:
    return tuple(getattr(self, 'class_names', ()) or self.config.data.class_names)

  def summarize(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    return classification_metrics(stats['probs'], stats['label'], self._class_names())

  def sample_metric(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """1 where the predicted class is the true one, else 0 (accuracy per image)."""
    probs = np.asarray(stats['probs'])
    return (probs.argmax(axis=1) == np.asarray(stats['label'])).astype(np.float64)

  def sample_scores(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    probs = np.asarray(stats['probs'], np.float64)
    labels = np.asarray(stats['label'], np.int64)
    true = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    others = probs.copy()
    np.put_along_axis(others, labels[:, None], -np.inf, axis=1)
    return true - others.max(axis=1)

  def divergence(self, outputs_a, outputs_b) -> jax.Array:
    return base.symmetric_kl(outputs_a, outputs_b)

  def saliency_target(self, outputs, batch, which: str) -> jax.Array:
    if which == 'label':
      return jnp.asarray(batch['label'], jnp.int32)
    return jnp.argmax(outputs, axis=-1).astype(jnp.int32)

  def saliency_score(self, outputs, target) -> jax.Array:
    """The logit (before the softmax) of the target class."""
    return jnp.take_along_axis(outputs, target[:, None], axis=-1)[:, 0]

  smoothing = 'vote'
  certified_metric_name = 'certified accuracy: the class is certified and correct'

  def smoothing_answers(self, outputs):
    """The predicted class (B,)."""
    return jnp.argmax(outputs, axis=-1).astype(jnp.int32)

  def num_answers(self, outputs) -> int:
    return int(outputs.shape[-1])

  def smoothed_loss(self, outputs, batch):
    """The cross-entropy of the mean class probabilities over the copies (Salman et al. 2019's
    soft smoothed classifier), weighted by class like the loss."""
    probs = jnp.mean(jax.nn.softmax(outputs, axis=-1), axis=0)
    p_true = jnp.take_along_axis(probs, batch['label'][:, None], axis=-1)[:, 0]
    ce = -jnp.log(jnp.maximum(p_true, 1e-12))
    return ce * batch['weight'] if 'weight' in batch else ce

  def certified_metric(self, certified, arrays):
    """1 where the certified class is the true one (an abstention counts as wrong), else 0."""
    return (np.asarray(certified['answer']) == np.asarray(arrays['label'])).astype(np.float64)

  def metric_floor(self) -> float:
    """An unbounded attack can misclassify every image: accuracy 0."""
    return 0.0

  def shifted_splits(self, split: str) -> dict[str, dict[str, np.ndarray]]:
    key = self.config.data.shift_image_key
    if not key:
      return {}
    arrays, info = self.load_split(split, image_key=key)
    return {f'{key} resized to {info.image_size} px': arrays}

  def draw_certified(self, ax, image, certified, item) -> None:
    """The image with its true class and the certified class (or the abstention)."""
    base.show_image(ax, image)
    names = self._class_names()
    answer, true = int(np.asarray(certified['answer'])), int(np.asarray(item['label']))
    said = 'abstain' if answer < 0 else (names[answer] if answer < len(names) else str(answer))
    truth = names[true] if true < len(names) else str(true)
    ax.text(0.02, 0.02, f'true {truth}\ncertified {said}', fontsize=6,
            color='lime' if answer == true else 'red', transform=ax.transAxes, va='bottom',
            bbox={'facecolor': 'black', 'alpha': 0.6, 'pad': 1, 'lw': 0})

  def draw(self, ax, image, outputs, item) -> None:
    """The image with its true class, the predicted class and that prediction's probability."""
    base.show_image(ax, image)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(outputs)))
    names = self._class_names()
    name = lambda k: names[k] if k < len(names) else str(k)
    pred, true = int(probs.argmax()), int(np.asarray(item['label']))
    ax.text(0.02, 0.02, f'true {name(true)}\npred {name(pred)} {probs[pred]:.2f}', fontsize=6,
            color='lime' if pred == true else 'red', transform=ax.transAxes, va='bottom',
            bbox={'facecolor': 'black', 'alpha': 0.6, 'pad': 1, 'lw': 0})
