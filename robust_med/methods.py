"""Training methods, independent of the task: each turns per-term, per-sample losses into a loss.

A method is called inside the jitted train step as

    loss, new_margins, metrics = method(objective, x, margins, xi, key)

where `objective.terms(x)` gives the per-term per-sample losses `{name: (B,)}` of the model being
trained (differentiable in its parameters), `objective.attack_loss(x)` gives the summed per-sample
loss with the parameters held constant (what the attacks ascend), `margins` are the per-sample
budgets of the batch (B,), `xi` AMAT's thresholds (`xi_values`: one per term, one on the total, or
one on the head's score) and `key` a PRNG key. Methods without margins return them unchanged.

* `std`: L(f(x), y).
* `sat`: (L(f(x), y) + L(f(x̃), y)) / 2, x̃ = PGD(x, y, ε) with a fixed ε.
* `amat`: the same with x̃ = PGD(x, y, E(i)) for per-sample margins E; afterwards
  E(i) += Δε when the noisy sample is acceptable (enlarge), else E(i) = (‖x̃_i − x_i‖ + E(i)) / 2
  (refine). Acceptable (`xi_mode`): L(f(x̃_i), y_i) < ξ for the summed loss ('sum', the paper's
  rule for nnU-Net's loss, §3.1), every term below its own ξ_k ('per_term', the paper's rule for a
  loss of K terms), or the head's per-sample score above ξ ('score': the authors' nnU-Net code
  tests the sample's Dice against the mean training Dice). Ma & Liang, "Adaptive adversarial
  training to improve adversarial robustness of DNNs for medical image segmentation and
  detection"; docs/fidelity.md compares every setting with the paper and the authors' code.
* `fgsm_aug`: (L(x) + L(x + ε·sign∇L)) / 2; `inverse_fgsm_aug`: (L(x) + L(x − ε·sign∇L)) / 2; and
  `fgsm_both_aug`: (L(x) + L(x + ε·sign∇L) + L(x − ε·sign∇L)) / 3 ("adversarial attack driven data
  augmentation for accurate and robust medical image segmentation").
* `vaft`: L(x) + L(x̃) + λ·(normalised L1 distance of the outputs' DCTs), x̃ = VAFA(x, q_max), the
  frequency-domain adversarial training of Hanif et al. (MICCAI 2023; see `Vaft`).
* `rtda` (robust training with data augmentation): any of PGD adversarial training (ε > 0), an
  input-gradient penalty λ_gr·‖∇ₓL(x)‖₂² (double backprop), and symmetric-KL consistency between
  the predictions on two augmented views (λ_views) and on the clean and adversarial inputs
  (λ_adv); with `method.augment` the trainer augments the batch first (see `Rtda`). Its baselines
  (gradient regularisation alone, AT + gradient regularisation) are `rtda` with parts switched off.

* `advbias`: (L(x) + L(x̃)) / 2 with x̃ the physical perturbation (config.attack.kind, e.g. a
  bias field) of budget ε that most changes the prediction (Chen et al. 2020; see `AdvBias`). SAT
  and AMAT train with a physical attack too when config.attack.kind names one; AMAT's margins are
  then in its unit.

Every method trains on an augmented batch when `config.method.augment` is set: the trainer applies
the head's `Task.augment` before the method sees `x`, so augmentation alone is `std` with it on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import attacks
from robust_med.errors import ConfigError

Terms = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  """The losses a method combines: `terms` trains the model, `attack_loss` drives attacks, and
  `attack_terms` (optional) gives the per-term losses the attacks see (parameters held constant),
  for attacks that watch each term against its threshold."""
  terms: Callable[[jax.Array], Terms]
  attack_loss: Callable[[jax.Array], jax.Array]
  attack_terms: Callable[[jax.Array], Terms] | None = None
  # xi_mode='score': the head's per-sample score (B,) of outputs (`Task.xi_score`), higher better.
  score_of: Callable[[Any], jax.Array] | None = None
  # For methods that compare predictions (consistency): the model's outputs (differentiable in
  # the parameters), the loss terms of given outputs, the head's per-sample divergence of two
  # outputs (B,), and `second_view(key)`, another augmented view of the batch's samples whose
  # outputs are comparable with those on `x` (None when the trainer does not augment).
  outputs: Callable[[jax.Array], Any] | None = None
  terms_of: Callable[[Any], Terms] | None = None
  divergence: Callable[[Any, Any], jax.Array] | None = None
  second_view: Callable[[jax.Array], jax.Array] | None = None
  # For SmoothAdv: the model's outputs with the parameters held constant (what attacks see), and
  # the smoothed model's per-sample loss (B,) from outputs on m noisy copies (a leading m axis):
  # `Task.smoothed_loss`.
  attack_outputs: Callable[[jax.Array], Any] | None = None
  smoothed_loss: Callable[[Any], jax.Array] | None = None


AttackSettings = attacks.PGDSettings  # The training attack; its budget comes from the method.


def total(terms: Terms) -> jax.Array:
  """Per-sample sum of the loss terms, (B,)."""
  return sum(terms[k] for k in sorted(terms))


def stack_terms(terms: Terms) -> jax.Array:
  """Per-sample terms as a (B, K) array in sorted name order (the order of ξ)."""
  return jnp.stack([terms[k] for k in sorted(terms)], axis=-1)


XI_MODES = ('per_term', 'sum', 'score')


def xi_names(term_names, mode: str) -> tuple[str, ...]:
  """The names of AMAT's thresholds under `mode`, in the order of ξ."""
  if mode not in XI_MODES:
    raise ConfigError(f'Unknown config.method.xi_mode {mode!r}: use one of {XI_MODES}.')
  return {'per_term': tuple(sorted(term_names)), 'sum': ('total',), 'score': ('score',)}[mode]


def xi_values(terms: Terms, mode: str, score: jax.Array | None = None, xp=jnp) -> jax.Array:
  """The (B, K') values AMAT compares with its thresholds ξ (K',): a sample is acceptable when
  every value is below its threshold. 'per_term': the K loss terms in sorted name order; 'sum':
  their total (K' = 1); 'score': the negated per-sample score (K' = 1), so that "score above the
  mean score" reads as "value below ξ" (ξ then holds the negated threshold; `xi_display` turns it
  back). `xp=np` computes on the host in the terms' precision."""
  if mode == 'per_term':
    return xp.stack([terms[k] for k in sorted(terms)], axis=-1)
  if mode == 'sum':
    return total(terms)[:, None]
  if mode == 'score':
    if score is None:
      raise ValueError("xi_mode='score' needs the head's per-sample score (Objective.score_of).")
    return -score[:, None]
  raise ConfigError(f'Unknown config.method.xi_mode {mode!r}: use one of {XI_MODES}.')


def xi_display(xi, mode: str) -> np.ndarray:
  """ξ as a reader states it: the thresholds themselves, or for 'score' the score threshold."""
  xi = np.asarray(xi, np.float64)
  return -xi if mode == 'score' else xi


def _term_metrics(prefix: str, terms: Terms) -> dict[str, jax.Array]:
  return {f'{prefix}/{k}': jnp.mean(v) for k, v in terms.items()}


@dataclasses.dataclass(frozen=True)
class Std:
  uses_margins = False
  needs_xi = False

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi, key
    clean = objective.terms(x)
    loss = jnp.mean(total(clean))
    return loss, margins, {'loss': loss, **_term_metrics('clean', clean)}


def clean_and_noisy_loss(objective: Objective, x, x_adv):
  """(L(f(x), y) + L(f(x̃), y)) / 2, the per-term clean and noisy losses, and metrics."""
  clean, noisy = objective.terms(x), objective.terms(x_adv)
  loss = jnp.mean(total(clean) + total(noisy)) / 2
  metrics = {'loss': loss, **_term_metrics('clean', clean), **_term_metrics('noisy', noisy)}
  return loss, clean, noisy, metrics


@dataclasses.dataclass(frozen=True)
class Sat:
  eps: float
  attack: AttackSettings
  uses_margins = False
  needs_xi = False

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi
    loss, _, _, metrics = clean_and_noisy_loss(objective, x, self.attack(
        objective.attack_loss, x, self.eps, key))
    return loss, margins, metrics


@dataclasses.dataclass(frozen=True)
class SmoothAdv:
  """SmoothAdv (Salman et al. 2019, "Provably robust deep learning via adversarially trained
  smoothed classifiers"), for any head: m Gaussian draws δ_j of std σ per sample; x̃ = PGD(x, ε)
  ascending the smoothed model's loss on the copies x̃ + δ_j (`Objective.smoothed_loss`: for
  classification the cross-entropy of the copies' mean class probabilities, their soft smoothed
  classifier; other heads the mean of their loss over the copies), parameters held constant;
  the loss is the mean over j of L(f(x̃ + δ_j), y). The same draws serve the attack and the loss,
  as in the authors' code. The method draws its own noise (`method.noise_sigma` is its σ; the
  trainer adds none)."""
  eps: float
  sigma: float
  samples: int
  attack: AttackSettings
  uses_margins = False
  needs_xi = False
  draws_noise = True

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi
    if objective.attack_outputs is None or objective.smoothed_loss is None:
      raise ValueError('smoothadv needs Objective.attack_outputs and smoothed_loss.')
    noise_key, attack_key = jax.random.split(key)
    draws = [self.sigma * jax.random.normal(k, x.shape, x.dtype)
             for k in jax.random.split(noise_key, self.samples)]
    # A loop over the m draws (not a vmap): each pass keeps the batch's sharding on the mesh.
    stacked = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    smoothed = lambda z: objective.smoothed_loss(
        stacked([objective.attack_outputs(z + d) for d in draws]))
    x_adv = jax.lax.stop_gradient(self.attack(smoothed, x, self.eps, attack_key))
    per_draw = [objective.terms(x_adv + d) for d in draws]
    terms = {k: sum(t[k] for t in per_draw) / self.samples for k in per_draw[0]}
    loss = jnp.mean(total(terms))
    return loss, margins, {'loss': loss, **_term_metrics('noisy', terms),
                           'perturbation_l2': jnp.mean(attacks.perturbation_norm(x_adv - x,
                                                                                 'l2'))}


def amat_margin_update(margins, noisy_terms, xi, perturbation_norms, delta_eps):
  """AMAT's rule: enlarge by Δε where every noisy term is below ξ, else refine.

  Args:
    margins: (B,) current margins E(i).
    noisy_terms: (B, K) per-term losses on the perturbed samples.
    xi: (K,) thresholds.
    perturbation_norms: (B,) ‖x̃_i − x_i‖ in the attack's norm.
    delta_eps: the growth step Δε.
  """
  grow = jnp.all(noisy_terms < xi, axis=-1)
  return jnp.where(grow, margins + delta_eps, (perturbation_norms + margins) / 2)


def margin_update_metrics(margins, new_margins, grow, refine) -> dict[str, jax.Array]:
  """What the update did to the batch: the fraction enlarged (`grow`), the fraction refined
  (`refine`), and the mean change of the refined margins (0 when none was refined)."""
  refined = refine.astype(jnp.float32)
  return {'grow_fraction': jnp.mean(grow.astype(jnp.float32)),
          'refine_fraction': jnp.mean(refined),
          'refine_delta': jnp.sum((new_margins - margins) * refined) / jnp.maximum(
              jnp.sum(refined), 1.0)}


REFINE_RULES = ('paper', 'boundary')


@dataclasses.dataclass(frozen=True)
class Amat:
  """AMAT. `refine` picks how a margin shrinks when the noise was not acceptable:

  * 'paper' (Ma & Liang, as written, and the authors' nnU-Net training loop,
    nnUNetTrainerV2.run_AMAT_iteration): E(i) = (‖x̃_i − x_i‖ + E(i)) / 2 with x̃ the last PGD
    iterate. That iterate lies on the ball's boundary, so this leaves E(i) (nearly) unchanged.
  * 'boundary' (robust_med's option, after the `stop_near_boundary` mode of the authors' library
    function AMAT_check_margin_one_batch, which their published training scripts leave off):
    PGD also remembers the first iterate at which a noisy value reaches its threshold
    (`attacks.boundary_pgd`); E(i) grows by Δε when no iterate did, else
    E(i) = min(E(i), distance of that iterate), which can shrink it.

  `max_margin` > 0 clamps the margins to [0, max_margin] (the authors' `max_margin`).
  `adv_only_correct` (the authors' AMAT_loss): a sample that is not acceptable clean gets no
  adversarial loss and keeps its margin; the loss is
  (mean clean loss + mean noisy loss over the other samples) / 2.
  `xi_mode` picks what "acceptable" tests (`xi_values`); 'score' works with refine='paper' only.
  """
  delta_eps: float
  attack: AttackSettings
  refine: str = 'paper'
  max_margin: float = 0.0
  adv_only_correct: bool = False
  xi_mode: str = 'per_term'
  uses_margins = True
  needs_xi = True

  def _losses(self, objective: Objective, x, x_adv):
    """The loss, the (B, K') values of the clean and noisy samples (no gradient) and metrics."""
    if self.xi_mode != 'score':
      loss, clean, noisy, metrics = clean_and_noisy_loss(objective, x, x_adv)
      values = [jax.lax.stop_gradient(xi_values(t, self.xi_mode)) for t in (clean, noisy)]
      return loss, clean, noisy, values, metrics
    if objective.outputs is None or objective.terms_of is None or objective.score_of is None:
      raise ValueError("xi_mode='score' needs Objective.outputs, terms_of and score_of.")
    out_clean, out_noisy = objective.outputs(x), objective.outputs(x_adv)
    clean, noisy = objective.terms_of(out_clean), objective.terms_of(out_noisy)
    loss = jnp.mean(total(clean) + total(noisy)) / 2
    metrics = {'loss': loss, **_term_metrics('clean', clean), **_term_metrics('noisy', noisy)}
    values = [jax.lax.stop_gradient(xi_values(t, 'score', objective.score_of(o)))
              for t, o in ((clean, out_clean), (noisy, out_noisy))]
    metrics['noisy/score'] = -jnp.mean(values[1])
    return loss, clean, noisy, values, metrics

  def __call__(self, objective: Objective, x, margins, xi, key):
    if self.refine == 'boundary':
      if self.xi_mode == 'score':
        raise ConfigError("config.method.xi_mode = 'score' works with refine='paper' only: set "
                          "--config.method.refine=paper or another xi_mode.")
      if objective.attack_terms is None:
        raise ValueError("refine='boundary' needs Objective.attack_terms.")
      a = self.attack
      # The last iterate is checked on the noisy terms the loss computes there anyway.
      x_adv, x_boundary, crossed = attacks.boundary_pgd(
          lambda z: xi_values(objective.attack_terms(z), self.xi_mode), x, margins, xi,
          norm=a.norm, steps=a.steps, step_size=a.step_size(margins, x),
          key=key if a.random_start else None, clip=a.clip, unroll=a.unroll, check_last=False)
    else:
      x_adv, norms = self.attack.sized(objective.attack_loss, x, margins, key)
    loss, clean, noisy, (clean_v, noisy_v), metrics = self._losses(objective, x, x_adv)
    if self.refine == 'boundary':
      _, x_boundary, crossed = attacks.boundary_finish(x_adv, x_boundary, crossed, noisy_v, xi)
    correct = jnp.ones(x.shape[:1], bool)
    if self.adv_only_correct:
      correct = jnp.all(clean_v < xi, axis=-1)
      weight = correct.astype(x.dtype)
      noisy_mean = jnp.sum(total(noisy) * weight) / jnp.maximum(jnp.sum(weight), 1.0)
      loss = (jnp.mean(total(clean)) + noisy_mean) / 2
      metrics.update(loss=loss, correct_fraction=jnp.mean(weight))
    noisy_k = noisy_v
    if self.refine == 'boundary':
      grow = ~crossed
      distance = attacks.perturbation_norm(x_boundary - x, self.attack.norm)
      new_margins = jnp.where(grow, margins + self.delta_eps, jnp.minimum(margins, distance))
    else:
      grow = jnp.all(noisy_k < xi, axis=-1)
      new_margins = amat_margin_update(margins, noisy_k, xi, norms, self.delta_eps)
    new_margins = jnp.where(correct, new_margins, margins)
    if self.max_margin > 0:
      new_margins = jnp.clip(new_margins, 0.0, self.max_margin)
    metrics.update(margin_mean=jnp.mean(margins), **margin_update_metrics(
        margins, new_margins, grow & correct, ~grow & correct))
    return loss, new_margins, metrics


@dataclasses.dataclass(frozen=True)
class AdvBias:
  """Adversarial data augmentation with a physical perturbation (Chen et al., MICCAI 2020,
  "Realistic adversarial data augmentation for MR image segmentation": AdvBias). The attack's
  parameters (a bias field by default) are chosen within the fixed budget ε to maximise the head's
  divergence between the predictions on the perturbed and on the clean input (`Task.divergence`,
  no label needed); the loss is (L(f(x), y) + L(f(x̃), y)) / 2. Chen et al.'s own settings
  (control-point spacing, magnitude, steps, their semi-supervised consistency term) are not
  copied; docs/physical.md says what is robust_med's."""
  eps: float
  attack: Any
  uses_margins = False
  needs_xi = False

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi
    if objective.attack_outputs is None or objective.divergence is None:
      raise ValueError('advbias needs Objective.attack_outputs and divergence.')
    clean = jax.lax.stop_gradient(objective.attack_outputs(x))
    x_adv = self.attack(lambda z: objective.divergence(objective.attack_outputs(z), clean), x,
                        self.eps, key)
    loss, _, _, metrics = clean_and_noisy_loss(objective, x, x_adv)
    return loss, margins, metrics


@dataclasses.dataclass(frozen=True)
class AttackAugmentation:
  """Clean loss averaged with the losses on one-step (inverse) FGSM copies of the batch."""
  eps: float
  attack_names: tuple[str, ...]
  norm: str = 'linf'
  clip: tuple[float, float] | None = None
  uses_margins = False
  needs_xi = False

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi, key
    clean = objective.terms(x)
    losses = [total(clean)]
    metrics = _term_metrics('clean', clean)
    for name in self.attack_names:
      x_aug = attacks.ATTACKS[name](objective.attack_loss, x, self.eps, norm=self.norm,
                                    clip=self.clip)
      terms = objective.terms(x_aug)
      losses.append(total(terms))
      metrics.update(_term_metrics(name, terms))
    loss = jnp.mean(sum(losses)) / len(losses)
    return loss, margins, {'loss': loss, **metrics}


def input_gradient_penalty(loss_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """‖∇ₓ L_i(x_i)‖₂² per sample (B,) for a per-sample loss `loss_fn(x) -> (B,)`; differentiable
  in whatever `loss_fn` closes over (double backprop). Samples must be independent in the model
  (they are: no batch norm), so the gradient of the summed loss is each sample's own."""
  grad = jax.grad(lambda z: jnp.sum(loss_fn(z)))(x)
  return jnp.sum(jnp.square(grad), axis=tuple(range(1, x.ndim)))


@dataclasses.dataclass(frozen=True)
class Rtda:
  """Robust training with data augmentation, per sample i of an (augmented) batch x:

    L_i = L(x_i) + λ_gr·‖∇ₓL(x_i)‖₂²                          (ε = 0)
    L_i = (L(x_i) + L(x̃_i)) / 2 + λ_gr·‖∇ₓL(x_i)‖₂²           (ε > 0, x̃ = PGD(x, ε))
          + λ_views·D(f(x_i), f(x'_i)) + λ_adv·D(f(x_i), f(x̃_i))

  with D the head's symmetric divergence (`Task.divergence`; the symmetric KL of the class
  probabilities for classification) and x' a second augmented view of the same samples. The loss
  is the batch mean. Parts with a zero weight (or ε = 0) are not computed, so AT + gradient
  regularisation and gradient regularisation alone are this method with parts off.
  """
  eps: float
  attack: AttackSettings
  grad_penalty: float = 0.0
  consistency_views: float = 0.0
  consistency_adv: float = 0.0
  uses_margins = False
  needs_xi = False

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi
    if objective.outputs is None or objective.terms_of is None:
      raise ValueError('rtda needs Objective.outputs and Objective.terms_of.')
    adv_key, view_key = jax.random.split(key)

    def clean_pass(z):
      out = objective.outputs(z)
      terms = objective.terms_of(out)
      return jnp.sum(total(terms)), (out, terms)

    if self.grad_penalty:
      # One forward pass gives the clean loss, the outputs and (by differentiating it again in
      # the parameters) the penalty's gradient.
      grad, (out, clean) = jax.grad(clean_pass, has_aux=True)(x)
      penalty = jnp.sum(jnp.square(grad), axis=tuple(range(1, x.ndim)))
    else:
      _, (out, clean) = clean_pass(x)
      penalty = jnp.zeros(x.shape[:1], x.dtype)
    per_sample = total(clean)
    metrics = _term_metrics('clean', clean)
    if self.eps > 0:
      x_adv = self.attack(objective.attack_loss, x, self.eps, adv_key)
      out_adv = objective.outputs(x_adv)
      noisy = objective.terms_of(out_adv)
      per_sample = (per_sample + total(noisy)) / 2
      metrics.update(_term_metrics('noisy', noisy))
      if self.consistency_adv:
        d_adv = objective.divergence(out, out_adv)
        per_sample = per_sample + self.consistency_adv * d_adv
        metrics['consistency_adv'] = jnp.mean(d_adv)
    if self.grad_penalty:
      per_sample = per_sample + self.grad_penalty * penalty
      metrics['grad_penalty'] = jnp.mean(penalty)
    if self.consistency_views:
      if objective.second_view is None:
        raise ValueError('rtda consistency between views needs an augmenting trainer.')
      d_views = objective.divergence(out, objective.outputs(objective.second_view(view_key)))
      per_sample = per_sample + self.consistency_views * d_views
      metrics['consistency_views'] = jnp.mean(d_views)
    loss = jnp.mean(per_sample)
    return loss, margins, {'loss': loss, **metrics}


def frequency_distance(out_a, out_b) -> jax.Array:
  """Per sample (B,), ‖DCT(a) − DCT(b)‖₁ / ‖DCT(a)‖₁ of two models' outputs: the orthonormal
  DCT-II over each output array's spatial axes (those between the batch and the last), summed
  over every array of the outputs (a pytree: a deep-supervised U-Net's scales too). VAFT's
  frequency consistency (Hanif et al. 2023, Eq. 4)."""
  from jax.scipy import fft as jfft
  num, den = 0.0, 0.0
  for a, b in zip(jax.tree.leaves(out_a), jax.tree.leaves(out_b)):
    axes = tuple(range(1, a.ndim - 1))
    if axes:
      a, b = jfft.dctn(a, axes=axes, norm='ortho'), jfft.dctn(b, axes=axes, norm='ortho')
    summed = lambda v: jnp.sum(jnp.abs(v).reshape(v.shape[0], -1), axis=1)
    num, den = num + summed(a - b), den + summed(a)
  return num / jnp.maximum(den, 1e-12)


@dataclasses.dataclass(frozen=True)
class Vaft:
  """Volumetric adversarial frequency training (Hanif et al., MICCAI 2023, Eq. 3-4; the authors'
  code: asif-hanif/vafa trainer.py, `train_epoch_freq_reg`), per sample i:

    L_i = L(x_i) + L(x̃_i) + λ_fc·‖DCT(f(x_i)) − DCT(f(x̃_i))‖₁ / ‖DCT(f(x_i))‖₁

  with x̃ = VAFA(x, q_max) (`robust_med.vafa`: block-DCT coefficients quantized with adversarial
  steps in [q_min, q_max] grey levels) and the DCT taken over each output's whole spatial extent
  (the authors' code: one 96³ block, their whole patch). One grey level is `grey_level` in input
  units, or, when 0, 1/255 of the clip range (`clip`), else of each batch's 0.5–99.5th
  percentile range (z-scored volumes have no fixed range; the evaluation's frequency attack uses
  the same rule on the evaluated images). Differences from the authors' code: the consistency is
  normalised per sample (theirs: over the batch), the attack maximises the loss alone (theirs
  adds 1 − SSIM), and the loss is the batch mean.
  """
  q_max: float
  attack: Any  # vafa.VAFASettings with grey_level 1: the method rescales the input per batch
  grey_level: float = 0.0
  consistency: float = 1.0
  uses_margins = False
  needs_xi = False

  def _grey(self, x):
    if self.grey_level > 0:
      return jnp.asarray(self.grey_level, x.dtype)
    if self.attack.clip is not None:
      return jnp.asarray((self.attack.clip[1] - self.attack.clip[0]) / 255, x.dtype)
    lo, hi = jnp.percentile(jax.lax.stop_gradient(x), jnp.asarray([0.5, 99.5]))
    spread = (hi - lo) / 255
    return jnp.where(spread > 0, spread, 1 / 255).astype(x.dtype)

  def __call__(self, objective: Objective, x, margins, xi, key):
    del xi, key
    if objective.outputs is None or objective.terms_of is None:
      raise ValueError('vaft needs Objective.outputs and Objective.terms_of.')
    grey = self._grey(x)
    # VAFA on the input in grey levels (its grey_level is 1), the loss on the model's units.
    attack = self.attack
    if attack.clip is not None:
      attack = dataclasses.replace(attack, clip=tuple(c / grey for c in attack.clip))
    x_adv = jax.lax.stop_gradient(
        attack(lambda z: objective.attack_loss(z * grey), x / grey, self.q_max) * grey)
    out, out_adv = objective.outputs(x), objective.outputs(x_adv)
    clean, noisy = objective.terms_of(out), objective.terms_of(out_adv)
    distance = frequency_distance(out, out_adv)
    per_sample = total(clean) + total(noisy) + self.consistency * distance
    loss = jnp.mean(per_sample)
    metrics = {'loss': loss, **_term_metrics('clean', clean), **_term_metrics('noisy', noisy),
               'frequency_consistency': jnp.mean(distance),
               'perturbation_l2': jnp.mean(attacks.perturbation_norm(x_adv - x, 'l2'))}
    return loss, margins, metrics


METHODS = ('std', 'sat', 'amat', 'fgsm_aug', 'inverse_fgsm_aug', 'fgsm_both_aug', 'rtda', 'vaft',
           'smoothadv', 'advbias')
# The methods whose training attack may be a physical perturbation (config.attack.kind).
PHYSICAL_METHODS = ('sat', 'amat', 'advbias')
# The FGSM augmentations and the one-step attacks each adds to the clean batch.
AUGMENTATION_ATTACKS = {'fgsm_aug': ('fgsm',), 'inverse_fgsm_aug': ('inverse_fgsm',),
                        'fgsm_both_aug': ('fgsm', 'inverse_fgsm')}
XI_STATS = ('mean', 'mean+2std')


def build_method(method_config, attack_config, physical_settings: Mapping | None = None):
  """The method named by `method_config.name`, configured from the config; with
  `attack_config.kind` a physical perturbation (`robust_med.physical`), its training attack is PGD
  on that perturbation's parameters (settings `physical_settings`), budgets in its unit."""
  name = method_config.name
  settings = AttackSettings.from_config(attack_config, attack_config.clip)
  kind = attack_config.get('kind', 'pixel')
  if kind != 'pixel':
    from robust_med import physical  # Local import: only physical training attacks need it.
    if name not in PHYSICAL_METHODS:
      raise ConfigError(f'config.attack.kind = {kind!r} is a physical perturbation, which trains '
                        f'with {", ".join(PHYSICAL_METHODS)} only, not {name!r}: pick one of '
                        "those or set --config.attack.kind=pixel.")
    if name == 'amat' and method_config.refine == 'boundary':
      raise ConfigError("config.method.refine = 'boundary' needs a pixel attack: set "
                        "--config.method.refine=paper with config.attack.kind = " f'{kind!r}.')
    settings = physical.PhysicalPGD(
        kind, tuple(sorted((physical_settings or {}).items())), steps=attack_config.steps,
        step_size_factor=attack_config.step_size_factor,
        random_start=attack_config.random_start, clip=settings.clip, unroll=settings.unroll)
  elif name == 'advbias':
    raise ConfigError('config.method.name = advbias perturbs physically: set '
                      '--config.attack.kind to a physical perturbation, e.g. bias_field.')
  if name == 'advbias':
    return AdvBias(eps=method_config.eps, attack=settings)
  if name == 'std':
    return Std()
  if name == 'sat':
    return Sat(eps=method_config.eps, attack=settings)
  if name == 'amat':
    return Amat(delta_eps=method_config.delta_eps, attack=settings,
                refine=method_config.refine, max_margin=method_config.max_margin,
                adv_only_correct=method_config.adv_only_correct,
                xi_mode=method_config.xi_mode)
  if name == 'smoothadv':  # config_base.validate checks σ > 0, ε > 0 and an L2 attack.
    return SmoothAdv(eps=method_config.eps, sigma=method_config.noise_sigma,
                     samples=method_config.get('noise_samples', 1), attack=settings)
  if name == 'rtda':
    return Rtda(eps=method_config.eps, attack=settings, grad_penalty=method_config.grad_penalty,
                consistency_views=method_config.consistency_views,
                consistency_adv=method_config.consistency_adv)
  if name == 'vaft':
    from robust_med import vafa
    block = tuple(int(b) for b in method_config.vafa_block)
    return Vaft(q_max=method_config.q_max, grey_level=method_config.vafa_grey_level,
                consistency=method_config.frequency_consistency,
                attack=vafa.VAFASettings(steps=method_config.vafa_steps,
                                         block=block if len(block) > 1 else block[0],
                                         grey_level=1.0, clip=settings.clip))
  if name in AUGMENTATION_ATTACKS and method_config.get('fgsm_source', 'online') == 'offline':
    return Std()  # The copies are in the training set already (robust_med.offline_augmentation).
  if name in AUGMENTATION_ATTACKS:
    return AttackAugmentation(eps=method_config.eps, attack_names=AUGMENTATION_ATTACKS[name],
                              norm=method_config.fgsm_norm, clip=settings.clip)
  raise ConfigError(f'Unknown method {name!r}: set config.method.name to one of {METHODS}.')


def estimate_xi(clean_terms: Mapping[str, np.ndarray], stat: str = 'mean',
                mode: str = 'per_term', scores: np.ndarray | None = None) -> np.ndarray:
  """AMAT's thresholds from the per-sample clean values V (`xi_values` of the losses, or of the
  `scores`) of a model trained on clean data.

  Returns a (K',) vector in the order of `xi_names`: mean(V_k), or mean(V_k) + 2·std(V_k).
  Call it on training data only.
  """
  if stat not in XI_STATS:
    raise ConfigError(f'Unknown xi statistic {stat!r}: set config.method.xi_stat to one of '
                      f'{XI_STATS}.')
  terms = {k: np.asarray(v, np.float64) for k, v in clean_terms.items()}
  v = xi_values(terms, mode, None if scores is None else np.asarray(scores, np.float64), xp=np)
  xi = v.mean(axis=0)
  if stat == 'mean+2std':
    xi = xi + 2 * v.std(axis=0)
  return xi.astype(np.float32)
