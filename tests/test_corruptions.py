"""Tests for robust_med.corruptions: identity at severity 0, monotone strength, shapes and ranges,
determinism, the geometric warp and the ConfigError messages."""

from __future__ import annotations

import functools

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import augment, corruptions
from robust_med.errors import ConfigError

B, H, W = 3, 30, 36          # W not a multiple of 8: exercises the JPEG padding.
NAMES = corruptions.CORRUPTIONS
RANDOM = ('gaussian_noise', 'speckle_noise', 'impulse_noise', 'brightness', 'gamma', 'elastic')


def _images(b=B, h=H, w=W, seed=0):
  """Textured images in [0, 1]: smooth gradients, a disk and mild noise, different per image."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
  out = []
  for i in range(b):
    img = 0.3 + 0.3 * x * (1 + 0.2 * i) + 0.2 * np.sin(6 * y + i)
    img = img + 0.3 * ((x * w - w / 2 - i) ** 2 + (y * h - h / 2) ** 2 < 40)
    out.append(img + 0.03 * rng.normal(size=img.shape))
  return jnp.asarray(np.clip(np.stack(out), 0.0, 1.0)[..., None], jnp.float32)


@functools.lru_cache(maxsize=None)
def _jitted(name, severity, value_range=(0.0, 1.0)):
  return jax.jit(lambda key, x: corruptions.corrupt(name, key, x, severity, value_range))


def _corrupt(name, seed, x, severity, value_range=(0.0, 1.0)):
  return _jitted(name, severity, value_range)(jax.random.key(seed), x)


def _distance(a, b):
  """Per-image mean |a − b|, (B,)."""
  return np.asarray(jnp.mean(jnp.abs(a - b), axis=(1, 2, 3)))


@pytest.mark.parametrize('name', NAMES)
def test_severity_zero_is_identity(name):
  x = _images()
  np.testing.assert_array_equal(corruptions.corrupt(name, jax.random.key(0), x, 0), x)
  np.testing.assert_array_equal(_corrupt(name, 0, x, 0), x)


@pytest.mark.parametrize('name', NAMES)
def test_distance_grows_with_severity(name):
  x = _images()
  d = np.stack([_distance(_corrupt(name, 1, x, s), x) for s in corruptions.SEVERITIES])
  assert np.all(d[0] > 0), d
  assert np.all(np.diff(d, axis=0) > 0), d  # Strictly: every severity is a step up.


@pytest.mark.parametrize('name', NAMES)
def test_shape_dtype_range_and_determinism(name):
  x = _images()
  out = _corrupt(name, 2, x, 3)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  np.testing.assert_array_equal(out, _corrupt(name, 2, x, 3))
  if name in RANDOM:
    assert not np.array_equal(out, _corrupt(name, 3, x, 3))


@pytest.mark.parametrize('name', ['gaussian_noise', 'jpeg', 'gamma', 'elastic'])
def test_value_range_is_respected(name):
  x = _images() * 3.0 - 1.0                            # in [-1, 2]
  out = _corrupt(name, 1, x, 5, (-1.0, 2.0))
  assert float(out.min()) >= -1.0 and float(out.max()) <= 2.0
  # The same corruption as on the [0, 1] images, in the range's units.
  np.testing.assert_allclose(out, _corrupt(name, 1, _images(), 5) * 3.0 - 1.0, atol=1e-4)
  own = corruptions.corrupt(name, jax.random.key(1), x, 2, value_range=None)
  axes = (1, 2, 3)
  assert np.all(np.asarray(own.min(axes)) >= np.asarray(x.min(axes)) - 1e-6)
  assert np.all(np.asarray(own.max(axes)) <= np.asarray(x.max(axes)) + 1e-6)


def test_same_noise_at_every_severity():
  x = jnp.full((B, H, W, 1), 0.5)                      # far from the clipping bounds
  sigmas = corruptions.parameters('gaussian_noise')
  n1 = (_corrupt('gaussian_noise', 4, x, 1) - x) / sigmas[1]
  n3 = (_corrupt('gaussian_noise', 4, x, 3) - x) / sigmas[3]
  np.testing.assert_allclose(n1, n3, atol=1e-4)
  hit1 = np.asarray(_corrupt('impulse_noise', 4, x, 1) != x)
  hit5 = np.asarray(_corrupt('impulse_noise', 4, x, 5) != x)
  assert hit1.any() and np.all(hit5[hit1]) and hit5.sum() > hit1.sum()


@pytest.mark.parametrize('name', RANDOM)
def test_each_image_draws_its_own_pattern(name):
  x = jnp.repeat(_images(b=1), B, axis=0)
  out = _corrupt(name, 5, x, 3)
  assert not np.allclose(out[0], out[1]) or not np.allclose(out[0], out[2])


def test_corruption_warp_is_what_corrupt_applies():
  x = _images()
  for name in NAMES:
    warp = corruptions.corruption_warp(name, jax.random.key(6), B, H, W, 3)
    assert (warp is not None) == (name in corruptions.GEOMETRIC), name
  for name in corruptions.GEOMETRIC:
    warp = corruptions.corruption_warp(name, jax.random.key(6), B, H, W, 4)
    np.testing.assert_allclose(augment.warp_images(warp, x), _corrupt(name, 6, x, 4), atol=1e-6)
    peak = jnp.max(jnp.linalg.norm(warp.displacement, axis=-1))
    np.testing.assert_allclose(peak, corruptions.parameters(name)[4] * min(H, W), rtol=1e-4)
    ident = corruptions.corruption_warp(name, jax.random.key(6), B, H, W, 0)
    np.testing.assert_array_equal(augment.warp_images(ident, x), x)


def test_parameters_table():
  for name in NAMES:
    p = corruptions.parameters(name)
    assert len(p) == 6
    assert list(p[1:]) == sorted(p[1:], reverse=name == 'jpeg'), name
  assert corruptions.parameters('jpeg')[0] == 100
  assert corruptions.parameters('pixelate')[0] == 1
  assert corruptions.jpeg_table(50)[0, 0] == 16 and corruptions.jpeg_table(100).max() == 1


@pytest.mark.parametrize('bad', ['gaussian', 'Contrast', ''])
def test_unknown_name_raises(bad):
  for call in (lambda: corruptions.check(bad, 1), lambda: corruptions.parameters(bad),
               lambda: corruptions.corrupt(bad, jax.random.key(0), _images(), 1),
               lambda: corruptions.corruption_warp(bad, jax.random.key(0), B, H, W, 1)):
    with pytest.raises(ConfigError) as info:
      call()
    message = str(info.value)
    assert repr(bad) in message and 'gaussian_noise' in message and '\n' not in message


@pytest.mark.parametrize('bad', [6, -1, 2.5, '3', None, True])
def test_bad_severity_raises(bad):
  with pytest.raises(ConfigError) as info:
    corruptions.check('contrast', bad)
  message = str(info.value)
  assert repr(bad) in message and '0 to 5' in message and '\n' not in message
  with pytest.raises(ConfigError):
    corruptions.corrupt('contrast', jax.random.key(0), _images(), bad)


def test_valid_names_and_severities_pass():
  for name in NAMES:
    for severity in (0,) + corruptions.SEVERITIES:
      corruptions.check(name, severity)
  corruptions.check('jpeg', np.int64(2))
