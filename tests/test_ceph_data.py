"""Tests for robust_med.data.ceph: the synthetic landmark set and the ISBI 2015 loader."""

from __future__ import annotations

import csv
import json
import warnings

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from robust_med.data import ceph
from robust_med.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope='module')
def landmark_set():
  return ceph.make_landmark_set(48, input_size=(64, 56), num_landmarks=5, seed=3)


def test_synthetic_deterministic(landmark_set):
  again = ceph.make_landmark_set(48, input_size=(64, 56), num_landmarks=5, seed=3)
  for key in landmark_set:
    np.testing.assert_array_equal(landmark_set[key], again[key])
  other = ceph.make_landmark_set(48, input_size=(64, 56), num_landmarks=5, seed=4)
  assert not np.array_equal(landmark_set['image'], other['image'])
  assert not np.array_equal(landmark_set['landmarks'], other['landmarks'])


def test_synthetic_shapes_and_dtypes(landmark_set):
  expected = {'image': (48, 64, 56, 1), 'landmarks': (48, 5, 2), 'landmarks_full': (48, 5, 2),
              'to_full': (48, 2), 'spacing': (48, 2), 'image_index': (48,), 'id': (48,)}
  assert {key: value.shape for key, value in landmark_set.items()} == expected
  for key in ('image', 'landmarks', 'landmarks_full', 'to_full', 'spacing'):
    assert landmark_set[key].dtype == np.float32, key
  assert landmark_set['image_index'].dtype == landmark_set['id'].dtype == np.int32
  image = landmark_set['image']
  assert image.min() >= 0 and image.max() <= 1 and image.std() > 0.02
  np.testing.assert_array_equal(landmark_set['to_full'], np.tile([2.0, 1.5], (48, 1)))
  np.testing.assert_array_equal(landmark_set['spacing'], np.full((48, 2), 0.1, np.float32))
  np.testing.assert_allclose(landmark_set['landmarks_full'],
                             landmark_set['landmarks'] * np.array([2.0, 1.5]), rtol=1e-6)
  np.testing.assert_array_equal(landmark_set['image_index'], np.arange(48))
  np.testing.assert_array_equal(landmark_set['id'], np.arange(48))
  assert ceph.make_landmark_set(3)['image'].shape == (3, 64, 64, 1)


def test_synthetic_layout_inside_and_apart(landmark_set):
  points = landmark_set['landmarks']
  assert (points >= 8).all()
  assert (points[..., 0] <= 56 - 1 - 8).all() and (points[..., 1] <= 64 - 1 - 8).all()
  distance = np.linalg.norm(points[:, :, None] - points[:, None], axis=-1) + 1e9 * np.eye(5)
  assert distance.min() >= 10
  assert points.std(axis=0).min() > 0.5  # Shifted and jittered, not a fixed layout.
  assert not np.array_equal(points % 1, np.zeros_like(points))  # Sub-pixel centres.


def test_synthetic_blob_maximum_at_landmark(landmark_set):
  smooth = ndimage.gaussian_filter(landmark_set['image'][..., 0], (0, 1, 1))
  for image, (x, y) in zip(smooth, landmark_set['landmarks'][:, 0]):
    top, left = int(round(y)) - 4, int(round(x)) - 4
    window = image[top:top + 9, left:left + 9]
    row, col = np.unravel_index(window.argmax(), window.shape)
    assert np.hypot(left + col - x, top + row - y) <= 1.0


def test_synthetic_patterns_distinguishable(landmark_set):
  """Each landmark's patch is nearest to its own mean patch (template), never another's."""
  def patches(arrays):
    out = []
    for image, points in zip(arrays['image'][..., 0], arrays['landmarks']):
      for x, y in np.round(points).astype(int):
        patch = image[y - 6:y + 7, x - 6:x + 7]
        out.append((patch - patch.mean()) / patch.std())
    return np.asarray(out).reshape(len(arrays['image']), -1, 169)

  templates = patches(landmark_set).mean(axis=0)  # (L, 169)
  test = patches(ceph.make_landmark_set(24, input_size=(64, 56), num_landmarks=5, seed=9))
  nearest = np.argmax(test @ templates.T, axis=-1)  # (N, L)
  assert (nearest == np.arange(5)).mean() >= 0.98
  many = ceph.make_landmark_set(2, input_size=(200, 160), num_landmarks=19)
  assert many['landmarks'].shape == (2, 19, 2)


def test_synthetic_small_inputs():
  small = ceph.make_landmark_set(8, input_size=(32, 32), num_landmarks=3, seed=1)
  points = small['landmarks']
  assert (points >= 5).all() and (points <= 31 - 5).all()
  distance = np.linalg.norm(points[:, :, None] - points[:, None], axis=-1) + 1e9 * np.eye(3)
  assert distance.min() >= 8


def test_synthetic_too_small_for_landmarks():
  with pytest.raises(ConfigError, match='too small'):
    ceph.make_landmark_set(2, input_size=(24, 24), num_landmarks=19)


def synthetic_config(**overrides):
  config = {'name': 'synthetic', 'patch_size': (48, 40), 'num_landmarks': 4, 'num_train': 20,
            'num_val': 8, 'seed': 5, 'tune_fraction': 0.25, 'train_split': 'train'}
  return ml_collections.ConfigDict({**config, **overrides})


def test_synthetic_load_split_seeds_and_tune():
  config = synthetic_config()
  assert ceph.split_names(config) == ('train', 'val', 'test', 'tune')
  full_train = ceph.make_landmark_set(20, input_size=(48, 40), num_landmarks=4, seed=5)
  loaded = {split: ceph.load_split(config, split) for split in ceph.split_names(config)}
  for split, (rows, seed) in {'train': (slice(0, 15), 5), 'tune': (slice(15, 20), 5),
                              'val': (slice(0, 8), 6), 'test': (slice(0, 8), 7)}.items():
    arrays, info = loaded[split]
    expected = ceph.make_landmark_set(20 if seed == 5 else 8, input_size=(48, 40),
                                      num_landmarks=4, seed=seed)
    for key in ('image', 'landmarks', 'landmarks_full', 'image_index'):
      np.testing.assert_array_equal(arrays[key], expected[key][rows])
    np.testing.assert_array_equal(arrays['id'], np.arange(len(arrays['id'])))
    assert info == ceph.LandmarkInfo(
        name='synthetic', split=split, num_landmarks=4,
        landmark_names=('landmark1', 'landmark2', 'landmark3', 'landmark4'), channels=1,
        input_size=(48, 40), files=('',) * len(arrays['id']))
  assert ceph.split_names(synthetic_config(tune_fraction=0.0)) == ('train', 'val', 'test')
  with pytest.raises(DataError, match=r"unknown split 'tune'.*\['train', 'val', 'test'\]"):
    ceph.load_split(synthetic_config(tune_fraction=0.0), 'tune')


# ----------------------------------------------------------------------------- a built folder

SPLITS = ('train',) * 6 + ('test1',) * 5 + ('test2',) * 3  # Images 001-014.
PNG_WH, FULL_WH, PATCH = (30, 50), (120, 200), (20, 15)  # Scales x 15/120, y 20/200: unequal.


def write_csv(path, header, rows):
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([header, *rows])


def make_ceph(root, *, num_landmarks=3, meta=None, annotations=('mean', 'senior'), full_wh=FULL_WH,
              seed=0):
  """Writes a tiny ISBI-layout folder (14 PNGs, bright left half); returns {file: (L, 2) coords}."""
  rng = np.random.default_rng(seed)
  (root / 'images').mkdir(parents=True)
  coords = {}
  for number, split in enumerate(SPLITS, 1):
    name = f'{number:03d}.png'
    pixels = rng.integers(0, 50, PNG_WH[::-1]).astype(np.uint8)
    pixels[:, :PNG_WH[0] // 2] += 200
    pixels[0, 0], pixels[-1, -1] = 255, 0
    Image.fromarray(pixels).save(root / 'images' / name)
    coords[name] = rng.uniform(2, np.array(full_wh) - 2, (num_landmarks, 2)).round(2)
  meta = meta if meta is not None else {
      'original_size_wh': list(FULL_WH), 'original_spacing_mm': 0.2, 'n_landmarks': num_landmarks,
      'splits': {'train': '001-006', 'test1': '007-011', 'test2': '012-014'}}
  (root / 'meta.json').write_text(json.dumps(meta))
  header = ['image', 'split'] + [f'{a}{k}' for k in range(1, num_landmarks + 1) for a in 'xy']
  rows = [[name, split, *coords[name].ravel()] for name, split in zip(coords, SPLITS)][::-1]
  for annotation in annotations:
    write_csv(root / f'landmarks_{annotation}.csv', header, rows)
  return coords


def folder_config(root, **overrides):
  config = {'name': 'isbi2015', 'root': str(root), 'patch_size': PATCH, 'annotation': 'mean',
            'val_from': 'test1', 'val_count': 2, 'num_landmarks': 3, 'tune_fraction': 0.0,
            'train_split': 'train'}
  return ml_collections.ConfigDict({**config, **overrides})


@pytest.fixture
def folder(tmp_path):
  coords = make_ceph(tmp_path / 'ceph')
  return tmp_path / 'ceph', coords


def test_folder_splits_sizes_and_no_overlap(folder):
  root, _ = folder
  config = folder_config(root, tune_fraction=0.34)
  assert ceph.split_names(folder_config(root)) == ('train', 'test1', 'test2', 'val', 'test')
  assert ceph.split_names(config) == ('train', 'test1', 'test2', 'val', 'test', 'tune')
  files = {split: ceph.load_split(config, split)[1].files for split in ceph.split_names(config)}
  assert {split: len(f) for split, f in files.items()} == {
      'train': 4, 'test1': 5, 'test2': 3, 'val': 2, 'test': 3, 'tune': 2}
  assert files['tune'] == ('005.png', '006.png')
  assert files['val'] + files['test'] == files['test1']
  assert files['test1'] == tuple(f'{n:03d}.png' for n in range(7, 12))
  disjoint = [files[s] for s in ('train', 'tune', 'val', 'test', 'test2')]
  assert len(set(sum(disjoint, ()))) == sum(len(f) for f in disjoint)


def test_folder_arrays_scaled_per_axis(folder):
  root, coords = folder
  arrays, info = ceph.load_split(folder_config(root), 'train')
  names = tuple(f'{n:03d}.png' for n in range(1, 7))
  assert info == ceph.LandmarkInfo(
      name='isbi2015', split='train', num_landmarks=3,
      landmark_names=('landmark1', 'landmark2', 'landmark3'), channels=1, input_size=PATCH,
      files=names)
  image = arrays['image']
  assert image.shape == (6, 20, 15, 1) and image.dtype == np.float32
  assert image.min() >= 0 and image.max() <= 1
  assert image[:, :, :6].mean() > 0.8 and image[:, :, -6:].mean() < 0.2  # Left half bright.
  full = np.stack([coords[name] for name in names])
  np.testing.assert_array_equal(arrays['landmarks_full'], full.astype(np.float32))
  expected = full * np.array([15 / 120, 20 / 200])
  np.testing.assert_allclose(arrays['landmarks'], expected, rtol=1e-6)
  np.testing.assert_allclose(arrays['to_full'], np.tile([8.0, 10.0], (6, 1)), rtol=1e-6)
  np.testing.assert_allclose(arrays['landmarks'] * arrays['to_full'][:, None], full, rtol=1e-5)
  np.testing.assert_allclose(arrays['spacing'], np.full((6, 2), 0.2), rtol=1e-6)
  np.testing.assert_array_equal(arrays['image_index'], np.arange(1, 7))
  np.testing.assert_array_equal(arrays['id'], np.arange(6))
  for key, dtype in {'landmarks': np.float32, 'landmarks_full': np.float32, 'to_full': np.float32,
                     'spacing': np.float32, 'image_index': np.int32, 'id': np.int32}.items():
    assert arrays[key].dtype == dtype, key


def test_folder_test2_and_senior_annotation(folder):
  root, coords = folder
  arrays, info = ceph.load_split(folder_config(root, annotation='senior'), 'test2')
  assert info.files == ('012.png', '013.png', '014.png')
  np.testing.assert_array_equal(arrays['image_index'], [12, 13, 14])
  np.testing.assert_array_equal(arrays['landmarks_full'][0], coords['012.png'].astype(np.float32))


def test_folder_without_original_size_uses_png_size(tmp_path):
  coords = make_ceph(tmp_path, meta={'splits': {'train': '001-006'}, 'original_spacing_mm': 0.1},
                     full_wh=PNG_WH)
  arrays, _ = ceph.load_split(folder_config(tmp_path, val_count=0), 'train')
  np.testing.assert_allclose(arrays['to_full'][0], [30 / 15, 50 / 20])
  np.testing.assert_allclose(arrays['spacing'][0], [0.1, 0.1])
  np.testing.assert_allclose(arrays['landmarks'][0], coords['001.png'] / [2, 2.5], rtol=1e-6)


# ----------------------------------------------------------------------------- bad input


def load(config, split='train'):
  return ceph.load_split(config, split)


def test_root_missing_or_not_a_folder(tmp_path):
  with pytest.raises(DataError, match='does not exist or is not a folder'):
    load(folder_config(tmp_path / 'nowhere'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(DataError, match='does not exist or is not a folder'):
    ceph.split_names(folder_config(tmp_path / 'file'))
  config = folder_config(tmp_path)
  config.root = None
  with pytest.raises(DataError, match='root is not set'):
    load(config)


def test_meta_missing_or_invalid(folder):
  root, _ = folder
  (root / 'meta.json').write_text('{"splits": ')
  with pytest.raises(DataError, match='meta.json is not valid JSON'):
    load(folder_config(root))
  (root / 'meta.json').unlink()
  with pytest.raises(DataError, match='has no meta.json'):
    load(folder_config(root))


def test_missing_spacing_is_refused_not_assumed(folder):
  """Another data set's millimetres are never ISBI's 0.1 mm/px by default."""
  root, _ = folder
  meta = json.loads((root / 'meta.json').read_text())
  del meta['original_spacing_mm']
  (root / 'meta.json').write_text(json.dumps(meta))
  with pytest.raises(DataError, match='no "original_spacing_mm".*ISBI 2015: 0.1'):
    load(folder_config(root))


def test_unknown_annotation_lists_existing(folder):
  root, _ = folder
  with pytest.raises(DataError, match=r"no landmarks_junior.csv.*\['mean', 'senior'\]"):
    load(folder_config(root, annotation='junior'))


def test_csv_column_count(folder):
  root, _ = folder
  with pytest.raises(DataError, match=r'line 1 has 8 columns, expected 10 .*num_landmarks=4'):
    load(folder_config(root, num_landmarks=4))
  path = root / 'landmarks_mean.csv'
  lines = path.read_text().splitlines()
  lines[2] = lines[2].rsplit(',', 1)[0]
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(DataError, match=r'landmarks_mean.csv line 3 has 7 columns, expected 8'):
    load(folder_config(root))


def test_csv_non_numeric_coordinate(folder):
  root, _ = folder
  path = root / 'landmarks_mean.csv'
  lines = path.read_text().splitlines()
  cells = lines[4].split(',')
  cells[5] = 'abc'
  lines[4] = ','.join(cells)
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(DataError, match=r"line 5: y2='abc' is not a finite number"):
    load(folder_config(root))


def test_image_missing_on_disk(folder):
  root, _ = folder
  (root / 'images' / '003.png').unlink()
  with pytest.raises(DataError, match=r'image 003.png listed in .* is missing'):
    load(folder_config(root))
  load(folder_config(root), 'test1')  # Other splits still load.


def test_landmark_outside_image_warns_once(folder):
  root, coords = folder
  coords['002.png'][1] = (FULL_WH[0] + 5, 10)
  coords['004.png'][0] = (10, -1)
  header = ['image', 'split'] + [f'{a}{k}' for k in range(1, 4) for a in 'xy']
  write_csv(root / 'landmarks_mean.csv', header,
            [[name, split, *coords[name].ravel()] for name, split in zip(coords, SPLITS)])
  with pytest.warns(UserWarning, match=r'2 landmarks .*002.png landmark 2, 004.png landmark 1'
                    ) as record:
    arrays, _ = load(folder_config(root))
  assert len(record) == 1
  assert arrays['landmarks_full'][1, 1, 0] == FULL_WH[0] + 5  # Kept as it is.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    load(folder_config(root), 'test1')


def test_image_aspect_differs_from_original_size(tmp_path):
  make_ceph(tmp_path, meta={'original_size_wh': [200, 200], 'original_spacing_mm': 0.1,
                            'splits': {}})
  with pytest.raises(DataError, match=r'001.png is 30x50 but meta.json original_size_wh'):
    load(folder_config(tmp_path))


def test_meta_split_without_rows(tmp_path):
  make_ceph(tmp_path, meta={'original_size_wh': list(FULL_WH),
                            'splits': {'train': '001-006', 'test3': '401-500'}})
  with pytest.raises(DataError, match=r"declares the splits \['test3'\] but no row"):
    ceph.split_names(folder_config(tmp_path))


def test_val_count_too_large_and_unknown_split(folder):
  root, _ = folder
  with pytest.raises(DataError, match=r"val_count=5 takes all 5 'test1' images"):
    load(folder_config(root, val_count=5))
  with pytest.raises(DataError, match=r"unknown split 'valid'.*'train', 'test1', 'test2', 'val'"):
    load(folder_config(root), 'valid')
  assert ceph.split_names(folder_config(root, val_from='test9')) == ('train', 'test1', 'test2')


def test_tune_settings(folder):
  root, _ = folder
  with pytest.raises(ConfigError, match='tune_fraction'):
    ceph.split_names(folder_config(root, tune_fraction=1.5))
  with pytest.raises(DataError, match="cannot carve a tuning split from 'nope'"):
    ceph.split_names(folder_config(root, tune_fraction=0.2, train_split='nope'))
  with pytest.raises(DataError, match='leaves an empty split'):
    ceph.split_names(folder_config(root, tune_fraction=0.01))


def test_unknown_dataset_name(folder):
  with pytest.raises(DataError, match=r"data.name='isbi'.*\['isbi2015', 'synthetic'\]"):
    load(folder_config(folder[0], name='isbi'))
  with pytest.raises(DataError, match='data.name'):
    ceph.split_names(folder_config(folder[0], name=None))


@pytest.mark.parametrize('patch_size', [(0, 5), (5,), (20.5, 15), 'ab', (True, 3)])
def test_bad_patch_size(folder, patch_size):
  with pytest.raises(ConfigError, match='data.patch_size'):
    load(folder_config(folder[0], patch_size=patch_size))


def test_errors_are_one_line(folder):
  root, _ = folder
  for config in (folder_config(root / 'x'), folder_config(root, annotation='x'),
                 folder_config(root, num_landmarks=5), folder_config(root, val_count=9)):
    with pytest.raises(DataError) as info:
      load(config)
    assert '\n' not in str(info.value)


# ----------------------------------------------------------------------------- the real folder


@pytest.fixture(scope='module')
def real_config():
  root = data_paths.require_shared('isbi2015_ceph')
  return folder_config(root, patch_size=(200, 160), num_landmarks=19, val_count=50)


def test_real_splits_and_image_001(real_config):
  root = real_config.root
  assert ceph.split_names(real_config) == ('train', 'test1', 'val', 'test')
  sizes = {}
  for split in ('train', 'val', 'test', 'test1'):
    arrays, info = ceph.load_split(real_config, split)
    sizes[split] = len(arrays['id'])
    if split == 'train':
      train, train_info = arrays, info
  assert sizes == {'train': 150, 'val': 50, 'test': 100, 'test1': 150}
  assert train_info.files[0] == '001.png' and train_info.landmark_names == ceph.LANDMARK_NAMES
  assert train['image'].shape == (150, 200, 160, 1)
  assert 0 <= train['image'].min() and train['image'].max() <= 1
  points = train['landmarks'][0]
  assert (points >= 0).all() and (points[:, 0] < 160).all() and (points[:, 1] < 200).all()
  with open(f'{root}/landmarks_mean.csv', newline='') as f:
    row = next(r for r in csv.reader(f) if r[0] == '001.png')
  np.testing.assert_array_equal(train['landmarks_full'][0],
                                np.asarray(row[2:], np.float32).reshape(19, 2))
  np.testing.assert_allclose(train['to_full'][0], [1935 / 160, 2400 / 200], rtol=1e-6)
  np.testing.assert_allclose(train['spacing'][0], [0.1, 0.1], rtol=1e-6)
  np.testing.assert_array_equal(train['image_index'][:3], [1, 2, 3])
