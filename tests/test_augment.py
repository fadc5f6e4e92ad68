"""Tests for robust_med.augment: shapes and ranges, determinism, identities at zero strength, and
targets (masks, landmarks, boxes) moving consistently with the images."""

from __future__ import annotations

import functools

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from robust_med import augment, config_base

B, H, W = 4, 32, 32

GEOMETRIC = {
    'flip': dict(flip=0.5),
    'vflip': dict(vflip=0.5),
    'rotation': dict(rotation=25.0),
    'scale': dict(scale=0.2),
    'translation': dict(translation=0.1),
    'elastic': dict(elastic_alpha=2.0, elastic_sigma=4.0),
}
PHOTOMETRIC = {
    'gamma': dict(gamma=0.4),
    'contrast': dict(contrast=0.4),
    'brightness': dict(brightness=0.2),
    'noise': dict(noise=0.1),
    'blur': dict(blur=1.5),
    'speckle': dict(speckle=0.3),
}
ALL_GEOMETRIC = dict(flip=0.5, vflip=0.5, rotation=30.0, scale=0.2, translation=0.1,
                     elastic_alpha=1.5, elastic_sigma=4.0)


def _images(b=B, h=H, w=W, c=1, seed=0):
  """Textured images in [0, 1]: gradients, a disk and mild noise, different per image."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / np.array([h, w], np.float64)[:, None, None]
  out = []
  for i in range(b):
    img = 0.25 + 0.3 * x * (1 + 0.2 * i) + 0.15 * np.sin(6 * y + i)
    img = img + 0.3 * ((x * w - w / 2 - i) ** 2 + (y * h - h / 2) ** 2 < 30)
    out.append(img[..., None] + 0.03 * rng.normal(size=(h, w, c)))
  return jnp.asarray(np.clip(np.stack(out), 0.0, 1.0), jnp.float32)


def _key(seed=0):
  return jax.random.key(seed)


# Jitted once per setting: eager dispatch of the many small ops is what makes tests slow on CPU.
@functools.lru_cache(maxsize=None)
def _warp_fn(items):
  return jax.jit(lambda key, x: augment.warp_images(
      augment.sample_warp(key, x.shape[0], x.shape[1], x.shape[2], **dict(items)), x))


def _warped(kwargs, key, x):
  return _warp_fn(tuple(sorted(kwargs.items())))(key, x)


_intensity = jax.jit(augment.intensity, static_argnames=(
    'gamma', 'contrast', 'brightness', 'noise', 'blur', 'speckle', 'value_range'))
_sample_warp = jax.jit(augment.sample_warp, static_argnums=(1, 2, 3),
                       static_argnames=tuple(ALL_GEOMETRIC))
_blur = jax.jit(augment.gaussian_blur, static_argnums=2)


# ----------------------------------------------------------------------------- shape, range, keys


@pytest.mark.parametrize('kind', sorted(GEOMETRIC))
def test_geometric_keeps_shape_dtype_and_range(kind):
  x = _images()
  out = _warped(GEOMETRIC[kind], _key(1), x)
  assert out.shape == x.shape and out.dtype == x.dtype
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(out, x)


@pytest.mark.parametrize('kind', sorted(PHOTOMETRIC))
def test_intensity_keeps_shape_dtype_and_range(kind):
  x = _images()
  out = _intensity(_key(1), x, **PHOTOMETRIC[kind])
  assert out.shape == x.shape and out.dtype == x.dtype
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  assert not np.allclose(out, x)


def test_intensity_clips_to_value_range_or_not():
  x = _images() * 4.0 - 2.0                            # in [-2, 2]
  strong = dict(brightness=1.0, noise=0.5, contrast=0.5)
  clipped = _intensity(_key(2), x, value_range=(-2.0, 2.0), **strong)
  assert float(clipped.min()) >= -2.0 and float(clipped.max()) <= 2.0
  free = _intensity(_key(2), x, value_range=None, **strong)
  assert float(free.min()) < -2.0 or float(free.max()) > 2.0
  gamma = _intensity(_key(2), x, value_range=(-2.0, 2.0), gamma=0.5)
  assert np.all(np.isfinite(gamma)) and not np.allclose(gamma, x)


@pytest.mark.parametrize('kind', sorted(GEOMETRIC) + sorted(PHOTOMETRIC))
def test_deterministic_under_key(kind):
  x = _images()
  if kind in GEOMETRIC:
    run = lambda k: _warped(GEOMETRIC[kind], k, x)
  else:
    run = lambda k: _intensity(k, x, **PHOTOMETRIC[kind])
  np.testing.assert_array_equal(run(_key(3)), run(_key(3)))
  assert not np.array_equal(run(_key(3)), run(_key(4)))


def test_jit_matches_eager():
  x = _images()

  def step(key, x):
    warp = augment.sample_warp(key, B, H, W, **ALL_GEOMETRIC)
    return augment.intensity(key, augment.warp_images(warp, x), **{
        k: v for d in PHOTOMETRIC.values() for k, v in d.items()})

  np.testing.assert_allclose(jax.jit(step)(_key(5), x), step(_key(5), x), atol=1e-5)


# ----------------------------------------------------------------------------- identities


def test_zero_strength_is_identity_warp():
  x = _images()
  warp = _sample_warp(_key(0), B, H, W, elastic_sigma=7.0)
  ident = augment.identity_warp(B, H, W)
  np.testing.assert_array_equal(warp.inverse, ident.inverse)
  np.testing.assert_array_equal(warp.displacement, ident.displacement)
  np.testing.assert_array_equal(augment.warp_images(warp, x), x)
  labels = jnp.asarray(np.random.default_rng(0).integers(0, 4, (B, H, W)), jnp.int32)
  np.testing.assert_array_equal(augment.warp_images(warp, labels, order=0), labels)
  points = jnp.asarray(np.random.default_rng(1).uniform(0, W - 1, (B, 5, 2)), jnp.float32)
  np.testing.assert_array_equal(augment.warp_points(warp, points), points)
  boxes = jnp.asarray([[[2.0, 3.0, 10.0, 12.5], [0.0, 0.0, 32.0, 32.0]]] * B, jnp.float32)
  np.testing.assert_allclose(augment.warp_boxes(warp, boxes, H, W), boxes, atol=1e-6)


@pytest.mark.parametrize('kind', sorted(GEOMETRIC))
def test_each_geometric_kind_at_zero_is_identity(kind):
  x = _images()
  zero = {k: (v if k == 'elastic_sigma' else 0.0) for k, v in GEOMETRIC[kind].items()}
  np.testing.assert_array_equal(_warped(zero, _key(1), x), x)


@pytest.mark.parametrize('kind', sorted(PHOTOMETRIC))
def test_each_intensity_op_at_zero_is_identity(kind):
  x = _images()
  zero = {k: 0.0 for k in PHOTOMETRIC[kind]}
  np.testing.assert_array_equal(_intensity(_key(1), x, **zero), x)
  np.testing.assert_array_equal(_intensity(_key(1), x), x)


def test_blur_with_zero_sigma_is_exact_and_blurs_otherwise():
  x = _images()
  np.testing.assert_array_equal(_blur(x, 0.0, 2.0), x)
  sigma = jnp.asarray([0.0, 0.5, 1.0, 2.0])
  out = _blur(x, sigma, 2.0)
  np.testing.assert_array_equal(out[0], x[0])
  rough = [float(jnp.mean(jnp.abs(jnp.diff(out[i], axis=1)))) for i in range(B)]
  base = [float(jnp.mean(jnp.abs(jnp.diff(x[i], axis=1)))) for i in range(B)]
  assert all(r < b for r, b in zip(rough[1:], base[1:]))
  constant = jnp.full((1, 8, 8, 1), 0.7)                      # edges extended: no dark borders
  np.testing.assert_allclose(_blur(constant, 2.0, 2.0), constant, atol=1e-6)


# ----------------------------------------------------------------------------- targets


def _disk_batch(landmarks, radius=3.0, h=H, w=W):
  gx, gy = np.meshgrid(np.arange(w), np.arange(h))
  mask = np.stack([(gx - x) ** 2 + (gy - y) ** 2 <= radius ** 2 for x, y in landmarks])
  boxes = []
  for m in mask:
    rows, cols = np.nonzero(m)
    boxes.append([[cols.min(), rows.min(), cols.max() + 1.0, rows.max() + 1.0]])
  image = 0.1 + 0.8 * mask[..., None].astype(np.float32)
  return (jnp.asarray(image, jnp.float32), jnp.asarray(mask, jnp.int32),
          jnp.asarray(boxes, jnp.float32))


def _centroid(weights):
  w = np.asarray(weights, np.float64)
  gy, gx = np.mgrid[0:w.shape[0], 0:w.shape[1]]
  return np.array([(w * gx).sum() / w.sum(), (w * gy).sum() / w.sum()])


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_masks_landmarks_and_boxes_move_with_the_image(seed):
  landmarks = np.array([[10.3, 12.7], [20.0, 9.0], [15.5, 20.2], [11.0, 21.0]], np.float32)
  image, mask, boxes = _disk_batch(landmarks)
  warp = _sample_warp(_key(seed), B, H, W, **ALL_GEOMETRIC)
  warped_image = np.asarray(augment.warp_images(warp, image))[..., 0]
  warped_mask = np.asarray(augment.warp_images(warp, mask, order=0))
  points = np.asarray(augment.warp_points(warp, jnp.asarray(landmarks)[:, None]))[:, 0]
  moved_boxes = np.asarray(augment.warp_boxes(warp, boxes, H, W))[:, 0]
  for i in range(B):
    assert warped_mask[i].sum() > 10, 'the disk left the image: pick other landmarks'
    np.testing.assert_allclose(_centroid(warped_mask[i]), points[i], atol=1.0)
    blob = np.clip(warped_image[i] - 0.1, 0.0, None)
    np.testing.assert_allclose(_centroid(blob), points[i], atol=1.0)
    rows, cols = np.nonzero(warped_mask[i])
    x1, y1, x2, y2 = moved_boxes[i]
    # Mask pixel centres (box coordinate j + 0.5) lie inside the moved box.
    assert x1 - 0.25 <= cols.min() + 0.5 and cols.max() + 0.5 <= x2 + 0.25
    assert y1 - 0.25 <= rows.min() + 0.5 and rows.max() + 0.5 <= y2 + 0.25
    # ...and the box is not much larger than the mask.
    assert x2 - x1 <= cols.max() - cols.min() + 1 + 3 and y2 - y1 <= rows.max() - rows.min() + 4


def test_warp_points_inverts_the_sampling_map():
  warp = _sample_warp(_key(7), B, H, W, **ALL_GEOMETRIC)
  q = jnp.asarray(np.random.default_rng(0).uniform(8, 24, (B, 6, 2)), jnp.float32)
  p = augment.warp_points(warp, q)
  d = jnp.stack([jax.vmap(lambda f, x, y: jax.scipy.ndimage.map_coordinates(
      f[..., c], [y, x], order=1, mode='nearest'))(warp.displacement, p[..., 0], p[..., 1])
                 for c in range(2)], -1)
  back = jnp.einsum('bij,blj->bli', warp.inverse,
                    jnp.concatenate([p + d, jnp.ones_like(p[..., :1])], -1),
                    precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(back, q, atol=1e-3)


def test_flip_moves_boxes_and_points_exactly():
  warp = _sample_warp(_key(0), B, H, W, flip=1.0)
  box = jnp.asarray([[[0.0, 2.0, 10.0, 5.0]]] * B)
  np.testing.assert_allclose(augment.warp_boxes(warp, box, H, W),
                             [[[W - 10.0, 2.0, W, 5.0]]] * B, atol=1e-5)
  np.testing.assert_allclose(augment.warp_points(warp, jnp.asarray([[[3.0, 4.0]]] * B)),
                             [[[W - 1 - 3.0, 4.0]]] * B, atol=1e-5)
  x = _images()
  np.testing.assert_array_equal(augment.warp_images(warp, x), x[:, :, ::-1])


def test_boxes_are_clipped_to_the_image():
  warp = _sample_warp(_key(0), B, H, W, translation=0.4)
  boxes = augment.warp_boxes(warp, jnp.asarray([[[0.0, 0.0, 32.0, 32.0]]] * B), H, W)
  assert float(boxes.min()) >= 0.0 and float(boxes[..., 2].max()) <= W
  assert float(boxes[..., 3].max()) <= H


@pytest.mark.parametrize('dtype', [jnp.int32, jnp.uint8])
def test_labels_stay_integer_with_their_label_set(dtype):
  rng = np.random.default_rng(0)
  labels = rng.choice(np.array([0, 1, 2, 5]), size=(B, H, W)).astype(np.dtype(dtype))
  warp = _sample_warp(_key(2), B, H, W, **ALL_GEOMETRIC)
  out = augment.warp_images(warp, jnp.asarray(labels), order=0)
  assert out.dtype == dtype and out.shape == labels.shape
  assert set(np.unique(out)) <= {0, 1, 2, 5}
  channels = augment.warp_images(warp, jnp.asarray(labels)[..., None].repeat(2, -1), order=0)
  assert channels.dtype == dtype and channels.shape == (B, H, W, 2)
  np.testing.assert_array_equal(channels[..., 1], out)


def test_each_sample_draws_its_own_transform():
  x = jnp.repeat(_images(b=1), B, axis=0)               # B copies of one image
  for kwargs in (GEOMETRIC['rotation'], GEOMETRIC['elastic'], GEOMETRIC['scale']):
    out = _warped(kwargs, _key(3), x)
    assert not np.allclose(out[0], out[1])
  for kwargs in PHOTOMETRIC.values():
    out = _intensity(_key(3), x, **kwargs)
    assert not np.allclose(out[0], out[1])


def test_elastic_field_peak_is_alpha():
  field = augment.elastic_field(_key(0), B, H, W, alpha=2.5, sigma=4.0)
  peak = jnp.max(jnp.linalg.norm(field, axis=-1), axis=(1, 2))
  np.testing.assert_allclose(peak, 2.5, rtol=1e-5)


# ----------------------------------------------------------------------------- settings


def test_settings_from_config():
  section = config_base.base_config().augment
  assert set(augment.KEYS) == set(section.keys())
  settings = augment.AugmentSettings.from_config(section)
  assert settings.is_identity()
  c = ml_collections.ConfigDict(dict(section))
  c.rotation = 10.0
  c.noise = 0.05
  settings = augment.AugmentSettings.from_config(c)
  assert not settings.is_identity()
  assert settings.geometric()['rotation'] == 10.0 and settings.photometric()['noise'] == 0.05
  assert set(settings.geometric()) | set(settings.photometric()) == set(augment.KEYS)
  assert not augment.AugmentSettings(elastic_sigma=9.0).geometric()['elastic_alpha']
  assert augment.AugmentSettings(elastic_sigma=9.0).is_identity()
  # The kwargs are those of sample_warp and intensity.
  augment.sample_warp(_key(0), 1, 8, 8, **settings.geometric())
  augment.intensity(_key(0), jnp.zeros((1, 8, 8, 1)), **settings.photometric())
