"""VAFT (methods.Vaft): frequency-domain adversarial training — the loss, its frequency
consistency, VAFA's budget in grey levels (a training run on volumes: test_deep_supervision.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from robust_med import config_base, methods, vafa
from robust_med.errors import ConfigError
from test_segmentation3d import volume_config


def test_frequency_distance_by_hand():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 6, 5, 3)), rng.normal(size=(2, 6, 5, 3))
  got = np.asarray(methods.frequency_distance(jnp.asarray(a), jnp.asarray(b)))
  da, db = (scipy.fft.dctn(v, axes=(1, 2), norm='ortho') for v in (a, b))
  want = np.abs(da - db).sum((1, 2, 3)) / np.abs(da).sum((1, 2, 3))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(jnp.max(methods.frequency_distance(jnp.asarray(a), jnp.asarray(a)))) == 0.0
  # Outputs without spatial axes (class logits) and pytrees of outputs: summed over arrays.
  c, d = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
  tree = methods.frequency_distance({'x': jnp.asarray(a), 'y': jnp.asarray(c)},
                                    {'x': jnp.asarray(b), 'y': jnp.asarray(d)})
  want = ((np.abs(da - db).sum((1, 2, 3)) + np.abs(c - d).sum(1))
          / (np.abs(da).sum((1, 2, 3)) + np.abs(c).sum(1)))
  np.testing.assert_allclose(np.asarray(tree), want, rtol=1e-5)


def _objective(w):
  """A per-pixel linear 'segmenter' with a high-pass input: logits (B, H, W, 2)."""
  labels = (jnp.arange(16)[None, :, None] % 4 < 2).astype(jnp.int32) * jnp.ones((2, 16, 16),
                                                                               jnp.int32)

  def outputs(x):
    detail = x - jnp.roll(x, 1, axis=1)
    return jnp.concatenate([detail * w, -detail * w], axis=-1)

  def terms_of(out):
    import optax
    return {'ce': optax.softmax_cross_entropy_with_integer_labels(out, labels).mean((1, 2))}

  return methods.Objective(terms=lambda x: terms_of(outputs(x)),
                           attack_loss=lambda x: methods.total(terms_of(outputs(x))),
                           outputs=outputs, terms_of=terms_of)


def test_vaft_loss_and_vafa_in_grey_levels():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
  objective = _objective(jnp.float32(2.0))
  attack = vafa.VAFASettings(steps=5, block=8, grey_level=1.0)
  grey = 0.02
  # q_max = 0: the adversarial copy is the clean batch, the loss twice the clean loss.
  loss, _, metrics = methods.Vaft(q_max=0.0, attack=attack, grey_level=grey)(
      objective, x, None, None, None)
  clean = float(jnp.mean(objective.attack_loss(x)))
  assert float(loss) == pytest.approx(2 * clean, rel=1e-6)
  assert float(metrics['frequency_consistency']) < 1e-5  # the grey-level round trip's rounding
  # q_max = 20 grey levels of `grey` input units each: VAFA run with that grey level directly.
  loss, _, metrics = methods.Vaft(q_max=20.0, attack=attack, grey_level=grey)(
      objective, x, None, None, None)
  direct = vafa.vafa(objective.attack_loss, x, 20.0, block=8, steps=5, grey_level=grey)
  norms = jnp.sqrt(jnp.sum((direct - x) ** 2, axis=(1, 2, 3)))
  assert float(metrics['perturbation_l2']) == pytest.approx(float(jnp.mean(norms)), rel=1e-4)
  assert float(jnp.max(norms)) <= vafa.max_l2((16, 16, 1), 20.0, 8, grey) + 1e-5
  assert float(metrics['noisy/ce']) > float(metrics['clean/ce'])  # the attack raised the loss
  assert float(metrics['frequency_consistency']) > 0
  want = (float(metrics['clean/ce']) + float(metrics['noisy/ce'])
          + float(metrics['frequency_consistency']))
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # Differentiable in the parameters; without a grey level, 1/255 of the batch's robust range.
  grad = jax.grad(lambda w: methods.Vaft(q_max=20.0, attack=attack)(
      _objective(w), x, None, None, None)[0])(jnp.float32(2.0))
  assert np.isfinite(float(grad)) and float(grad) != 0.0
  lo, hi = np.percentile(np.asarray(x), [0.5, 99.5])
  assert float(methods.Vaft(q_max=1.0, attack=attack)._grey(x)) == pytest.approx(
      (hi - lo) / 255, rel=1e-4)


@pytest.mark.parametrize('key, value', [('method.vafa_block', (0,)), ('method.q_max', -1.0),
                                        ('method.vafa_steps', 0)])
def test_impossible_vaft_settings_are_config_errors(key, value):
  c = volume_config(**{'method.name': 'vaft'})
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError):
    config_base.validate(c)


def test_vaft_is_built_from_the_config():
  c = volume_config(**{'method.name': 'vaft', 'method.vafa_block': (4, 8, 8)})
  method = methods.build_method(c.method, c.attack)
  assert isinstance(method, methods.Vaft) and method.q_max == 20.0
  assert method.attack.block == (4, 8, 8) and method.attack.steps == 20
  assert dataclasses.replace(method, consistency=0.0).consistency == 0.0
