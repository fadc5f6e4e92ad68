"""Randomized smoothing (`robust_med.smoothing`, `robust_med.certify`): certificates with exact
answers — a linear classifier's closed-form radius, Clopper–Pearson and the binomial test against
scipy, Holm by hand, median bounds by hand — and the certify command on a trained run."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from cli_helpers import copy_run, error_line, run
from robust_med import certify, sharding, smoothing
from robust_med.errors import UserError


def test_clopper_pearson_equals_scipy():
  for k, n, alpha in [(0, 10, 0.05), (3, 10, 0.05), (10, 10, 0.01), (990, 1000, 0.001),
                      (57, 100, 0.2)]:
    lo, hi = smoothing.clopper_pearson(k, n, alpha)
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method='exact')
    np.testing.assert_allclose([lo, hi], [ref.low, ref.high], rtol=1e-9, atol=1e-12)
    # CERTIFY's one-sided bound: the two-sided interval's lower end at 2α.
    one = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method='exact')
    np.testing.assert_allclose(smoothing.lower_confidence_bound(k, n, alpha), one.low,
                               atol=1e-12)


def test_predict_abstains_exactly_when_scipys_binomial_test_does():
  rng = np.random.default_rng(0)
  counts = rng.integers(0, 60, size=(300, 3))
  pred = smoothing.predict_votes(counts, 0.05)
  for c, p in zip(counts, pred):
    top, second = np.sort(c)[::-1][:2]
    pvalue = stats.binomtest(int(top), int(top + second), 0.5).pvalue if top + second else 1.0
    assert (p == smoothing.ABSTAIN) == (pvalue > 0.05)
    if p != smoothing.ABSTAIN:
      assert c[p] == top


def test_holm_and_bonferroni_by_hand():
  p = np.array([[0.01, 0.04, 0.03, 0.005], [0.01, 0.02, 0.04, 0.5]])
  # Row 1, sorted: 0.005 ≤ .05/4, 0.01 ≤ .05/3, 0.03 > .05/2: stop. Row 2: 0.01 ≤ .05/4,
  # 0.02 > .05/3: stop.
  np.testing.assert_array_equal(smoothing.rejections(p, 0.05, 'holm'),
                                [[True, False, False, True], [True, False, False, False]])
  np.testing.assert_array_equal(smoothing.rejections(p, 0.05, 'bonferroni'),
                                [[True, False, False, True], [True, False, False, False]])
  # Three hypotheses where Holm rejects all and Bonferroni one.
  q = np.array([0.01, 0.02, 0.04])
  np.testing.assert_array_equal(smoothing.rejections(q, 0.05, 'holm'), [True, True, True])
  np.testing.assert_array_equal(smoothing.rejections(q, 0.05, 'bonferroni'),
                                [True, False, False])
  # Only the valid entries form the family (m = 2 here), and an invalid one is never rejected.
  np.testing.assert_array_equal(
      smoothing.rejections(q, 0.05, 'bonferroni', valid=np.array([True, True, False])),
      [True, True, False])


def test_segcertify_abstains_below_tau_and_matches_cohen_for_one_element():
  sigma, alpha, n = 0.5, 0.01, 1000
  # Counts of 2 answers for 2 elements: the answer's share 0.55 and 0.99.
  counts = np.array([[[450, 550], [10, 990]]])
  r = sigma * special.ndtri(0.6)  # τ = 0.6: 0.55 is below it, 0.99 far above.
  out = smoothing.certify_elements(counts, counts, sigma, alpha, [r])
  np.testing.assert_array_equal(out, [[[smoothing.ABSTAIN, 1]]])
  # With one element per image, SegCertify's test at radius r is CERTIFY's radius ≥ r.
  rng = np.random.default_rng(1)
  select = rng.integers(0, 50, size=(200, 3))
  est = rng.multinomial(n, [0.8, 0.15, 0.05], size=200)[:, rng.permutation(3)]
  answer, radius, _ = smoothing.certify_votes(select, est, sigma, alpha)
  for r in (0.0, 0.1, 0.3, 0.6):
    seg = smoothing.certify_elements(select[:, None], est[:, None], sigma, alpha, [r])[0, :, 0]
    cohen = np.where((answer != smoothing.ABSTAIN) & (radius >= r), answer, smoothing.ABSTAIN)
    agree = seg == cohen
    assert agree.mean() > 0.99  # Disagreement only at the boundary (ties of floating point).


def test_median_bounds_by_hand_and_their_coverage():
  # n = 10, r = 0, α = 0.05: Binom(10, ½) has P(≤ 1) = 0.011 ≤ α < P(≤ 2) = 0.055, so the lower
  # bound is the 2nd smallest; P(≤ 7) = 0.945 < 1 − α ≤ P(≤ 8) = 0.989, so the upper is the 9th.
  samples = np.random.default_rng(2).permutation(np.arange(10.0))
  lower, upper = smoothing.median_bounds(samples, sigma=1.0, radius=0.0, alpha=0.05)
  assert (lower, upper) == (1.0, 8.0)
  # Too few samples for a large radius: unbounded.
  lower, upper = smoothing.median_bounds(samples, sigma=1.0, radius=3.0, alpha=0.05)
  assert lower == -np.inf and upper == np.inf
  # 1-D linear regression f(x) = w·x: under ‖δ‖ ≤ r the smoothed median moves by at most ‖w‖·r,
  # which is exactly the Φ(±r/σ) percentiles of w·(x + N(0, σ²I)); each bound holds with
  # probability ≥ 1 − α over the Monte-Carlo draw.
  rng = np.random.default_rng(3)
  w, x, sigma, r, alpha = np.array([0.6, -0.8]), np.array([1.0, 2.0]), 0.5, 0.4, 0.05
  hi_true, lo_true = w @ x + np.linalg.norm(w) * r, w @ x - np.linalg.norm(w) * r
  misses = np.zeros(2)
  widths = []
  for _ in range(400):
    y = (x + sigma * rng.standard_normal((500, 2))) @ w
    lower, upper = smoothing.median_bounds(y, sigma, r, alpha)
    misses += [lower > lo_true, upper < hi_true]
    widths.append(upper - lower)
  assert np.all(misses / 400 <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / 400))
  assert abs(np.mean(widths) - (hi_true - lo_true)) < 0.2 * (hi_true - lo_true)


class Linear(nn.Module):
  """A linear binary classifier on flattened inputs: logits (0, w·x + b)."""
  w: tuple
  b: float

  @nn.compact
  def __call__(self, x):
    s = x.reshape(x.shape[0], -1) @ jnp.asarray(self.w) + self.b
    return jnp.stack([jnp.zeros_like(s), s], axis=-1)


class VoteTask:
  """The least a head gives certification: its answers and its certified metric."""
  name, smoothing, primary_metric, higher_is_better = 'linear', 'vote', 'accuracy', True
  certified_metric_name = 'certified accuracy'

  def smoothing_answers(self, outputs):
    return jnp.argmax(outputs, axis=-1)

  def num_answers(self, outputs):
    return outputs.shape[-1]

  def answer_mask(self, arrays):
    return None

  def certified_metric(self, certified, arrays):
    return (certified['answer'] == arrays['label']).astype(float)

  def sample_metric_label(self):
    return 'correct'

  def loss_terms(self, outputs, batch):
    import optax
    return {'ce': optax.softmax_cross_entropy_with_integer_labels(outputs, batch['label'])}


def test_certify_radius_of_a_linear_classifier_against_its_closed_form():
  """For f(x) = 1[w·x + b > 0] the smoothed classifier's radius is the distance to the
  hyperplane, |w·x + b| / ‖w‖. CERTIFY's radius is below it, up to α's share of the images,
  and close to it."""
  d, sigma, alpha = 8, 0.5, 0.01
  rng = np.random.default_rng(4)
  w = rng.standard_normal(d)
  w /= np.linalg.norm(w)
  images = rng.standard_normal((256, d, 1, 1)).astype(np.float32) * 0.5
  margin = images.reshape(256, d) @ w + 0.1
  data = {'image': images, 'id': np.arange(256, dtype=np.int32),
          'label': (margin > 0).astype(np.int32)}
  settings = smoothing.SmoothingSettings(sigma=sigma, n=1000, n0=100, alpha=alpha, chunk=250)
  mesh = sharding.make_mesh(1)
  model = Linear(tuple(map(float, w)), 0.1)
  evidence = certify.sample(VoteTask(), model, {}, data, mesh, settings, batch_size=64)
  cert = certify.certificates(VoteTask(), evidence, data, settings, [0.0, 0.25])
  true_radius = np.abs(margin)
  certified = cert['answer'] != smoothing.ABSTAIN
  over = certified & (cert['radius'] > true_radius)
  assert over.mean() <= alpha + 3 * np.sqrt(alpha / 256)
  # The certified class is the base classifier's side of the hyperplane.
  np.testing.assert_array_equal(cert['answer'][certified], data['label'][certified])
  # Far from the plane, 1000 samples bound p_A tightly: the radius is most of the true one.
  far = certified & (true_radius > 0.3) & (true_radius < 1.2)
  assert far.sum() > 50
  assert np.median(cert['radius'][far] / true_radius[far]) > 0.7
  # No radius beyond what n samples can show: σ·Φ⁻¹(α^(1/n)), every sample agreeing.
  limit = smoothing.largest_radius(settings.n, settings.sigma, settings.alpha)
  assert limit == pytest.approx(settings.sigma * special.ndtri(settings.alpha ** (1 / settings.n)))
  assert cert['radius'].max() <= limit + 1e-12
  # Same seed, same images: the same evidence, bit for bit; another seed: other noise.
  again = certify.sample(VoteTask(), model, {}, data, mesh, settings, batch_size=32)
  np.testing.assert_array_equal(again['counts'], evidence['counts'])
  other = certify.sample(VoteTask(), model, {}, data, mesh, settings, seed=1, batch_size=64)
  assert not np.array_equal(other['counts'], evidence['counts'])


@pytest.mark.parametrize('kwargs, words', [
    ({'sigma': 0.0}, 'σ = 0.0'), ({'sigma': -1.0}, 'σ = -1.0'), ({'sigma': 0.5, 'n': 0}, 'n = 0'),
    ({'sigma': 0.5, 'alpha': 1.0}, 'α = 1.0'), ({'sigma': 0.5, 'alpha': 0.0}, 'α = 0.0'),
    ({'sigma': 0.5, 'correction': 'sidak'}, "'sidak'")])
def test_impossible_settings_are_one_clear_error(kwargs, words):
  with pytest.raises(UserError, match=words):
    smoothing.SmoothingSettings(**kwargs)


@pytest.mark.slow
def test_certify_command_on_a_segmentation_run(segmentation_run, tmp_path):
  """The command certifies the tiny synthetic U-Net (SegCertify per pixel) and draws its
  attacked curve beside; bad input is one error line."""
  work = copy_run(segmentation_run, tmp_path / 'run')
  out = tmp_path / 'cert'
  proc = run('robust_med.certify', f'--workdir={work}', '--sigma=0.25', '--n=24', '--n0=8',
             '--chunk=8', '--max_samples=4', '--radii=0,0.1,0.5', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'warning: σ = 0.25 but the model was trained with noise σ = 0' in proc.stderr
  report = json.loads((out / 'certify.json').read_text())
  assert (out / 'certify.png').stat().st_size > 0
  assert (out / 'certify_examples.png').stat().st_size > 0
  assert report['num_samples'] == 4 and report['settings']['correction'] == 'holm'
  rows = report['curve']
  assert [r['radius'] for r in rows] == [0.0, 0.1, 0.5]
  # A larger radius certifies no more: the certified Dice falls and abstention grows.
  dice = [r['certified'] for r in rows]
  assert dice == sorted(dice, reverse=True)
  assert [r['abstained'] for r in rows] == sorted(r['abstained'] for r in rows)
  # With only 24 copies nothing is certified at 2σ: every pixel abstains.
  assert rows[-1]['abstained'] == 1.0
  assert np.asarray(report['per_image']['certified']).shape == (4, 3)
  assert report['attacked']['curve'] == 'worst-case'
  # The consistency check ran at σ/2 and σ with the attack on the smoothed model.
  checks = report['consistency']
  assert [c['radius'] for c in checks] == [0.125, 0.25]
  assert checks[0]['attack']['name'] == 'smoothed-pgd-20' and checks[0]['attack']['norm'] == 'l2'
  assert all(len(c['per_image_violations']) == 4 for c in checks)
  # Bad input: no σ for a model trained without noise; an unknown split.
  line = error_line(run('robust_med.certify', f'--workdir={work}', f'--out={out}'))
  assert 'noise_sigma' in line and '--sigma' in line
  line = error_line(run('robust_med.certify', f'--workdir={work}', '--sigma=0.1',
                        '--split=nope', f'--out={out}'))
  assert "unknown split 'nope'" in line
  line = error_line(run('robust_med.certify', f'--workdir={work}', '--sigma=0.1', '--n=0'))
  assert 'n = 0' in line


def test_heads_certified_metrics_by_hand():
  from robust_med.tasks import landmarks, segmentation
  # Landmarks: the box [lower, upper] (input pixels) ×2 to full resolution, 0.1 mm per pixel;
  # the truth (10, 20) is 2 px from each side: the farthest corner is 0.2·√2 mm away.
  lm = landmarks.Task.__new__(landmarks.Task)
  arrays = {'to_full': np.array([[2.0, 2.0]]), 'spacing': np.array([[0.1, 0.1]]),
            'landmarks_full': np.array([[[10.0, 20.0], [0.0, 0.0]]])}
  lower, upper = np.array([[[4.0, 9.0], [0.0, 0.0]]]), np.array([[[6.0, 11.0], [0.0, 1.0]]])
  got = lm.certified_metric({'lower': lower, 'upper': upper}, arrays)
  np.testing.assert_allclose(got, [(0.2 * np.sqrt(2) + 0.2) / 2])
  upper[0, 1, 1] = np.inf
  assert lm.certified_metric({'lower': lower, 'upper': upper}, arrays)[0] == np.inf
  # Segmentation: labels 0 1 1 0 | answers 0 1 ? ? — class 1 has TP 1, FN 1 (the abstained
  # pixel of class 1) and FP 1 (the abstained background pixel): Dice 2/4. Padding is left out.
  seg = segmentation.Task.__new__(segmentation.Task)
  a = smoothing.ABSTAIN
  arrays = {'label': np.array([[[0, 1, 1, 0]]])}
  certified = {'answer': np.array([[[0, 1, a, a]]]), 'num_answers': 2}
  np.testing.assert_allclose(seg.certified_metric(certified, arrays), [0.5])
  arrays['in_image'] = np.array([[[True, True, True, False]]])
  np.testing.assert_allclose(seg.certified_metric(certified, arrays), [2 / 3])


class Projection(nn.Module):
  """s = w·x with w fixed (a parameter the optimizer may not move: the learning rate is 0)."""

  @nn.compact
  def __call__(self, x):
    w = self.param('w', lambda k, s: jnp.arange(1.0, 1.0 + s[0]) / 4, (x[0].size,))
    return x.reshape(x.shape[0], -1) @ w


class SquareTask:
  """One loss term, s² per sample."""
  loss_term_names = ('sq',)
  outputs_move_with_image = True

  def training_model(self, model):
    return model

  def loss_terms(self, outputs, batch):
    return {'sq': outputs ** 2}

  def xi_score(self, outputs, batch):
    return -outputs ** 2

  def divergence(self, a, b):
    return jnp.zeros(a.shape[0])


@pytest.mark.parametrize('sigma', [0.0, 0.5])
def test_noise_sigma_trains_on_gaussian_copies(sigma):
  """With method.noise_sigma = σ the step's loss is that of x + σ·z, z ~ N(0, I): for s = w·x
  its mean over steps is (w·x)² + σ²‖w‖²; with σ = 0 it is (w·x)² exactly, at every step."""
  import optax
  from robust_med import methods, train
  mesh = sharding.make_mesh(1)
  x = np.linspace(-1, 1, 2 * 6).reshape(2, 3, 2, 1).astype(np.float32)
  batch = {'image': x, 'id': np.arange(2, dtype=np.int32)}
  model, tx = Projection(), optax.sgd(0.0)
  state = train.init_state(model, tx, x, num_train=2, num_xi=1, initial_margin=0.0, seed=0,
                           mesh=mesh)
  w = np.asarray(jax.device_get(state.params['w']))
  step = train.jit_train_step(train.make_train_step(SquareTask(), model, methods.Std(), tx,
                                                    noise_sigma=sigma), state, mesh)
  losses = []
  for _ in range(300):
    state, metrics = step(state, sharding.put_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  clean = np.mean((x.reshape(2, -1) @ w) ** 2)
  expected = clean + sigma ** 2 * np.sum(w ** 2)
  if sigma == 0:
    np.testing.assert_allclose(losses, clean, rtol=1e-6)
  else:
    assert np.std(losses) > 0
    np.testing.assert_allclose(np.mean(losses), expected, rtol=0.1)


def test_the_consistency_check_passes_a_sound_certificate_and_catches_a_false_one(monkeypatch):
  """The attack on the smoothed linear classifier (PGD on the loss averaged over noise) cannot
  beat CERTIFY's radius: no violation. A certificate that claims every image at every radius is
  contradicted wherever the plane is nearer than the radius."""
  d, sigma = 4, 0.5
  w = np.array([0.5, 0.5, 0.5, 0.5])
  rng = np.random.default_rng(5)
  images = rng.standard_normal((64, d, 1, 1)).astype(np.float32) * 0.6
  margin = images.reshape(64, d) @ w
  data = {'image': images, 'id': np.arange(64, dtype=np.int32),
          'label': (margin > 0).astype(np.int32)}
  settings = smoothing.SmoothingSettings(sigma=sigma, n=500, n0=50, alpha=0.001, chunk=250)
  mesh = sharding.make_mesh(1)
  model = Linear(tuple(w), 0.0)
  evidence = certify.sample(VoteTask(), model, {}, data, mesh, settings, batch_size=64)
  rows = certify.consistency(VoteTask(), model, {}, data, mesh, settings, evidence, [0.25, 0.5],
                             steps=10, samples=4, batch_size=64)
  assert [r['radius'] for r in rows] == [0.25, 0.5]
  assert all(r['violating_answers'] == 0 for r in rows)
  # The attack works: the attacked smoothed model is worse than the clean smoothed one.
  assert rows[1]['attacked_smoothed'] < np.mean(data['label'] == (margin > 0)) - 0.2
  claim = lambda task, evidence, settings, radii: [
      {'answer': data['label'], 'num_answers': 2} for _ in radii]
  monkeypatch.setattr(certify, 'certified_at', claim)
  rows = certify.consistency(VoteTask(), model, {}, data, mesh, settings, evidence, [0.5],
                             steps=10, samples=4, batch_size=64)
  near = np.abs(margin) < 0.5 - 0.15  # well inside the radius: the attack crosses the plane
  assert rows[0]['violating_images'] >= near.sum() > 5


def test_a_head_without_a_certificate_is_refused_in_one_line():
  from robust_med.errors import ConfigError
  from robust_med.tasks import base

  class Uncertified(VoteTask):
    smoothing = ''
    _not_certifiable = base.Task._not_certifiable
  task = Uncertified()
  settings = smoothing.SmoothingSettings(sigma=0.5, n=4, n0=2)
  with pytest.raises(ConfigError, match="The 'linear' head defines no certificate"):
    certify.sample(task, Linear((1.0,), 0.0), {}, {'image': np.zeros((2, 1, 1, 1)),
                                                    'id': np.arange(2)},
                   sharding.make_mesh(1), settings)


def test_the_classification_smoothed_loss_is_the_soft_smoothed_classifiers():
  from robust_med.tasks import classification
  task = classification.Task.__new__(classification.Task)
  logits = np.random.default_rng(6).standard_normal((3, 2, 4)).astype(np.float32)  # m, B, K
  label = np.array([1, 3])
  got = task.smoothed_loss(jnp.asarray(logits), {'label': jnp.asarray(label)})
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  want = -np.log(probs.mean(axis=0)[np.arange(2), label])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_smoothadv_ascends_the_smoothed_loss_within_its_budget():
  """SmoothAdv's copies x̃ + δ_j: with ε > 0 the training loss on them exceeds that on x + δ_j
  (same draws, ε = 0), and x̃ stays within ε of x (L2)."""
  from robust_med import attacks, methods
  d = 6
  w = np.linspace(-1, 1, d)
  model = Linear(tuple(w), 0.2)
  x = jnp.asarray(np.random.default_rng(7).standard_normal((5, d, 1, 1)), jnp.float32)
  batch = {'label': jnp.asarray([0, 1, 1, 0, 1])}
  task = VoteTask()
  out = lambda z: model.apply({'params': {}}, z)
  objective = methods.Objective(
      terms=lambda z: task.loss_terms(out(z), batch), attack_loss=None, attack_outputs=out,
      smoothed_loss=lambda o: jnp.mean(jax.vmap(lambda oj: task.loss_terms(oj, batch)['ce'])(o),
                                       axis=0))
  pgd = attacks.PGDSettings(norm='l2', steps=10)
  key = jax.random.key(0)
  losses = {}
  for eps in (0.0, 0.5):
    method = methods.SmoothAdv(eps=eps, sigma=0.25, samples=4, attack=pgd)
    losses[eps], _, metrics = method(objective, x, jnp.zeros(5), None, key)
    assert float(metrics['perturbation_l2']) <= eps + 1e-5
  assert float(losses[0.5]) > float(losses[0.0]) + 0.05


def test_the_detection_certificate_by_hand():
  """One anchor point, class score in [0.5, 0.6], box corners within 1 px: inner box
  (1, 1, 10, 10), outer (0, 0, 11, 11). Against the box (0, 0, 10, 10) the IoU is at least
  81 / (100 + 121 − 81); the far box gets 0; a score that may fall below the threshold, 0."""
  from robust_med import config_base
  from robust_med.tasks import detection
  task = detection.Task(config_base.task_config('detection'))
  assert task.config.detection.score_threshold == 0.25
  lower = np.array([[[0.5, 0.0, 0.0, 10.0, 10.0]]])
  upper = np.array([[[0.6, 1.0, 1.0, 11.0, 11.0]]])
  arrays = {'boxes': np.array([[[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]]),
            'labels': np.array([[0, 0]]), 'valid': np.array([[True, True]])}
  got = task.certified_metric({'lower': lower, 'upper': upper}, arrays)
  np.testing.assert_allclose(got, [81 / 140 / 2])
  arrays['valid'] = np.array([[True, False]])
  np.testing.assert_allclose(task.certified_metric({'lower': lower, 'upper': upper}, arrays),
                             [81 / 140])
  lower[0, 0, 0] = 0.2
  assert task.certified_metric({'lower': lower, 'upper': upper}, arrays)[0] == 0.0
  upper[0, 0, 3] = np.inf  # unbounded: no IoU can be certified
  lower[0, 0, 0] = 0.5
  assert task.certified_metric({'lower': lower, 'upper': upper}, arrays)[0] == 0.0


class MedianTask(VoteTask):
  """A 'median' head: the answer is the model's real output s = w·x; its certified metric is the
  upper bound (a regression error bound would be |bound − truth|; the bound itself is enough)."""
  smoothing, higher_is_better = 'median', False

  def smoothing_answers(self, outputs):
    return outputs[:, 1:]  # (B, 1)

  def certified_metric(self, certified, arrays):
    return np.asarray(certified['upper'])[:, 0]


def test_median_smoothing_through_the_sampler_bounds_a_linear_regression():
  """Each image's certified upper bound at radius r covers w·x + ‖w‖·r (the smoothed median's
  largest value under ‖δ‖ ≤ r) for all but about α of the images, and is close to it."""
  d, sigma, alpha, r = 5, 0.5, 0.01, 0.25
  w = np.array([0.2, -0.4, 0.4, 0.2, -0.8])
  rng = np.random.default_rng(8)
  images = rng.standard_normal((128, d, 1, 1)).astype(np.float32)
  data = {'image': images, 'id': np.arange(128, dtype=np.int32)}
  settings = smoothing.SmoothingSettings(sigma=sigma, n=2000, n0=1, alpha=alpha, chunk=500)
  task = MedianTask()
  evidence = certify.sample(task, Linear(tuple(w), 0.0), {}, data, sharding.make_mesh(1),
                            settings, batch_size=64)
  assert evidence['samples'].shape == (128, 2000, 1)
  cert = certify.certificates(task, evidence, data, settings, [r])
  truth = images.reshape(128, d) @ w + np.linalg.norm(w) * r
  upper = cert['metric'][:, 0]
  assert np.mean(upper < truth) <= alpha + 3 * np.sqrt(alpha / 128)
  assert np.median(upper - truth) < 0.15 * np.linalg.norm(w)
  np.testing.assert_allclose(cert['smoothed'], images.reshape(128, d) @ w, atol=0.1)


@pytest.mark.slow
def test_a_sweep_certifies_every_finished_model_once(segmentation_run, tmp_path):
  """`sweep --certify` over a sweep folder: each finished run certified into its own folder,
  the table written, an unfinished run named, and a second call reuses the certificates."""
  from robust_med import sweep
  work = tmp_path / 'sweep'
  copy_run(segmentation_run, work / 'std')
  (work / 'sweep.json').write_text(json.dumps({'shared': {}, 'runs': [
      {'name': 'std', 'label': 'STD', 'seed': 0}, {'name': 'sat', 'label': 'SAT', 'seed': 0}]}))
  said = []
  rows = sweep.certify_runs(str(work), sigma=0.25, n=16, n0=8, max_samples=2, log=said.append)
  assert [r['run'] for r in rows] == ['std']
  assert any('sat: not finished' in s for s in said)
  assert (work / 'std' / 'certify' / 'val' / 'certify.json').exists()
  table = (work / 'certify.md').read_text()
  assert '| STD | 0 | 0.25 | 16 |' in table
  csv = (work / 'certify.csv').read_text().splitlines()
  assert csv[0] == 'run,model,seed,sigma,radius,certified,abstained' and len(csv) > 2
  said.clear()
  sweep.certify_runs(str(work), sigma=0.25, n=16, n0=8, max_samples=2, log=said.append)
  assert any('certified already' in s for s in said)


def test_each_head_draws_its_certificate():
  """certify_examples.png's cells: an abstention is said, abstained pixels are magenta, each
  bounded landmark gets its box and an unbounded one a cross, a certainly detected box its
  inner and outer boxes and an undetected one is red."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from matplotlib.colors import to_rgba
  from matplotlib.patches import Rectangle
  from robust_med import config_base
  from robust_med.tasks import classification, detection, landmarks, segmentation
  image = np.zeros((12, 12, 1), np.float32)
  a = smoothing.ABSTAIN

  def axes():
    return plt.subplots()[1]
  task = classification.Task(config_base.task_config('classification'))
  ax = axes()
  task.draw_certified(ax, image, {'answer': np.int64(a), 'num_answers': 2},
                      {'label': np.int64(1)})
  assert 'certified abstain' in ax.texts[0].get_text()
  seg = segmentation.Task.__new__(segmentation.Task)
  answer = np.zeros((12, 12), np.int64)
  answer[2:4, 2:4], answer[8, 8] = 1, a
  ax = axes()
  seg.draw_certified(ax, image, {'answer': answer, 'num_answers': 2},
                     {'label': (answer == 1).astype(np.int64)})
  overlay = np.asarray(ax.images[-1].get_array())
  np.testing.assert_allclose(overlay[8, 8], (1, 0, 1, 0.7))
  assert overlay[2, 2, 3] == pytest.approx(0.4) and overlay[0, 0, 3] == 0
  lm = landmarks.Task.__new__(landmarks.Task)
  lower = np.array([[1.0, 1.0], [5.0, 5.0], [0.0, -np.inf]])
  upper = np.array([[3.0, 2.0], [6.0, 7.0], [1.0, 1.0]])
  ax = axes()
  lm.draw_certified(ax, image, {'lower': lower, 'upper': upper},
                    {'landmarks': np.array([[2.0, 1.5], [5.5, 6.0], [0.5, 0.5]])})
  boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
  assert sorted((p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in boxes) == [
      (1.0, 1.0, 2.0, 1.0), (5.0, 5.0, 1.0, 2.0)]
  assert len(ax.collections) == 2  # the truths, and one cross for the unbounded landmark
  det = detection.Task(config_base.task_config('detection'))
  ax = axes()
  det.draw_certified(ax, image, {'lower': np.array([[0.5, 0.0, 0.0, 0.0, 10.0, 10.0]]),
                                 'upper': np.array([[0.6, 0.1, 1.0, 1.0, 11.0, 11.0]])},
                     {'boxes': np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 6.0, 6.0]]),
                      'labels': np.array([0, 1]), 'valid': np.array([True, True])})
  drawn = {(tuple(np.round(p.get_xy(), 3)), p.get_width(), p.get_edgecolor()) for p in ax.patches}
  assert ((1.0, 1.0), 9.0, to_rgba('orange')) in drawn    # inner box
  assert ((0.0, 0.0), 11.0, to_rgba('orange')) in drawn   # outer box
  assert ((5.0, 5.0), 1.0, to_rgba('red')) in drawn       # class 1: no anchor certainly detects it
  assert ax.texts[0].get_text() == f'{81 / 140:.2f}'
  plt.close('all')


def test_a_sampler_is_made_once_per_settings():
  """The certificate and the consistency check share one Sampler (and its compilations)."""
  task, model = VoteTask(), Linear(w=(1.0,), b=0.0)
  a = certify.sampler_for(task, model, 0.25, 8)
  assert certify.sampler_for(task, model, 0.25, 8) is a
  assert certify.sampler_for(task, model, 0.5, 8) is not a
  assert certify.sampler_for(VoteTask(), model, 0.25, 8) is not a


@pytest.mark.parametrize('config_file', ['configs/bccd_std_noise.py', 'configs/ceph_std_noise.py'])
def test_losses_and_answers_keep_the_batch_on_its_devices(config_file):
  """Compiled on 2 devices, a head's loss (which the smoothed attack ascends) and its smoothed
  answers move no data between devices. A vmapped `top_k` in the detection loss and a scatter
  over the whole batch in the landmark decoder did: XLA gathered the batch, and a certification
  on 2 host devices under load hung in that collective."""
  import re

  from robust_med.sweep import load_config_file
  from robust_med.tasks import get_task_class
  config = load_config_file(f'{config_file}:synthetic')
  task = get_task_class(config.task)(config)
  data, info = task.load_split('val')
  model = task.build_model(info)
  mesh = sharding.make_mesh(2)
  batch = sharding.put_batch({k: v[:2] for k, v in data.items()}, mesh)
  shapes = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                          batch['image'])
  outputs = sharding.put_batch(jax.tree.map(lambda s: np.random.default_rng(0).normal(
      size=s.shape).astype(np.float32), shapes), mesh)
  for fn in (task.loss_terms, lambda o, b: task.smoothing_answers(o)):
    compiled = jax.jit(fn).lower(outputs, batch).compile()
    moves = re.findall(r'all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter',
                       compiled.as_text())
    assert not moves, moves
