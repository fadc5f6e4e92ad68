"""Sliding-window inference: window placement, the Gaussian importance map, stitching, gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med.errors import UserError
from robust_med.sliding_window import gaussian_importance, sliding_window, window_starts


def _pointwise(p):
  """A model whose output at a voxel depends on that voxel alone: stitching must not change it."""
  return jnp.concatenate([jnp.sin(3 * p) + p ** 2, 2 * p - 1], axis=-1)


def _positional(p):
  """A model whose output depends on where in the patch a voxel lies (as a real network's border
  effects do): stitched outputs are weighted mixtures that can be computed by hand."""
  ramp = jnp.arange(p.shape[1], dtype=p.dtype).reshape((1, -1) + (1,) * (p.ndim - 2))
  return p + ramp


def test_window_starts_by_hand():
  assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
  assert window_starts(11, 4, 0.5) == [0, 2, 4, 5, 7]  # 7 / 4 = 1.75 voxels apart, rounded
  assert window_starts(8, 8, 0.5) == [0]
  assert window_starts(9, 8, 0.0) == [0, 1]
  for size, patch, overlap in ((37, 8, 0.5), (100, 16, 0.25), (20, 7, 0.75)):
    s = window_starts(size, patch, overlap)
    assert s[0] == 0 and s[-1] == size - patch  # the windows cover the axis
    assert max(np.diff(s)) <= patch * (1 - overlap) + 0.5  # neighbours share ≥ overlap
    assert len(s) == math.ceil((size - patch) / (patch * (1 - overlap))) + 1  # and no more


def test_gaussian_importance_by_hand_in_1d():
  # patch 8, σ = 8/8 = 1, centre 3.5: exp(-((i - 3.5)² - 0.25) / 2), the maximum (i = 3, 4) = 1
  e = math.exp
  np.testing.assert_allclose(gaussian_importance((8,)),
                             [e(-6), e(-3), e(-1), 1, 1, e(-1), e(-3), e(-6)], rtol=1e-6)
  w = gaussian_importance((5, 7))
  np.testing.assert_allclose(w, np.outer(gaussian_importance((5,)), gaussian_importance((7,))),
                             rtol=1e-6)
  assert w.max() == 1.0 and w[2, 3] == 1.0


def test_one_window_covering_the_volume_is_the_full_forward_pass():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 10, 8, 1))
  np.testing.assert_array_equal(
      sliding_window(_positional, x, (12, 10, 8), weighting='constant'), _positional(x))
  np.testing.assert_allclose(sliding_window(_positional, x, (12, 10, 8)), _positional(x),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('shape, patch, overlap', [
    ((3, 17, 1), (6,), 0.5),
    ((2, 20, 13, 2), (8, 5), 0.5),
    ((1, 11, 9, 14, 1), (4, 4, 6), 0.25),
])
def test_a_pointwise_model_is_unchanged_by_stitching(shape, patch, overlap):
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  for k in (1, 3):  # 3 does not divide the window count everywhere: padding windows add nothing
    np.testing.assert_allclose(
        sliding_window(_pointwise, x, patch, overlap=overlap, windows_per_batch=k),
        _pointwise(x), rtol=1e-5, atol=1e-5)


def test_stitching_weights_each_window_by_the_importance_map():
  size, patch = 11, 4
  x = jax.random.normal(jax.random.PRNGKey(2), (2, size, 1))
  w = gaussian_importance((patch,))
  num, den = np.zeros(size), np.zeros(size)
  for s in window_starts(size, patch, 0.5):  # [0, 2, 4, 5, 7]
    num[s:s + patch] += w * (np.asarray(x[0, s:s + patch, 0]) + np.arange(patch))
    den[s:s + patch] += w
  got = sliding_window(_positional, x, (patch,), windows_per_batch=2)
  np.testing.assert_allclose(got[0, :, 0], num / den, rtol=1e-5)


def test_gradient_flows_through_every_window_and_remat_changes_nothing():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 9, 10, 1))
  loss = lambda v, **kw: jnp.sum(sliding_window(_pointwise, v, (4, 4), **kw) ** 2)
  g = jax.grad(loss)(x)
  np.testing.assert_allclose(g, jax.grad(lambda v: jnp.sum(_pointwise(v) ** 2))(x),
                             rtol=1e-4, atol=1e-4)
  g_remat = jax.jit(jax.grad(lambda v: loss(v, remat=True)))(x)
  np.testing.assert_allclose(g_remat, g, rtol=1e-6, atol=1e-6)


def test_outputs_may_be_a_dict_and_keep_their_own_widths():
  x = jax.random.normal(jax.random.PRNGKey(4), (1, 10, 10, 1))
  out = jax.jit(lambda v: sliding_window(
      lambda p: {'heatmap': _pointwise(p), 'offset': p * 3}, v, (4, 6)))(x)
  assert out['heatmap'].shape == (1, 10, 10, 2) and out['offset'].shape == (1, 10, 10, 1)
  np.testing.assert_allclose(out['offset'], x * 3, rtol=1e-5)


def test_a_volume_smaller_than_the_patch_or_a_wrong_patch_is_refused():
  x = jnp.zeros((1, 6, 20, 1))
  with pytest.raises(UserError, match='smaller than the patch'):
    sliding_window(_pointwise, x, (8, 8))
  with pytest.raises(UserError, match='one patch size per spatial axis'):
    sliding_window(_pointwise, x, (4, 4, 4))
  with pytest.raises(UserError, match='overlap'):
    window_starts(20, 8, 1.0)
