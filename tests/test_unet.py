"""The nnU-Net-style U-Net on images and on volumes: shapes, parameters, independent samples."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med.models.unet import UNet


def _shapes(params):
  return {'/'.join(k.key for k in path): v.shape
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_2d_parameters_are_those_the_2d_unet_always_had():
  model = UNet(num_classes=3, features=(4, 8))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 2)))['params']
  shapes = _shapes(params)
  assert shapes['ConvBlock_0/Conv_0/kernel'] == (3, 3, 2, 4)
  assert shapes['ConvBlock_2/Conv_0/kernel'] == (3, 3, 4, 8)  # the strided one
  assert shapes['ConvTranspose_0/kernel'] == (2, 2, 8, 4)
  assert shapes['Conv_0/kernel'] == (1, 1, 4, 3)
  assert len(shapes) == 22  # as before the U-Net took volumes (checked against that code)


def test_3d_unet_on_volumes_keeps_samples_independent():
  model = UNet(num_classes=2, features=(4, 8, 16))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 12, 16, 1))
  params = model.init(jax.random.PRNGKey(0), x)['params']
  shapes = _shapes(params)
  assert shapes['ConvBlock_0/Conv_0/kernel'] == (3, 3, 3, 1, 4)
  assert shapes['ConvTranspose_0/kernel'] == (2, 2, 2, 16, 8)
  apply = jax.jit(lambda v: model.apply({'params': params}, v))
  y = apply(x)
  assert y.shape == (2, 8, 12, 16, 2) and bool(jnp.all(jnp.isfinite(y)))
  # Instance norm: noise on sample 0 leaves sample 1's output bit for bit unchanged.
  noisy = x.at[0].add(jax.random.normal(jax.random.PRNGKey(2), x.shape[1:]))
  y2 = apply(noisy)
  np.testing.assert_array_equal(np.asarray(y2[1]), np.asarray(y[1]))
  assert not np.allclose(np.asarray(y2[0]), np.asarray(y[0]))
  # The input gradient reaches every voxel of its own sample only.
  g = jax.grad(lambda v: jnp.sum(model.apply({'params': params}, v)[0] ** 2))(x)
  assert float(jnp.abs(g[1]).max()) == 0.0 and float(jnp.abs(g[0]).min()) >= 0.0
  assert float(jnp.mean(jnp.abs(g[0]) > 0)) > 0.99


def test_a_3d_unet_in_a_sliding_window_trains_on_patches_and_predicts_volumes():
  from robust_med.errors import UserError
  from robust_med.models.sliding import SlidingWindow
  from robust_med.sliding_window import sliding_window
  unet = UNet(num_classes=2, features=(4, 8))
  model = SlidingWindow(unet, (8, 8, 8))
  volume = jax.random.normal(jax.random.PRNGKey(3), (2, 12, 16, 10, 1))
  params = model.init(jax.random.PRNGKey(0), volume)
  np.testing.assert_array_equal(  # the U-Net's own parameters, initialised on one window
      jax.tree.leaves(params)[0], jax.tree.leaves(unet.init(jax.random.PRNGKey(0),
                                                             volume[:, :8, :8, :8]))[0])
  assert model.num_classes == 2  # every other attribute is the U-Net's
  patch = volume[:, :8, :8, :8]
  np.testing.assert_array_equal(model.apply(params, patch), unet.apply(params, patch))
  whole = jax.jit(model.apply)(params, volume)
  assert whole.shape == (2, 12, 16, 10, 2)
  np.testing.assert_allclose(
      whole, sliding_window(lambda p: unet.apply(params, p), volume, (8, 8, 8)),
      rtol=1e-5, atol=1e-5)
  # An attack on the whole volume: the gradient reaches every voxel, sample by sample.
  g = jax.grad(lambda v: jnp.sum(model.apply(params, v)[0] ** 2))(volume)
  assert float(jnp.abs(g[1]).max()) == 0.0 and float(jnp.mean(jnp.abs(g[0]) > 0)) > 0.99
  with pytest.raises(UserError, match='smaller than the patch'):
    model.apply(params, volume[:, :6])
