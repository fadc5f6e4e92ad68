"""What a task head provides to the trainer, the methods and the evaluator."""

from __future__ import annotations

import abc
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robust_med.errors import ConfigError

Batch = Mapping[str, jax.Array]


class Task(abc.ABC):
  """A task head: its model, per-sample per-term losses, metrics and data adapter.

  Every batch is a dict with at least `'image'` (B, *spatial, C) float32 — (B, H, W, C) images or
  (B, X, Y, Z, C) volumes — and `'id'` (B,) int32; the rest (labels, boxes, landmarks) is the
  head's business, but for one key: an optional `'in_image'` (B, *spatial) bool marks the pixels
  that belong to each sample (records padded to a common grid: 0 on the padding). Attacks, in
  evaluation and in training, cannot change the others (`within_image`); the head's metrics
  should leave them out. Everything the trainer jits (`loss_terms`, `eval_stats`) is pure.
  """

  #: Registry name, stored in checkpoints so another head cannot resume them.
  name: str = ''
  #: Metric the robustness curves plot and sweeps rank by.
  primary_metric: str = ''
  #: Direction of the primary metric (Dice: higher is better; a landmark error: lower).
  higher_is_better: bool = True
  #: What `sample_scores` measures, for reports.
  sample_score_name: str = 'negated per-sample loss'
  #: What `sample_metric` measures, for reports ('' = the primary metric per sample).
  sample_metric_name: str = ''
  #: Its worst possible value (a misclassified image, a Dice of 0), when it has one: a sample
  #: there cannot get worse, so the evaluator's Square skips it (AutoAttack's protocol).
  sample_metric_floor: float | None = None
  #: Names of the loss terms `loss_terms` returns, in a fixed order (ξ is a vector in this order).
  loss_term_names: tuple[str, ...] = ()
  #: What `xi_score` measures ('' = the head defines none; AMAT's xi_mode='score' needs one).
  xi_score_name: str = ''
  #: Attack objectives besides the loss that `attack_objective` defines (e.g. ('dlr',)), and
  #: whether `attack_target` picks target classes for targeted attacks (APGD-T).
  attack_objectives: tuple[str, ...] = ()
  has_attack_targets: bool = False
  #: Whether the head's model has nnU-Net's deep supervision (`config.model.deep_supervision`).
  supports_deep_supervision: bool = False

  @classmethod
  def default_config(cls) -> dict[str, dict[str, Any]]:
    """The head's own config keys and their defaults, by section, e.g.
    ``{'data': {'annotation': 'mean'}, 'landmarks': {'radius': 10}}``. `config_base.task_config`
    adds them to the base keys, and `config_base.validate` accepts them (a section may be new).
    Default: none."""
    return {}

  @classmethod
  def config_ranges(cls) -> dict[str, Any]:
    """What each key the head adds accepts: a `ranges.Range` for a number, a tuple of names for
    a choice (``{'data.image_size': Range(8), 'landmarks.decoder': ('vote', 'argmax')}``),
    checked with the base keys' at start-up. Default: none."""
    return {}

  @classmethod
  def check_config(cls, config) -> None:
    """Raises `ConfigError` (one line: problem and fix) for values of the head's keys that cannot
    work. Called by `config_base.validate` after the generic checks. Default: nothing to check."""

  def __init__(self, config):
    self.config = config
    # A head imported by its dotted path (config.task = 'mypkg.heads.blobs') may leave `name`
    # unset: the config's name then goes into checkpoints.
    self.name = self.name or config.task

  def splits(self) -> tuple[str, ...]:
    """Names of the splits the data declares; `load_split` accepts each of them."""
    return ('train', 'val')

  @abc.abstractmethod
  def load_split(self, split: str) -> tuple[dict[str, np.ndarray], Any]:
    """Records of the named `split` as equal-length arrays with ids 0..N-1, and data info."""

  @abc.abstractmethod
  def build_model(self, info: Any) -> nn.Module:
    """The Flax model for data described by `info`."""

  def training_model(self, model):
    """The model the train step applies (its loss and its attacks): `model` by default. A head
    whose training sees more outputs than evaluation (the segmentation head's deep supervision)
    returns a wrapper with the same parameters."""
    return model

  def training_batch(self, batch: dict[str, np.ndarray],
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The batch the train step sees, made from the records of a training batch (e.g. a random
    patch of each volume) where the data pipeline reads them (grain's threads or worker
    processes, so it must pickle); `rng` is drawn from (config.seed, step), so a resumed run
    sees the same batches. Keep `id` (the margins are indexed by it). Default: unchanged."""
    del rng
    return batch

  def subset_note(self, info: Any) -> str:
    """A sentence when the loaded split (described by `info`) is only part of what the data
    declares because of a data setting (e.g. `data.max_volumes`), naming the setting that
    lifts the cap, or lacks what the head's metrics expect (e.g. a class); '' when the whole
    split was loaded (the default). The evaluation (`robust_med.main`'s and
    `robust_med.evaluate`'s) prints it and stores it in the report, so it is never silent."""
    return ''

  def data_signature(self, info: Any) -> dict:
    """What the model built from `info` takes from the data (e.g. input channels and classes), as
    a JSON-able dict. It is saved in every checkpoint, and evaluating a checkpoint on data whose
    signature differs is refused with a message naming the difference. Default: nothing (the
    parameter shapes are still compared)."""
    return {}

  @abc.abstractmethod
  def loss_terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Per-sample loss of each term, each of shape (B,), keyed by `loss_term_names`."""

  def xi_score(self, outputs: Any, batch: Batch) -> jax.Array:
    """A per-sample score (B,), higher is better, that AMAT with xi_mode='score' compares with
    its mean over the training set (e.g. segmentation's hard Dice). Pure; not differentiated.
    Default: none (set `xi_score_name` when defining it)."""
    del outputs, batch
    raise ConfigError(f'The {self.name!r} head defines no per-sample score for ξ '
                      "(Task.xi_score): use config.method.xi_mode='sum' or 'per_term'.")

  @abc.abstractmethod
  def eval_stats(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Per-sample sufficient statistics of the metrics, each with leading dimension B."""

  @abc.abstractmethod
  def summarize(self, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Metrics of a whole evaluation set from its concatenated per-sample statistics."""

  def sample_scores(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """How well the model did on each sample, higher is better, shape (N,).

    Picks each sample's worst attack for the worst-case curve. The default is the negated loss;
    a head whose metric is per-sample overrides it with that metric.
    """
    return -np.asarray(stats['loss'])

  def attack_objective(self, name: str, outputs: Any, batch: Batch) -> jax.Array:
    """The per-sample objective `name` (one of `attack_objectives`), shape (B,), that an
    evaluation attack maximises instead of the loss; a targeted objective reads the target of
    each sample from `batch['attack_target']`. Pure. Default: the head defines none."""
    del outputs, batch
    raise ConfigError(f'The {self.name!r} head defines no attack objective {name!r}: its '
                      f'objectives are {self.attack_objectives or "none"}; use the loss.')

  def attack_target(self, outputs: Any, batch: Batch, rank: int) -> jax.Array:
    """Each sample's target for a targeted attack, shape (B,): the `rank`-th (1-based) most
    likely wrong answer on the clean `outputs`. Default: the head defines none."""
    del outputs, batch, rank
    raise ConfigError(f'The {self.name!r} head defines no targets for targeted attacks '
                      "(Task.attack_target): drop 'apgd_t' from config.eval.attacks.")

  def num_attack_targets(self, outputs: Any) -> int:
    """How many targets `attack_target` can give for these clean outputs (e.g. the number of
    wrong classes). Default: none."""
    del outputs
    return 0

  def sample_metric(self, stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """The primary metric per sample, shape (N,), in the metric's own direction
    (`higher_is_better`): what the paired comparisons of two models compare, image by image, and
    average over images and seeds (`robust_med.stats`). Default: `sample_scores`, negated when
    lower is better (a landmark head's negated MRE becomes its MRE). A head whose metric is a
    mean of something else per sample (accuracy: correct or not) overrides it."""
    scores = np.asarray(self.sample_scores(stats), np.float64)
    return scores if self.higher_is_better else -scores

  def sample_metric_label(self) -> str:
    """How reports name `sample_metric`."""
    return self.sample_metric_name or f'per-sample {self.primary_metric}'

  def draw(self, ax, image: np.ndarray, outputs: Any, item: Mapping[str, np.ndarray]) -> None:
    """Draws one sample's prediction `outputs` (the model's outputs for that sample) against its
    ground truth (in `item`, the sample's record) on the matplotlib axes `ax`, over `image`
    (H, W, C), which may be attacked. Used for `examples.png`. Default: the image alone."""
    show_image(ax, image)

  def section(self, item: Mapping[str, np.ndarray]) -> tuple | None:
    """For a sample with more than two spatial axes (a volume), the index of the 2-D section the
    figures show, applied to its image, perturbation, outputs and the record's arrays of the same
    grid (e.g. ``(slice(None), slice(None), z)``); None for 2-D samples. Default: the middle
    slice along the last spatial axis."""
    image = np.asarray(item['image'])
    if image.ndim <= 3:
      return None
    return (slice(None),) * (image.ndim - 2) + (image.shape[-2] // 2,)

  def metric_floor(self) -> float:
    """The value of the primary metric (or of `floor_metric`) for a useless model (used by the
    huge-budget masking check)."""
    return 0.0

  # --- Augmentation and consistency (RTDA and `config.method.augment`) -------------------------

  #: Whether the head's outputs move with the image (masks, points, boxes: True) or not (a class:
  #: False). When they do not, the two augmented views consistency compares may differ in
  #: geometry; when they do, both views share one geometric transform and differ in intensity, so
  #: their outputs stay aligned.
  outputs_move_with_image: bool = True

  def move_targets(self, batch: dict, warp) -> dict:
    """The batch's targets moved by the geometric transform `warp` (`augment.Warp`) that moved
    its images: masks with `augment.warp_images(warp, mask, order=0)`, points with
    `augment.warp_points`, boxes with `augment.warp_boxes`. Default: unchanged (targets that do
    not move with the image, such as a class label)."""
    del warp
    return batch

  def augment(self, batch: dict, key: jax.Array, settings, geometry_key: jax.Array | None = None,
              value_range: tuple[float, float] | None = None) -> dict:
    """The batch with per-sample random augmentation (`augment.AugmentSettings`): a geometric
    transform drawn from `geometry_key` (default: from `key`) applied to the images and, through
    `move_targets`, to the targets; then intensity changes drawn from `key`, clipped to
    `value_range` (None: not clipped). Pure and jittable."""
    from robust_med import augment as augment_lib  # Local import keeps this module light.
    key, own_geometry_key = jax.random.split(key)
    geometry_key = own_geometry_key if geometry_key is None else geometry_key
    out = dict(batch)
    image = out['image']
    geometric = settings.geometric()
    if any(geometric[k] for k in geometric if k != 'elastic_sigma'):
      b, h, w = image.shape[:3]
      warp = augment_lib.sample_warp(geometry_key, b, h, w, **geometric)
      out['image'] = augment_lib.warp_images(warp, image)
      out = self.move_targets(out, warp)
    photometric = settings.photometric()
    if any(photometric.values()):
      out['image'] = augment_lib.intensity(key, out['image'], value_range=value_range,
                                           **photometric)
    return out

  def divergence(self, outputs_a: Any, outputs_b: Any) -> jax.Array:
    """A symmetric per-sample divergence (B,) of two outputs of the model for the same samples
    (RTDA's consistency terms). Default: none; heads that support consistency define it."""
    raise ConfigError(f'The {self.name!r} head defines no divergence between predictions, which '
                      'the rtda consistency terms need: set config.method.consistency_views and '
                      'consistency_adv to 0.')

  # --- Saliency (robust_med.interpret) ---------------------------------------------------------

  def saliency_target(self, outputs: Any, batch: Batch, which: str) -> jax.Array:
    """What a saliency map of each sample explains, (B,) int32: with `which` = 'predicted' the
    model's decision on these outputs, with 'label' the annotated truth. Default: the head has no
    scalar decision to explain."""
    del outputs, batch, which
    raise ConfigError(f'The {self.name!r} head defines no saliency target (Task.saliency_target '
                      'and Task.saliency_score): saliency maps are available for heads that do, '
                      'such as classification.')

  def saliency_score(self, outputs: Any, target: jax.Array) -> jax.Array:
    """The per-sample scalar (B,) whose saliency is mapped, for the `target` of
    `saliency_target` (classification: the target class's logit). Pure and differentiable."""
    del outputs, target
    raise ConfigError(f'The {self.name!r} head defines no saliency score (Task.saliency_score).')

  # --- Certification (robust_med.certify) -----------------------------------------------------

  #: How randomized smoothing aggregates the head's answers (`smoothing_answers`) over noisy
  #: copies of an input: 'vote' (discrete answers: the most frequent, with Cohen et al.'s or
  #: SegCertify's certificates), 'median' (real answers: Chiang et al.'s median smoothing), or ''
  #: (the head defines no certificate).
  smoothing: str = ''
  #: What `certified_metric` gives per sample, for reports.
  certified_metric_name: str = ''

  def smoothing_answers(self, outputs: Any) -> jax.Array:
    """The answers the smoothed model aggregates, from the model's outputs for a batch: with
    smoothing 'vote', integers in [0, `num_answers`) of shape (B, *E) (a class per image or per
    pixel); with 'median', real values (B, *E) (coordinates). Pure."""
    del outputs
    raise self._not_certifiable()

  def num_answers(self, outputs: Any) -> int:
    """How many distinct answers a 'vote' head gives, for these outputs (e.g. the classes)."""
    del outputs
    raise self._not_certifiable()

  def answer_mask(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(N, *E) bool: which answers of each sample belong to it (a 'vote' head's elements tested
    together; e.g. not the padding of `in_image`); None: all of them (the default)."""
    return arrays.get('in_image')

  def certified_metric(self, certified: Mapping[str, np.ndarray],
                       arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The primary metric per sample (N,) that the smoothed model is guaranteed to reach under
    every perturbation within one radius, in the metric's direction (a lower bound when higher is
    better, an upper bound otherwise), from `certified`: with smoothing 'vote', 'answer' (N, *E)
    with `smoothing.ABSTAIN` where no answer is certified (an abstained answer counts as wrong),
    and 'num_answers' (C);
    with 'median', 'lower' and 'upper' (N, *E), bounds of each answer. The same call with
    the uncertified smoothed answers (lower = upper = the median) gives the smoothed model's own
    metric. `arrays`: the split's records."""
    del certified, arrays
    raise self._not_certifiable()

  def draw_certified(self, ax, image: np.ndarray, certified: Mapping[str, Any],
                     item: Mapping[str, np.ndarray]) -> None:
    """Draws one sample's certificate at one radius (`certified`, as in `certified_metric` but
    for this sample alone: 'answer' (*E) and 'num_answers', or 'lower' and 'upper' (*E)) against
    its ground truth (`item`) on the matplotlib axes `ax`, over its clean `image` (H, W, C). Used
    for `certify_examples.png`. Default: the image alone."""
    del certified, item
    show_image(ax, image)

  def smoothed_loss(self, outputs: Any, batch: Batch) -> jax.Array:
    """The smoothed model's per-sample loss (B,) from the outputs on m noisy copies of the batch
    (every leaf with a leading m axis), which SmoothAdv's attack ascends. Pure. Default: the mean
    over copies of the summed loss terms."""
    per_copy = jax.vmap(lambda o: sum(self.loss_terms(o, batch).values()))(outputs)
    return jnp.mean(per_copy, axis=0)

  def _not_certifiable(self) -> ConfigError:
    return ConfigError(f'The {self.name!r} head defines no certificate (Task.smoothing, '
                       'smoothing_answers and certified_metric): certify a classification, '
                       'segmentation, landmark or detection model, or give this head those.')

  # --- Distribution shift ---------------------------------------------------------------------

  def shifted_splits(self, split: str) -> dict[str, dict[str, np.ndarray]]:
    """Other versions of `split` under a natural distribution shift (e.g. the same images at
    another resolution), by name, for the shift report. Default: none."""
    del split
    return {}

  #: The metric the huge-budget masking check drives to `metric_floor()`; '' = the primary one.
  #: A head whose primary metric has no input-independent floor names one that has (detection:
  #: average IoU rewards a flood of false boxes, mAP does not).
  floor_metric: str = ''


def within_image(batch: Batch, x: jax.Array) -> jax.Array:
  """`x` (an attacked version of `batch['image']`) with the pixels outside each sample
  (`batch['in_image']` False: padding) reset to the clean image, so that a perturbation acts only on
  the sample's own pixels and its norm there is at most the attack's; `x` itself when the batch
  has no 'in_image'. Pure and differentiable (no gradient reaches the padding)."""
  valid = batch.get('in_image') if hasattr(batch, 'get') else None
  if valid is None:
    return x
  clean = batch['image']
  return jnp.where(valid[..., None], x, clean)


def show_image(ax, image: np.ndarray) -> None:
  """An (H, W, C) image on `ax`: gray for one channel (the first of several), RGB for three."""
  image = np.asarray(image, np.float32)
  if image.shape[-1] == 3:
    lo, hi = image.min(), image.max()
    ax.imshow((image - lo) / max(hi - lo, 1e-8))
  else:
    ax.imshow(image[..., 0], cmap='gray')
  ax.set_axis_off()


def symmetric_kl(logits_a: jax.Array, logits_b: jax.Array, axis: int = -1) -> jax.Array:
  """KL(p‖q) + KL(q‖p) of the softmax distributions of two logit arrays along `axis`, averaged
  over every other non-batch axis: (B,)."""
  log_p = jax.nn.log_softmax(logits_a, axis=axis)
  log_q = jax.nn.log_softmax(logits_b, axis=axis)
  d = jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=axis)
  return jnp.mean(d.reshape(d.shape[0], -1), axis=1)
