"""robust_med.models.norm: the same group and instance norm as Flax's (values, gradients, names
and parameters, so checkpoints carry over), in the arrangement XLA:CPU runs faster."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med.models import norm


@pytest.mark.parametrize('ours, theirs, shape', [
    (norm.GroupNorm(num_groups=4), nn.GroupNorm(num_groups=4), (3, 6, 5, 8)),
    (norm.GroupNorm(num_groups=2, epsilon=1e-5), nn.GroupNorm(num_groups=2, epsilon=1e-5),
     (2, 4, 3, 5, 6)),
    (norm.InstanceNorm(epsilon=1e-5), nn.InstanceNorm(epsilon=1e-5), (3, 7, 7, 4)),
])
def test_same_values_gradients_and_parameters_as_flax(ours, theirs, shape):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)
  params = theirs.init(jax.random.key(1), x)['params']
  assert jax.tree.structure(ours.init(jax.random.key(1), x)['params']) == \
      jax.tree.structure(params)
  params = {'scale': 1 + jax.random.normal(jax.random.key(2), params['scale'].shape),
            'bias': jax.random.normal(jax.random.key(3), params['bias'].shape)}
  weights = jax.random.normal(jax.random.key(4), shape)

  def loss(module, p, x):
    return jnp.sum(weights * jnp.tanh(module.apply({'params': p}, x)))
  np.testing.assert_allclose(ours.apply({'params': params}, x),
                             theirs.apply({'params': params}, x), atol=2e-5)
  for a, b in zip(jax.grad(loss, argnums=(1, 2))(ours, params, x),
                  jax.grad(loss, argnums=(1, 2))(theirs, params, x)):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-4), a, b)
  # bfloat16 (config.model.compute_dtype) stays bfloat16 and close.
  low = ours.apply({'params': jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)},
                   x.astype(jnp.bfloat16))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), theirs.apply({'params': params}, x),
                             atol=0.1)


def test_samples_stay_independent():
  x = jax.random.normal(jax.random.key(0), (4, 5, 5, 8))
  layer = norm.GroupNorm(num_groups=2)
  params = layer.init(jax.random.key(1), x)['params']
  alone = layer.apply({'params': params}, x[1:2])
  together = layer.apply({'params': params}, x.at[0].multiply(100.0))[1:2]
  np.testing.assert_allclose(alone, together, atol=1e-6)


def test_the_models_keep_flaxs_parameter_names():
  from robust_med.models.resnet import ResNetClassifier
  params = ResNetClassifier(num_classes=2, base_width=8, blocks=1, stages=2).init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 1)))['params']
  assert set(params['stage0_block0']['GroupNorm_0']) == {'scale', 'bias'}
  assert 'GroupNorm_0' in params
