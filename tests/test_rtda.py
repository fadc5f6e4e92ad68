"""RTDA and its parts: the input-gradient penalty (double backprop) against finite differences,
the symmetric-KL consistency, the method's composition, and its config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks, config_base, methods
from robust_med.errors import ConfigError
from robust_med.tasks import base

jax.config.update('jax_enable_x64', False)


def tiny_model(params, x):
  """A two-layer network on flattened inputs: (B, D) -> (B, K) logits."""
  h = jnp.tanh(x @ params['w1'] + params['b1'])
  return h @ params['w2']


def tiny_setup(seed=0, b=3, d=5, h=4, k=3):
  rng = np.random.default_rng(seed)
  params = {'w1': jnp.asarray(rng.normal(size=(d, h)), jnp.float64),
            'b1': jnp.asarray(rng.normal(size=h), jnp.float64),
            'w2': jnp.asarray(rng.normal(size=(h, k)), jnp.float64)}
  x = jnp.asarray(rng.normal(size=(b, d)), jnp.float64)
  y = jnp.asarray(rng.integers(0, k, size=b))
  return params, x, y


def ce(params, x, y):
  logits = tiny_model(params, x)
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


@pytest.fixture(autouse=True)
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


def test_input_gradient_penalty_matches_finite_differences():
  params, x, y = tiny_setup()
  penalty = methods.input_gradient_penalty(lambda z: ce(params, z, y), x)
  # The input gradient of each sample's loss by central differences.
  h = 1e-6
  fd = np.zeros(x.shape)
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      e = jnp.zeros_like(x).at[i, j].set(h)
      fd[i, j] = (ce(params, x + e, y)[i] - ce(params, x - e, y)[i]) / (2 * h)
  np.testing.assert_allclose(penalty, (fd ** 2).sum(axis=1), rtol=1e-6)
  # Its gradient in the parameters (double backprop) against differences of the penalty.
  total = lambda p: jnp.sum(methods.input_gradient_penalty(lambda z: ce(p, z, y), x))
  grad = jax.grad(total)(params)
  for name in params:
    flat = np.asarray(params[name]).ravel()
    for j in range(0, flat.size, 3):
      e = np.zeros_like(flat)
      e[j] = h
      shift = lambda s: {**params, name: jnp.asarray((flat + s * e).reshape(params[name].shape))}
      fd_p = (total(shift(1)) - total(shift(-1))) / (2 * h)
      np.testing.assert_allclose(np.asarray(grad[name]).ravel()[j], fd_p, rtol=1e-5, atol=1e-8)


def test_symmetric_kl_is_zero_for_identical_and_positive_and_symmetric_otherwise():
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(4, 3)))
  b = jnp.asarray(rng.normal(size=(4, 3)))
  np.testing.assert_allclose(base.symmetric_kl(a, a), 0.0, atol=1e-12)
  np.testing.assert_allclose(base.symmetric_kl(a, a + 7.0), 0.0, atol=1e-12)  # Same softmax.
  d = base.symmetric_kl(a, b)
  assert d.shape == (4,) and np.all(d > 0)
  np.testing.assert_allclose(d, base.symmetric_kl(b, a), rtol=1e-12)
  p, q = jax.nn.softmax(a), jax.nn.softmax(b)
  expected = jnp.sum(p * jnp.log(p / q) + q * jnp.log(q / p), axis=-1)
  np.testing.assert_allclose(d, expected, rtol=1e-10)
  # Dense outputs (B, H, W, K): averaged over the pixels.
  dense = jnp.asarray(rng.normal(size=(2, 3, 3, 4)))
  assert base.symmetric_kl(dense, dense).shape == (2,)


def objective_for(params, x, y, second=None):
  outputs = lambda z: tiny_model(params, z)
  terms_of = lambda out: {'ce': -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None],
                                                     axis=1)[:, 0]}
  attack_terms = lambda z: terms_of(tiny_model(jax.lax.stop_gradient(params), z))
  return methods.Objective(lambda z: terms_of(outputs(z)),
                           lambda z: methods.total(attack_terms(z)), attack_terms,
                           outputs=outputs, terms_of=terms_of, divergence=base.symmetric_kl,
                           second_view=second)


def settings():
  return attacks.PGDSettings(norm='linf', steps=3, step_size_factor=2.5)


def test_rtda_loss_is_the_sum_of_its_parts():
  params, x, y = tiny_setup(b=4)
  key = jax.random.key(0)
  x_b = x + 0.1
  obj = objective_for(params, x, y, second=lambda k: x_b)
  m = methods.Rtda(eps=0.1, attack=settings(), grad_penalty=0.5, consistency_views=2.0,
                   consistency_adv=3.0)
  loss, margins, metrics = m(obj, x, jnp.zeros(4), jnp.zeros(1), key)
  adv_key, _ = jax.random.split(key)
  x_adv = settings()(obj.attack_loss, x, 0.1, adv_key)
  clean, noisy = obj.terms(x)['ce'], obj.terms(x_adv)['ce']
  penalty = methods.input_gradient_penalty(lambda z: obj.terms(z)['ce'], x)
  out = obj.outputs(x)
  expected = jnp.mean((clean + noisy) / 2 + 0.5 * penalty
                      + 2.0 * base.symmetric_kl(out, obj.outputs(x_b))
                      + 3.0 * base.symmetric_kl(out, obj.outputs(x_adv)))
  np.testing.assert_allclose(loss, expected, rtol=1e-10)
  np.testing.assert_allclose(metrics['grad_penalty'], jnp.mean(penalty), rtol=1e-10)
  assert metrics['consistency_views'] > 0 and metrics['consistency_adv'] > 0
  np.testing.assert_array_equal(margins, jnp.zeros(4))


def test_rtda_with_parts_off_reduces_to_std_and_sat():
  params, x, y = tiny_setup(b=4)
  key = jax.random.key(1)
  obj = objective_for(params, x, y)
  std_loss, _, _ = methods.Std()(obj, x, None, None, key)
  only_penalty, _, _ = methods.Rtda(eps=0.0, attack=settings(), grad_penalty=0.0,
                                    consistency_views=0.0)(obj, x, None, None, key)
  np.testing.assert_allclose(only_penalty, std_loss, rtol=1e-12)
  adv_key, _ = jax.random.split(key)
  sat_loss, _, _ = methods.Sat(eps=0.1, attack=settings())(obj, x, None, None, adv_key)
  at_loss, _, _ = methods.Rtda(eps=0.1, attack=settings())(obj, x, None, None, key)
  np.testing.assert_allclose(at_loss, sat_loss, rtol=1e-12)
  # Identical views: the consistency term adds nothing.
  same = objective_for(params, x, y, second=lambda k: x)
  views, _, metrics = methods.Rtda(eps=0.0, attack=settings(), consistency_views=5.0)(
      same, x, None, None, key)
  np.testing.assert_allclose(views, std_loss, rtol=1e-12)
  np.testing.assert_allclose(metrics['consistency_views'], 0.0, atol=1e-12)


def test_rtda_gradient_reaches_the_penalty():
  """The trained loss's parameter gradient includes the penalty's (double backprop)."""
  params, x, y = tiny_setup(b=4)
  key = jax.random.key(2)

  def loss(p, lam):
    return methods.Rtda(eps=0.0, attack=settings(), grad_penalty=lam)(
        objective_for(p, x, y), x, None, None, key)[0]
  g0, g1 = jax.grad(loss)(params, 0.0), jax.grad(loss)(params, 1.0)
  g_pen = jax.grad(lambda p: jnp.mean(methods.input_gradient_penalty(
      lambda z: ce(p, z, y), x)))(params)
  for name in params:
    np.testing.assert_allclose(g1[name] - g0[name], g_pen[name], rtol=1e-8, atol=1e-12)


def rtda_config(**method):
  c = config_base.task_config('classification')
  c.method.name = 'rtda'
  for k, v in method.items():
    c.method[k] = v
  return c


@pytest.mark.parametrize('changes,words', [
    (dict(), 'is STD'),
    (dict(eps=0.0, grad_penalty=1.0, consistency_adv=1.0), 'consistency_adv'),
    (dict(eps=0.01, consistency_views=1.0), 'augment=True'),
    (dict(eps=0.01, grad_penalty=-1.0), 'grad_penalty = -1.0: it must be a finite number ≥ 0'),
])
def test_rtda_config_errors(changes, words):
  with pytest.raises(ConfigError, match=words):
    config_base.validate(rtda_config(**changes))


def test_rtda_settings_on_another_method_and_empty_augmentation_are_refused():
  c = config_base.task_config('classification')
  c.method.name = 'sat'
  c.method.eps = 0.01
  c.method.grad_penalty = 1.0
  with pytest.raises(ConfigError, match='rtda settings'):
    config_base.validate(c)
  c.method.grad_penalty = 0.0
  c.method.augment = True
  with pytest.raises(ConfigError, match='every config.augment strength is 0'):
    config_base.validate(c)
  c.augment.flip = 0.5
  config_base.validate(c)
