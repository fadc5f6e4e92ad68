"""models/conv.py: lax's convolution with an input gradient XLA:CPU runs fast inside loops."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from robust_med.models import conv

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('x_shape, k_shape, strides, padding, rhs_dilation, lhs_dilation', [
    ((2, 7, 6, 5, 2), (3, 3, 3, 2, 3), (1, 1, 1), 'SAME', None, None),  # volumes (3-D U-Net)
    ((2, 7, 6, 5, 2), (3, 3, 3, 2, 3), (2, 2, 2), 'SAME', None, None),
    ((2, 8, 6, 5, 2), (3, 2, 3, 2, 3), (2, 1, 2), 'VALID', None, None),
    ((2, 7, 6, 5, 2), (3, 3, 1, 2, 3), (3, 1, 1), ((2, 0), (1, 1), (0, 1)), None, None),
    ((1, 4, 6, 5, 2), (1, 1, 1, 2, 4), (1, 1, 1), 'SAME', None, None),
    ((2, 7, 6, 5, 2), (3, 3, 3, 2, 3), (1, 1, 1), 'SAME', (2, 1, 1), None),  # lax's 3-D path
    ((2, 9, 9, 3), (3, 3, 3, 4), (1, 1), 'SAME', None, None),
    ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), 'SAME', None, None),
    ((2, 8, 8, 3), (2, 2, 3, 4), (2, 2), 'VALID', None, None),
    ((2, 10, 11, 3), (3, 3, 3, 5), (2, 1), ((0, 1), (2, 1)), None, None),
    ((2, 10, 11, 3), (3, 3, 3, 5), (1, 1), 'SAME', (2, 2), None),
    ((2, 7, 7, 3), (1, 1, 3, 4), (2, 2), 'SAME', None, None),
    ((2, 5, 5, 3), (2, 2, 3, 4), (1, 1), ((1, 1), (1, 1)), None, (2, 2)),  # lax's own gradient
])
def test_values_and_both_gradients_equal_lax(x_shape, k_shape, strides, padding, rhs_dilation,
                                              lhs_dilation):
  key = jax.random.key(0)
  dn = DN if len(x_shape) == 4 else ('NDHWC', 'DHWIO', 'NDHWC')
  x = jax.random.normal(key, x_shape)
  k = jax.random.normal(jax.random.fold_in(key, 1), k_shape)

  def loss(fn):
    def f(x, k):
      y = fn(x, k, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
             dimension_numbers=dn)
      return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
    return f
  want_y = lax.conv_general_dilated(x, k, strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers=dn)
  got_y = conv.conv_general_dilated(x, k, strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers=dn)
  if len(x_shape) == 4:
    np.testing.assert_array_equal(np.asarray(got_y), np.asarray(want_y))
  else:  # Volumes on CPU: a 2-D convolution over stacked depth taps, another summation order.
    np.testing.assert_allclose(np.asarray(got_y), np.asarray(want_y), rtol=1e-5, atol=1e-5)
  want = jax.jit(jax.grad(loss(lax.conv_general_dilated), (0, 1)))(x, k)
  got = jax.jit(jax.grad(loss(conv.conv_general_dilated), (0, 1)))(x, k)
  for g, w in zip(got, want):
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5 * float(
        jnp.abs(w).max()))


class _Net(nn.Module):
  conv_cls: type = conv.Conv

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.conv_cls(6, (3, 3))(x))
    x = nn.relu(self.conv_cls(8, (3, 3), strides=(2, 2))(x))
    return self.conv_cls(2, (1, 1))(x)


def _attack(model, params, unroll):
  def body(_, x):
    g = jax.grad(lambda z: jnp.sum(model.apply({'params': params}, z) ** 2))(x)
    return x + 1e-2 * jnp.sign(g)

  def run(x):
    if unroll:
      for i in range(3):
        x = body(i, x)
      return x
    return lax.fori_loop(0, 3, body, x)
  return jax.jit(run)


def test_conv_module_has_flax_conv_parameters_and_loops_like_unrolled():
  x = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
  ours, flax_net = _Net(), _Net(conv_cls=nn.Conv)
  params = ours.init(jax.random.key(0), x)['params']
  flax_params = flax_net.init(jax.random.key(0), x)['params']
  assert jax.tree.structure(params) == jax.tree.structure(flax_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(flax_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(ours.apply({'params': params}, x)),
                                np.asarray(flax_net.apply({'params': params}, x)))
  loop = _attack(ours, params, unroll=False)(x)
  np.testing.assert_allclose(np.asarray(loop), np.asarray(_attack(ours, params, True)(x)),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(loop), np.asarray(_attack(flax_net, params, False)(x)),
                             atol=1e-6)


def test_input_gradient_in_a_loop_keeps_the_forward_kernel_layout():
  """What makes the loop fast on XLA:CPU: no convolution of the compiled loop takes its kernel
  with input and output features swapped (`01oi`), the form XLA:CPU runs on its slow generic
  path inside loop bodies."""
  x = jax.random.normal(jax.random.key(1), (2, 12, 12, 3))
  model = _Net()
  params = model.init(jax.random.key(0), x)['params']
  hlo = _attack(model, params, unroll=False).lower(x).compile().as_text()
  labels = re.findall(r'dim_labels=(\w+)_(\w+)->', hlo)
  assert labels, 'no convolution found in the compiled loop'
  assert all(kernel[-2:] == 'io' for _, kernel in labels), labels


def test_volumes_run_as_2d_convolutions_on_cpu():
  """XLA:CPU's 3-D convolutions are slow: on CPU, forward and both gradients of a 3-D `Conv`
  are 2-D convolutions (over stacked depth taps)."""
  x = jnp.ones((2, 6, 6, 6, 2))
  model = conv.Conv(3, (3, 3, 3), strides=(2, 2, 2))
  params = model.init(jax.random.key(0), x)
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda p, x: jnp.sum(model.apply(p, x) ** 2), (0, 1)))(params, x))
  specs = re.findall(r'lhs_spec=\(([^)]*)\)', jaxpr)
  assert len(specs) >= 3  # forward, input gradient, kernel gradient
  if jax.default_backend() == 'cpu':
    assert all(len(spec.split(',')) == 4 for spec in specs), specs  # N, C and two spatial axes


@pytest.mark.parametrize('shape, window', [((2, 5, 6, 3), (2, 2)), ((2, 3, 4, 5, 3), (2, 2, 2)),
                                           ((1, 4, 3, 2), (3, 1))])
def test_conv_transpose_equals_flax_with_the_same_parameters(shape, window):
  x = jax.random.normal(jax.random.key(0), shape)
  ours, theirs = conv.ConvTranspose(4, window, strides=window), nn.ConvTranspose(
      4, window, strides=window)
  params = ours.init(jax.random.key(1), x)
  want_params = theirs.init(jax.random.key(1), x)  # Same names, shapes and initial values.
  assert jax.tree.structure(params) == jax.tree.structure(want_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  params = jax.tree.map(lambda p: p + 0.1, params)  # A non-zero bias too.
  np.testing.assert_allclose(np.asarray(ours.apply(params, x)),
                             np.asarray(theirs.apply(params, x)), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
  got = jax.grad(loss(ours), (0, 1))(params, x)
  want = jax.grad(loss(theirs), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='kernel size = strides'):
    conv.ConvTranspose(4, (3, 3), strides=(2, 2)).init(jax.random.key(1), x[..., :3, :3, :])
