"""Segmentation metrics and the evaluator's chunked PGD."""

import jax
import numpy as np
import pytest

from robust_med import apgd, attacks, methods, sharding, square
from robust_med.evaluate import Evaluator, worst_per_sample
from robust_med.tasks import segmentation
from tiny import tiny_config


def untrained_segmenter():
  """The tiny config's task, validation set, U-Net and initial parameters."""
  task = segmentation.Task(tiny_config('std'))
  data, info = task.load_split('val')
  model = task.build_model(info)
  return task, data, model, model.init(jax.random.key(0), data['image'][:1])['params']


def test_adi_and_tvdi_by_hand():
  # Two samples, one foreground class. Sample 0: TP 1, FP 1, FN 0 → 2/3. Sample 1: TP 3, FN 1 → 6/7.
  tp, fp, fn = np.array([[1], [3]]), np.array([[1], [0]]), np.array([[0], [1]])
  m = segmentation.dice_metrics(tp, fp, fn, ('organ',))
  assert m['adi'] == pytest.approx((2 / 3 + 6 / 7) / 2)
  assert m['tvdi'] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
  assert m['adi/organ'] == m['adi']


def test_absent_class_is_left_out_of_adi():
  # Class 2 is absent from sample 0 (0/0) and perfect in sample 1.
  tp = np.array([[2, 0], [1, 5]])
  fp = np.array([[0, 0], [1, 0]])
  fn = np.array([[0, 0], [0, 0]])
  m = segmentation.dice_metrics(tp, fp, fn)
  assert m['adi/class2'] == 1.0
  assert m['adi/class1'] == pytest.approx((1 + 2 / 3) / 2)


def test_confusion_counts_match_numpy():
  rng = np.random.default_rng(0)
  pred, labels = rng.integers(0, 3, (4, 8, 8)), rng.integers(0, 3, (4, 8, 8))
  c = jax.device_get(segmentation.confusion_counts(pred, labels, 3))
  for k in (1, 2):
    assert (c['tp'][:, k - 1] == ((pred == k) & (labels == k)).sum((1, 2))).all()
    assert (c['fp'][:, k - 1] == ((pred == k) & (labels != k)).sum((1, 2))).all()
    assert (c['fn'][:, k - 1] == ((pred != k) & (labels == k)).sum((1, 2))).all()


def test_losses_are_per_sample_and_low_for_a_perfect_prediction():
  labels = np.zeros((2, 8, 8), np.int32)
  labels[0, 2:5, 2:5] = 1
  perfect = 20.0 * jax.nn.one_hot(labels, 2)
  wrong = 20.0 * jax.nn.one_hot(1 - labels, 2)
  assert segmentation.soft_dice_loss(perfect, labels).shape == (2,)
  assert float(segmentation.soft_dice_loss(perfect, labels)[0]) < 1e-3
  assert float(segmentation.soft_dice_loss(wrong, labels)[0]) > 0.95
  assert float(segmentation.cross_entropy_loss(perfect, labels)[0]) < 1e-6


@pytest.mark.parametrize('norm, attack', [('l2', 'pgd'), ('linf', 'pgd'), ('l2', 'apgd'),
                                          ('linf', 'square')])
def test_chunked_evaluation_attack_equals_one_call(norm, attack):
  """The evaluator's host loop over jitted chunks is the same attack as one call."""
  task, data, model, params = untrained_segmenter()
  mesh = sharding.make_mesh(2)
  settings = {'pgd': lambda: attacks.PGDSettings(norm=norm, steps=13),
              'apgd': lambda: apgd.APGDSettings(norm=norm, steps=13),
              'square': lambda: square.SquareSettings(queries=14, p_init=0.3)}[attack]()
  evaluator = Evaluator(task, model, mesh, settings, batch_size=8, progress=False)
  evaluator.chunk = 5  # 5 + 5 + 3 steps.
  batch = {k: v[:8] for k, v in data.items()}
  key = jax.random.key(3)
  got = evaluator.perturb(params, sharding.put_batch(batch, mesh), 0.7, key)
  loss = lambda x: methods.total(task.loss_terms(model.apply({'params': params}, x), batch))
  want = jax.jit(lambda x: settings(loss, x, 0.7, key=key, unroll=False))(batch['image'])
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  norms = attacks.perturbation_norm(got - batch['image'], norm)
  assert float(norms.max()) <= 0.7 + 1e-5 and float(norms.min()) > 0.5


def test_evaluator_metrics_fall_under_attack_and_ignore_padding():
  task, data, model, params = untrained_segmenter()
  evaluator = Evaluator(task, model, sharding.make_mesh(8), attacks.PGDSettings(steps=5),
                        batch_size=24, progress=False)  # 16 samples padded to one batch of 24.
  rows = evaluator.run(params, data, (0.0, 3.0))
  assert [r['eps'] for r in rows] == [0.0, 3.0]
  assert rows[1]['loss'] > rows[0]['loss']
  clean = evaluator.run(params, {k: v[:16] for k, v in data.items()}, (0.0,))
  assert clean[0]['adi'] == pytest.approx(rows[0]['adi'])


def test_capped_evaluation_spreads_over_the_split():
  from robust_med.evaluate import evaluation_subset
  arrays = {'id': np.arange(100), 'image': np.arange(100) * 2}
  sub = evaluation_subset(arrays, 10)
  assert len(sub['id']) == 10 and sub['id'][0] == 0 and sub['id'][-1] == 99
  assert len(set(sub['id'])) == 10 and (sub['image'] == sub['id'] * 2).all()
  assert evaluation_subset(arrays, 0) is arrays


def test_worst_case_takes_each_sample_from_its_worst_attack():
  task = segmentation.Task(tiny_config('std'))
  # Three samples, two attacks, one class: per-sample Dice 2tp/(2tp+fp+fn).
  a = {'tp': np.array([[4], [1], [2]]), 'fp': np.array([[0], [3], [2]]),
       'fn': np.array([[0], [0], [0]]), 'loss': np.array([0.1, 0.9, 0.5])}
  b = {'tp': np.array([[1], [4], [2]]), 'fp': np.array([[3], [0], [2]]),
       'fn': np.array([[0], [0], [0]]), 'loss': np.array([0.8, 0.2, 0.7])}
  worst, index = worst_per_sample(task, [a, b])
  # Sample 0: b is worse; sample 1: a is worse; sample 2: a tie in Dice, b has the higher loss.
  assert index.tolist() == [1, 0, 1]
  assert worst['tp'][:, 0].tolist() == [1, 1, 2] and worst['loss'].tolist() == [0.8, 0.9, 0.7]
  per_sample = task.sample_scores(worst)
  for s in (a, b):
    assert (per_sample <= task.sample_scores(s) + 1e-12).all()
  assert task.summarize(worst)['adi'] <= min(task.summarize(s)['adi'] for s in (a, b))


def test_evaluator_reports_every_attack_and_their_worst_case():
  task, data, model, params = untrained_segmenter()
  pgd, ap = attacks.PGDSettings(steps=3), apgd.APGDSettings(steps=3)
  evaluator = Evaluator(task, model, sharding.make_mesh(8), (pgd, ap), batch_size=8,
                        progress=False)
  curves = evaluator.curves(params, data, (0.0, 2.0))
  assert list(curves) == ['pgd-3', 'apgd-3', 'worst-case']
  assert curves['pgd-3'][0]['adi'] == curves['apgd-3'][0]['adi'] == curves['worst-case'][0]['adi']
  worst = curves['worst-case'][1]
  assert sum(worst['worst_of'].values()) == len(data['id'])
  assert worst['loss'] >= max(curves['pgd-3'][1]['loss'], curves['apgd-3'][1]['loss']) - 1e-6 or \
      worst['adi'] <= min(curves['pgd-3'][1]['adi'], curves['apgd-3'][1]['adi'])
  assert evaluator.run(params, data, (0.0, 2.0)) == curves['pgd-3']


def test_restarts_keep_each_samples_worst_run():
  task, data, model, params = untrained_segmenter()
  mesh = sharding.make_mesh(2)
  batch = sharding.put_batch({k: v[:8] for k, v in data.items()}, mesh)
  one, two = apgd.APGDSettings(steps=3), apgd.APGDSettings(steps=3, restarts=2)
  evaluator = Evaluator(task, model, mesh, one, batch_size=8, progress=False)
  key = jax.random.key(5)
  stats = lambda x: jax.device_get(evaluator._stats(params, batch, x))
  single = stats(evaluator.perturb(params, batch, 1.0, key, one))
  best = stats(evaluator.perturb(params, batch, 1.0, key, two))
  # Per sample, the worst-case rule: a score never above the first run's, a loss never below
  # it where the scores tie.
  s1, s2 = task.sample_scores(single), task.sample_scores(best)
  assert (s2 <= s1 + 1e-9).all()
  tie = np.isclose(s1, s2)
  assert (best['loss'][tie] >= single['loss'][tie] - 1e-6).all()
  assert (s2 < s1 - 1e-9).any() or (best['loss'] > single['loss'] + 1e-6).any()
  assert two.describe()['restarts'] == 2


def test_apgd_t_attacks_each_most_likely_wrong_class_and_keeps_the_worst():
  import flax.linen as nn
  from robust_med.tasks import classification
  from test_classification import synthetic_config

  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(5)(x.reshape(x.shape[0], -1))

  task = classification.Task(synthetic_config())
  rng = np.random.default_rng(0)
  data = {'image': rng.uniform(size=(16, 6, 6, 1)).astype(np.float32),
          'label': rng.integers(0, 5, 16).astype(np.int32), 'id': np.arange(16, dtype=np.int32)}
  model = Linear()
  params = model.init(jax.random.key(1), data['image'][:1])['params']
  mesh = sharding.make_mesh(2)
  batch = sharding.put_batch(data, mesh)
  one = apgd.APGDSettings(norm='linf', steps=5, objective='dlr', targets=1, clip=(0.0, 1.0))
  four = apgd.APGDSettings(norm='linf', steps=5, objective='dlr', targets=9, clip=(0.0, 1.0))
  assert four.describe()['name'] == 'apgd-t-dlr-5' and four.describe()['targets'] == 9
  evaluator = Evaluator(task, model, mesh, one, batch_size=16, progress=False)
  key = jax.random.key(2)
  scores = lambda a: task.sample_scores(jax.device_get(evaluator._stats(
      params, batch, evaluator.perturb(params, batch, 0.05, key, a))))
  first, all_targets = scores(one), scores(four)  # 9 asked, 4 wrong classes exist
  assert (all_targets <= first + 1e-9).all() and (all_targets < first - 1e-6).any()
  clean = task.sample_scores(jax.device_get(evaluator._stats(params, batch, batch['image'])))
  correct = clean > 0  # the targeted DLR objective hurts every correctly classified sample
  assert correct.sum() >= 4 and (first[correct] < clean[correct]).all()


def test_example_levels_are_clean_middle_and_largest():
  from robust_med.evaluate import example_levels
  assert example_levels((0.0, 1.0, 3.0, 5.0, 7.0)) == [0.0, 3.0, 7.0]
  assert example_levels((0.0, 2.0)) == [0.0, 2.0]
  assert example_levels((0.0,)) == [0.0]


def test_examples_draw_each_sample_clean_and_attacked_through_the_task(tmp_path):
  from robust_med.evaluate import write_examples
  task, data, model, params = untrained_segmenter()
  calls = []

  class Spy(type(task)):
    def draw(self, ax, image, outputs, item):
      calls.append((np.array(image), np.array(outputs), int(item['id'])))
      super().draw(ax, image, outputs, item)

  spy = Spy(task.config)
  spy.class_names = ('zone1', 'zone2')
  evaluator = Evaluator(spy, model, sharding.make_mesh(8), attacks.PGDSettings(steps=3),
                        batch_size=8, progress=False)
  path = tmp_path / 'examples.png'
  write_examples(evaluator, params, data, (0.0, 0.5, 1.0, 2.0), str(path), num=3)
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and not (tmp_path / 'examples.png.tmp').exists()
  # 3 samples spread over the 16 (first, middle, last) × clean, ε=1 (middle), ε=2 (largest).
  assert [c[2] for c in calls] == [i for i in (0, 8, 15) for _ in range(3)]
  for s in range(3):
    clean, mid, top = calls[3 * s:3 * s + 3]
    np.testing.assert_array_equal(clean[0], data['image'][clean[2]])
    for (image, outputs, _), eps in ((mid, 1.0), (top, 2.0)):
      norm = float(np.linalg.norm(image - clean[0]))
      assert 0.5 * eps < norm <= eps + 1e-4
      assert outputs.shape == (16, 16, 3)
      want = model.apply({'params': params}, image[None])[0]
      np.testing.assert_allclose(outputs, np.asarray(want), atol=1e-4)


def test_pgds_differing_in_steps_share_one_compiled_loop():
  """PGD's step count and step-size factor are traced: the report's PGD-100, weak PGD-20 and
  huge-ε PGD compile one loop, and each still equals its own one-call attack."""
  task, data, model, params = untrained_segmenter()
  mesh = sharding.make_mesh(2)
  long, short = attacks.PGDSettings(steps=7), attacks.PGDSettings(steps=3, step_size_factor=2.0)
  evaluator = Evaluator(task, model, mesh, [long, short], batch_size=8, progress=False)
  batch = {k: v[:8] for k, v in data.items()}
  loss = lambda x: methods.total(task.loss_terms(model.apply({'params': params}, x), batch))
  for settings in (long, short):
    got = evaluator.perturb(params, sharding.put_batch(batch, mesh), 0.7, None, settings)
    want = jax.jit(lambda x: settings(loss, x, 0.7, unroll=False))(batch['image'])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
  assert evaluator._loop._cache_size() == 1
