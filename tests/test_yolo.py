"""The YOLO-style detector (robust_med/models/yolo.py): shapes, anchor points, boxes around
their points, and samples independent of each other (per-sample attacks rely on it)."""

from __future__ import annotations

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import compile_cache
from robust_med.models import yolo


def test_anchor_points_cover_the_three_scales():
  points, strides = yolo.anchor_points(64)
  assert points.shape == (64 + 16 + 4, 2) and strides.tolist() == [8] * 64 + [16] * 16 + [32] * 4
  np.testing.assert_allclose(points[0], [4, 4])
  np.testing.assert_allclose(points[7], [60, 4])  # Row-major: x runs fastest.
  np.testing.assert_allclose(points[64], [8, 8])
  np.testing.assert_allclose(points[-1], [48, 48])


@pytest.fixture(scope='module')
def model_and_params():
  """The detector, its parameters, a batch of two and its jitted apply: initialised as the trainer
  does (compile_cache.run_once) and applied jitted, as the trainer and evaluator run it (eagerly,
  every layer dispatches and compiles on its own: 50 s instead of a few)."""
  model = yolo.Detector(num_classes=3, width=4, depth=1)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 64, 64, 3))
  params = compile_cache.run_once(model.init, jax.random.PRNGKey(1), x)
  return model, params, x, jax.jit(model.apply)


def test_outputs_and_boxes_around_their_points(model_and_params):
  model, params, x, apply = model_and_params
  out = apply(params, x)
  assert out['box'].shape == (2, 84, 4) and out['obj'].shape == (2, 84)
  assert out['cls'].shape == (2, 84, 3)
  points, _ = yolo.anchor_points(64)
  box = np.asarray(out['box'])
  assert (box[..., 0] < points[:, 0]).all() and (points[:, 0] < box[..., 2]).all()
  assert (box[..., 1] < points[:, 1]).all() and (points[:, 1] < box[..., 3]).all()
  # Priors: objectness and class probabilities start small.
  assert float(jax.nn.sigmoid(out['obj']).mean()) < 0.05
  with pytest.raises(ValueError, match='divisible by 32'):
    model.apply(params, jnp.zeros((1, 48, 48, 3)))


def test_samples_are_independent(model_and_params):
  # Changing sample 0 leaves sample 1's outputs unchanged (group norm, no batch statistics) ...
  model, params, x, apply = model_and_params
  out = apply(params, x)
  noisy = x.at[0].add(jax.random.normal(jax.random.PRNGKey(2), x.shape[1:]))
  out2 = apply(params, noisy)
  for k in out:
    np.testing.assert_allclose(out2[k][1], out[k][1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out2[k][0], out[k][0])
  # ... and the gradient of sample 1's outputs with respect to sample 0's input is zero.
  g = jax.jit(jax.grad(lambda z: apply(params, z)['obj'][1].sum()))(x)
  assert float(jnp.abs(g[0]).max()) == 0.0 and float(jnp.abs(g[1]).max()) > 0.0
