"""The VAFA-style frequency attack: block DCT, AdvDrop's soft rounding, the budget, the ascent."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from robust_med import vafa
from robust_med.errors import ConfigError


def test_block_dct_is_scipys_orthonormal_dct_of_each_block_and_inverts():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 4, 3))
  c = vafa.block_dct(x, (4, 4, 2))
  assert c.shape == (2, 3, 2, 3, 2, 4, 4, 2)
  want = scipy.fft.dctn(np.asarray(x[1, 4:8, 8:12, 2:4, 2]), type=2, norm='ortho')
  np.testing.assert_allclose(np.asarray(c[1, 2, 1, 2, 1]), want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(vafa.block_idct(c, (4, 4, 2)), x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(jnp.sum(c ** 2)), float(jnp.sum(x ** 2)), rtol=1e-5)


def test_soft_round_is_exact_at_integers_and_sharpens_as_alpha_falls():
  u = jnp.linspace(-3.0, 3.0, 601)
  for a in (0.1, 0.05, 0.005):
    r = vafa.soft_round(u, a)
    np.testing.assert_allclose(vafa.soft_round(jnp.arange(-3.0, 4.0), a), np.arange(-3, 4),
                               atol=1e-5)
    assert bool(jnp.all(jnp.diff(r) >= -1e-6))  # monotone
    assert float(jnp.max(jnp.abs(r - u))) <= 0.5 + 1e-5
  off = lambda a: float(jnp.mean(jnp.abs(vafa.soft_round(u, a) - jnp.round(u))))
  assert off(0.005) < off(0.05) < off(0.1)
  assert float(jax.grad(lambda v: vafa.soft_round(v, 0.1))(0.3)) > 0  # a gradient to follow


def _model_loss(x):
  """A fixed high-pass 'model': its loss depends on the images' fine detail."""
  axes = tuple(range(1, x.ndim - 1))
  return sum(jnp.mean((jnp.diff(x[..., 0], axis=a) - 0.1) ** 2, axis=axes) for a in axes)


@pytest.mark.parametrize('shape, block', [((2, 16, 16, 1), 8), ((2, 10, 12, 9, 1), 4)])
def test_the_attack_raises_the_loss_within_its_budget(shape, block):
  x = jax.random.uniform(jax.random.PRNGKey(1), shape)
  q_max = jnp.array([20.0, 0.0])  # sample 1 has no budget: returned unchanged
  adv = jax.jit(lambda v: vafa.vafa(_model_loss, v, q_max, block=block, steps=10,
                                    clip=None))(x)
  assert adv.shape == x.shape
  np.testing.assert_array_equal(np.asarray(adv[1]), np.asarray(x[1]))
  # Within the budget: every coefficient moves at most q_max / 2 grey levels.
  delta = np.asarray(adv[0] - x[0])
  assert np.sqrt(np.sum(delta ** 2)) <= vafa.max_l2(shape[1:], 20.0, block) + 1e-6
  assert np.sqrt(np.sum(delta ** 2)) > 0
  # The ascent helps: more loss than the start (every step at q_max) and than the clean image.
  start = vafa.vafa(_model_loss, x, q_max, block=block, steps=1, q_min=20.0)  # q stays 20
  losses = [float(_model_loss(v)[0]) for v in (x, start, adv)]
  assert losses[2] > losses[0] and losses[2] > losses[1], losses


def test_quantization_is_a_real_quantization_of_the_block_coefficients():
  x = jax.random.uniform(jax.random.PRNGKey(2), (1, 8, 8, 1))
  adv = vafa.vafa(lambda v: jnp.zeros(v.shape[0]), x, 10.0, block=8, steps=2, q_min=10.0)
  # With a flat loss and q_min = q_max the steps stay at 10: the result is round(c / 10) · 10.
  c = vafa.block_dct(x * 255 - 128, 8)
  want = vafa.block_idct(jnp.round(c / 10) * 10, 8) / 255 + 128 / 255
  np.testing.assert_allclose(adv, want, atol=1e-5)


def test_bad_settings_are_config_errors():
  x = jnp.zeros((1, 8, 8, 1))
  for kwargs, words in ((dict(steps=0), 'steps'), (dict(alpha=1.0), 'alpha'),
                        (dict(block=(8,)), 'block'), (dict(grey_level=0.0), 'grey_level')):
    with pytest.raises(ConfigError, match=words):
      vafa.vafa(lambda v: jnp.zeros(1), x, 10.0, **kwargs)
  assert vafa.max_l2((8, 8, 1), 10.0, 8) == pytest.approx(0.5 * 10 / 255 * math.sqrt(64))
