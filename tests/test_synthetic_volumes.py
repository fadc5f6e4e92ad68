"""Synthetic 3-D phantoms: deterministic and prefix-stable, every class in every volume, the inner
zone inside the organ, not segmentable by a threshold, z-scored, physical spacing, and one-line
ConfigErrors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from robust_med.data.synthetic_volumes import make_volume_phantoms
from robust_med.errors import ConfigError

NUM = 16


@pytest.fixture(scope='module')
def volumes():
  return make_volume_phantoms(NUM, channels=2, seed=3)


def test_deterministic_and_prefix_stable(volumes):
  again = make_volume_phantoms(NUM, channels=2, seed=3)
  assert set(again) == {'image', 'label', 'spacing', 'id'}
  for key in volumes:
    np.testing.assert_array_equal(volumes[key], again[key])
  other = make_volume_phantoms(NUM, channels=2, seed=4)
  assert not np.array_equal(volumes['image'], other['image'])
  assert not np.array_equal(volumes['label'], other['label'])
  # The first k volumes do not depend on how many follow (across a chunk boundary too).
  for k in (3, 9):
    prefix = make_volume_phantoms(k, channels=2, seed=3)
    for key in volumes:
      np.testing.assert_array_equal(volumes[key][:k], prefix[key])
  # Channels and classes change neither the anatomy nor the first channel.
  single = make_volume_phantoms(4, channels=1, num_classes=2, seed=3)
  np.testing.assert_array_equal(single['image'][..., 0], volumes['image'][:4, ..., 0])
  np.testing.assert_array_equal(single['label'], (volumes['label'][:4] > 0).astype(np.int32))
  assert not np.array_equal(volumes['image'][..., 0], volumes['image'][..., 1])


def test_shapes_classes_and_anatomy(volumes):
  image, label = volumes['image'], volumes['label']
  assert image.shape == (NUM, 32, 40, 32, 2) and image.dtype == np.float32
  assert label.shape == (NUM, 32, 40, 32) and label.dtype == np.int32
  np.testing.assert_array_equal(volumes['id'], np.arange(NUM))
  assert volumes['id'].dtype == np.int32
  assert volumes['spacing'].shape == (NUM, 3) and volumes['spacing'].dtype == np.float32
  np.testing.assert_array_equal(volumes['spacing'], 1.0)
  odd = make_volume_phantoms(2, shape=(16, 24, 20), spacing=(0.8, 0.8, 2.5))
  assert odd['image'].shape == (2, 16, 24, 20, 1) and odd['label'].shape == (2, 16, 24, 20)
  np.testing.assert_allclose(odd['spacing'], [[0.8, 0.8, 2.5]] * 2)
  flat = label.reshape(NUM, -1)
  for c in range(3):
    assert (flat == c).any(axis=1).all(), f'class {c} missing from a volume'
  # Class 2 lies inside the organ: no voxel of it has a background voxel among its 26 neighbours.
  zone2 = label == 2
  around = ndimage.binary_dilation(zone2, np.ones((1, 3, 3, 3), bool))
  assert around.sum() > zone2.sum()  # Each zone 2 has a rim...
  assert (label[around] > 0).all()  # ...which is organ (class 1 or 2), never background.
  assert ((label == 1) & around).any(axis=(1, 2, 3)).all()
  # The organ moves and changes size from volume to volume.
  organ = label > 0
  centres = np.array([np.argwhere(o).mean(axis=0) for o in organ])
  assert (np.ptp(centres, axis=0) > 3).all(), centres  # Voxels, along each of x, y, z.
  grid_centre = (np.array(label.shape[1:]) - 1) / 2
  assert np.abs(centres - grid_centre).max() > 2
  sizes = organ.sum(axis=(1, 2, 3))
  assert sizes.max() > 1.4 * sizes.min()


def _best_threshold_dice(image: np.ndarray, organ: np.ndarray) -> float:
  """The highest Dice with `organ` of `image > t` or `image < t` over 200 thresholds t."""
  best = 0.0
  for t in np.quantile(image, np.linspace(0.005, 0.995, 200)):
    for guess in (image > t, image < t):
      best = max(best, 2 * (guess & organ).sum() / (guess.sum() + organ.sum()))
  return best


def test_a_threshold_cannot_segment_the_organ(volumes):
  image, label = volumes['image'][..., 0], volumes['label']
  organ = label > 0
  # Even the best threshold chosen for each volume (an oracle) misses the organ by far.
  dice = [_best_threshold_dice(image[i], organ[i]) for i in range(NUM)]
  assert max(dice) < 0.8 and np.mean(dice) < 0.6, dice
  # Around the organ (3 voxels out: body and the two structures) the intensities overlap the
  # organ's, yet the organ is brighter on the whole: a contrast a model can learn.
  near = ndimage.binary_dilation(organ, np.ones((1, 3, 3, 3), bool), iterations=3) & ~organ
  assert np.percentile(image[near], 95) > np.percentile(image[organ], 50)
  assert np.median(image[organ]) > np.median(image[near]) + 0.5


def test_zscored_per_volume_and_channel(volumes):
  image = volumes['image']
  np.testing.assert_allclose(image.mean(axis=(1, 2, 3)), 0, atol=1e-4)
  np.testing.assert_allclose(image.std(axis=(1, 2, 3)), 1, atol=1e-3)


def test_spacing_is_physical():
  """Half the slices, twice as thick: the same organs, as many mm^3 (up to resampling error)."""
  fine = make_volume_phantoms(8, shape=(32, 40, 32), spacing=(1.0, 1.0, 1.0), seed=5)
  thick = make_volume_phantoms(8, shape=(32, 40, 16), spacing=(1.0, 1.0, 2.0), seed=5)
  fine_mm3 = (fine['label'] > 0).sum(axis=(1, 2, 3))
  thick_mm3 = 2 * (thick['label'] > 0).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(thick_mm3 / fine_mm3, 1, atol=0.08)
  assert np.ptp(fine_mm3) > 0.1 * fine_mm3.mean()  # Sizes differ, so the match is per volume.


@pytest.mark.parametrize('kwargs, words', [
    (dict(num=0), 'count'),
    (dict(num=-2), 'count'),
    (dict(num=2.5), 'count'),
    (dict(shape=(32, 40)), 'shape'),
    (dict(shape=(32, 40, 32, 1)), 'shape'),
    (dict(shape=(32, 8, 32)), 'shape'),
    (dict(shape=(32, 0, 32)), 'shape'),
    (dict(shape=(32.0, 40, 32)), 'shape'),
    (dict(shape=32), 'shape'),
    (dict(num_classes=1), 'num_classes'),
    (dict(num_classes=4), 'num_classes'),
    (dict(channels=0), 'channels'),
    (dict(channels=3), 'channels'),
    (dict(spacing=(1.0, 1.0, 0.0)), 'spacing'),
    (dict(spacing=(1.0, -1.0, 1.0)), 'spacing'),
    (dict(spacing=(1.0, 1.0, float('nan'))), 'spacing'),
    (dict(spacing=(1.0, 1.0)), 'spacing'),
])
def test_bad_settings_raise_one_line_config_errors(kwargs, words):
  kwargs = {'num': 2, **kwargs}
  with pytest.raises(ConfigError, match=words) as info:
    make_volume_phantoms(kwargs.pop('num'), **kwargs)
  message = str(info.value)
  assert '\n' not in message and ('use' in message or 'give' in message or 'ask' in message)
