"""The classification head: metrics against scikit-learn, per-sample scores, class weights, the
model's per-sample independence, configs, and a short run of the synthetic demo end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import config_base
from robust_med.presets import classification as presets
from robust_med.errors import ConfigError
from robust_med.models.resnet import ResNetClassifier
from robust_med.tasks import classification

sklearn_metrics = pytest.importorskip('sklearn.metrics')


def random_probs(rng, n, k):
  logits = rng.normal(size=(n, k)) * 2
  p = np.exp(logits)
  return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize('k', [2, 3, 4])
def test_metrics_match_scikit_learn(k):
  rng = np.random.default_rng(k)
  probs = random_probs(rng, 60, k)
  labels = rng.integers(0, k, size=60)
  # Ties in the scores, and a prediction for a class: AUC must average tied ranks.
  probs[:10] = probs[10:20]
  labels[:10] = rng.integers(0, k, size=10)
  m = classification.classification_metrics(probs, labels, tuple(f'c{i}' for i in range(k)))
  pred = probs.argmax(1)
  assert m['accuracy'] == pytest.approx(sklearn_metrics.accuracy_score(labels, pred))
  assert m['balanced_accuracy'] == pytest.approx(
      sklearn_metrics.balanced_accuracy_score(labels, pred))
  if k == 2:
    expected_auc = sklearn_metrics.roc_auc_score(labels, probs[:, 1])
  else:
    expected_auc = sklearn_metrics.roc_auc_score(labels, probs, multi_class='ovr',
                                                 average='macro')
  assert m['auc'] == pytest.approx(expected_auc, rel=1e-10)
  recalls = sklearn_metrics.recall_score(labels, pred, average=None, labels=list(range(k)))
  for i in range(k):
    assert m[f'sensitivity/c{i}'] == pytest.approx(recalls[i])


def test_binary_auc_of_a_perfect_and_a_useless_ranking():
  labels = np.array([0, 0, 1, 1])
  assert classification.binary_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels == 1) == 1.0
  assert classification.binary_auc(np.full(4, 0.5), labels == 1) == 0.5
  assert np.isnan(classification.binary_auc(np.ones(3), np.ones(3, bool)))


def test_balanced_class_weights_equalise_the_classes():
  labels = np.array([0] * 10 + [1] * 90)
  w = classification.balanced_class_weights(labels, 3)
  np.testing.assert_allclose(w[:2], [100 / 20, 100 / 180])
  assert w[2] == 0
  assert w[labels].mean() == pytest.approx(1.0)
  np.testing.assert_allclose(np.bincount(labels, w[labels])[:2], [50, 50])


def synthetic_config(**changes):
  c = presets.classification_config('busi', 'std', 'synthetic')
  for k, v in changes.items():
    section, key = k.split('.')
    c[section][key] = v
  return c


def test_sample_scores_are_the_probability_margin_and_negative_iff_wrong():
  task = classification.Task(synthetic_config())
  probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.4, 0.35, 0.25]])
  labels = np.array([0, 0, 1])
  scores = task.sample_scores({'probs': probs, 'label': labels})
  np.testing.assert_allclose(scores, [0.5, -0.3, -0.05])
  assert np.all((scores < 0) == (probs.argmax(1) != labels))
  # The per-sample metric the paired comparisons use averages to the accuracy.
  correct = task.sample_metric({'probs': probs, 'label': labels})
  np.testing.assert_array_equal(correct, [1, 0, 0])
  assert correct.mean() == task.summarize({'probs': probs, 'label': labels})['accuracy']


def test_class_weights_apply_to_the_training_split_only():
  task = classification.Task(synthetic_config(**{'classification.class_weights': 'balanced'}))
  train, _ = task.load_split('train')
  val, _ = task.load_split('val')
  counts = np.bincount(train['label'])
  np.testing.assert_allclose(np.bincount(train['label'], train['weight']),
                             np.full(len(counts), len(train['label']) / len(counts)), rtol=1e-5)
  np.testing.assert_array_equal(val['weight'], 1.0)
  logits = jnp.zeros((2, 3))
  terms = task.loss_terms(logits, {'label': jnp.array([0, 1]), 'weight': jnp.array([2.0, 0.5])})
  np.testing.assert_allclose(terms['ce'], np.log(3) * np.array([2.0, 0.5]), rtol=1e-6)


def test_resnet_keeps_samples_independent():
  model = ResNetClassifier(num_classes=3, base_width=8, blocks=1, stages=3)
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 1))
  params = model.init(jax.random.key(1), x[:1])['params']
  out = model.apply({'params': params}, x)
  assert out.shape == (4, 3)
  changed = model.apply({'params': params}, x.at[1:].set(0.0))
  np.testing.assert_allclose(out[0], changed[0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[1], changed[1])


@pytest.mark.parametrize('changes,words', [
    ({'classification.class_weights': 'inverse'}, 'class_weights'),
    ({'data.image_size': 2}, 'total stride'),
    ({'data.tune_fraction': 0.2}, 'tune split'),
    ({'shift.corruptions': ('fog',)}, 'fog'),
    ({'shift.severities': (1, 6)}, '6'),
])
def test_config_errors(changes, words):
  with pytest.raises(ConfigError, match=words):
    config_base.validate(synthetic_config(**changes))


@pytest.mark.parametrize('dataset', sorted(presets.CLASSIFICATION))
@pytest.mark.parametrize('method', sorted(presets.CLASSIFICATION_METHODS))
def test_every_config_file_is_valid(dataset, method):
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), '..', 'configs', f'{dataset}_{method}.py')
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for arg in module.VARIANTS:
    c = module.get_config(arg)
    config_base.validate(c)
    norm = 'l2' if method in presets.SMOOTHING_METHODS else 'linf'  # certified in L2
    assert c.eval.norm == c.attack.norm == norm and tuple(c.attack.clip) == (0.0, 1.0)


def test_divergence_is_symmetric_kl_and_zero_for_identical_logits():
  task = classification.Task(synthetic_config())
  a = jnp.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(task.divergence(a, a), 0.0, atol=1e-7)
  assert np.all(task.divergence(a, a[::-1]) > 0)


def test_dlr_loss_by_hand_and_invariant_to_shifting_and_scaling_the_logits():
  logits = jnp.asarray([[4.0, 1.0, 3.0, 0.0, -1.0], [0.0, 2.0, 1.0, 5.0, 3.0]])
  labels = jnp.asarray([0, 1])
  # Sorted: [4, 3, 1, 0, -1] and [5, 3, 2, 1, 0].
  untargeted = classification.dlr_loss(logits, labels)
  np.testing.assert_allclose(untargeted, [-(4 - 3) / (4 - 1), -(2 - 5) / (5 - 2)], rtol=1e-6)
  target = jnp.asarray([3, 4])
  targeted = classification.dlr_loss(logits, labels, target)
  np.testing.assert_allclose(targeted, [-(4 - 0) / (4 - 0.5), -(2 - 3) / (5 - 1.5)], rtol=1e-6)
  moved = classification.dlr_loss(3.0 * logits + 7.0, labels, target)
  np.testing.assert_allclose(moved, targeted, rtol=1e-5)
  # Two classes: the unnormalised margin (DLR's scale needs a third logit).
  two = classification.dlr_loss(jnp.asarray([[1.0, 3.0]]), jnp.asarray([0]))
  np.testing.assert_allclose(two, [2.0])


def test_targets_are_the_most_likely_wrong_classes_in_order():
  task = classification.Task(synthetic_config())
  logits = jnp.asarray([[4.0, 1.0, 3.0, 0.0], [0.0, 2.0, 1.0, 5.0]])
  batch = {'label': jnp.asarray([0, 3])}
  assert task.num_attack_targets(logits) == 3
  ranks = [np.asarray(task.attack_target(logits, batch, r)).tolist() for r in (1, 2, 3)]
  assert ranks == [[2, 1], [1, 2], [3, 0]]
  # A head without targets refuses APGD-T in its config.
  from robust_med.tasks import segmentation
  assert not segmentation.Task.has_attack_targets
  seg = config_base.task_config('segmentation')
  seg.eval.attacks = ('pgd', 'apgd_t')
  with pytest.raises(ConfigError, match="drop 'apgd_t'"):
    config_base.validate(seg)
  c = synthetic_config(**{'eval.attacks': ('pgd', 'apgd', 'apgd_t', 'square')})
  config_base.validate(c)
