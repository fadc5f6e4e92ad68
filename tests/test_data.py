"""Tests for robust_med.data: synthetic phantoms, batching, and the MSD loader."""

from __future__ import annotations

import json

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import ml_collections
import nibabel as nib
import numpy as np
import pytest

from robust_med import data
from robust_med.data import msd, source, synthetic
from robust_med.errors import ConfigError, DataError
from msd_fixture import make_msd, write_nifti

# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope='module')
def phantoms():
  return synthetic.make_phantoms(96, patch_size=(48, 64), channels=2, seed=3)


def test_phantoms_deterministic(phantoms):
  again = synthetic.make_phantoms(96, patch_size=(48, 64), channels=2, seed=3)
  for key in phantoms:
    np.testing.assert_array_equal(phantoms[key], again[key])
  other = synthetic.make_phantoms(96, patch_size=(48, 64), channels=2, seed=4)
  assert not np.array_equal(phantoms['image'], other['image'])
  assert not np.array_equal(phantoms['label'], other['label'])


def test_phantoms_shapes_and_dtypes(phantoms):
  assert phantoms['image'].shape == (96, 48, 64, 2)
  assert phantoms['image'].dtype == np.float32
  assert phantoms['label'].shape == (96, 48, 64)
  assert phantoms['label'].dtype == np.int32
  np.testing.assert_array_equal(phantoms['id'], np.arange(96, dtype=np.int32))
  assert phantoms['id'].dtype == np.int32
  single = synthetic.make_phantoms(4, channels=1)
  assert single['image'].shape == (4, 64, 64, 1)


def test_phantoms_classes_present(phantoms):
  label = phantoms['label']
  assert set(np.unique(label)) == {0, 1, 2}
  per_image = [(label == c).reshape(len(label), -1).any(axis=1).mean() for c in range(3)]
  assert min(per_image) > 0.9  # Nearly every phantom shows both zones.
  two = synthetic.make_phantoms(16, num_classes=2)
  assert set(np.unique(two['label'])) == {0, 1}


def test_phantoms_zscored_per_image_and_channel(phantoms):
  image = phantoms['image']
  np.testing.assert_allclose(image.mean(axis=(1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(image.std(axis=(1, 2)), 1, atol=1e-3)


def test_phantoms_need_more_than_a_threshold(phantoms):
  image, label = phantoms['image'][..., 0], phantoms['label']
  background_high = np.percentile(image[label == 0], 95)
  assert background_high > np.percentile(image[label == 1], 10)  # Overlapping intensities.
  assert np.median(image[label == 1]) > np.median(image[label == 0])  # But learnable contrast.
  assert not np.array_equal(phantoms['image'][..., 0], phantoms['image'][..., 1])


def test_phantoms_bad_settings():
  with pytest.raises(ConfigError, match='num_classes'):
    synthetic.make_phantoms(2, num_classes=5)
  with pytest.raises(ConfigError, match='channels'):
    synthetic.make_phantoms(2, channels=3)


def test_load_split_synthetic():
  config = ml_collections.ConfigDict(dict(
      name='synthetic', num_train=12, num_val=6, patch_size=(32, 48), num_classes=3,
      channels=1, seed=7))
  train, info = data.load_split(config, 'train')
  val, val_info = data.load_split(config, 'val')
  assert train['image'].shape == (12, 32, 48, 1) and val['image'].shape == (6, 32, 48, 1)
  assert info.name == 'synthetic' and info.num_classes == 3 and len(info.class_names) == 3
  assert info.patch_size == (32, 48) and info.channels == 1 and val_info.num_volumes == 6
  np.testing.assert_array_equal(val['id'], np.arange(6))
  assert set(train) == set(val) == {'image', 'label', 'id', 'case_index', 'slice_index'}
  same_seed = synthetic.make_phantoms(6, patch_size=(32, 48), seed=7)
  assert not np.array_equal(val['image'], same_seed['image'])  # val uses seed + 1.


def test_load_split_unknown_name():
  config = ml_collections.ConfigDict(dict(name='imagenet'))
  with pytest.raises(DataError, match='synthetic') as info:
    data.load_split(config, 'train')
  _assert_one_line(info.value, 'imagenet', 'msd')


# ----------------------------------------------------------------------------- batching


def _source(n: int = 10) -> source.ArraySource:
  return source.ArraySource({'id': np.arange(n, dtype=np.int32),
                             'x': np.arange(n * 2, dtype=np.float32).reshape(n, 2)})


def _ids(batch_iter) -> list[np.ndarray]:
  return [b['id'] for b in batch_iter]


def test_array_source_protocol():
  src = _source(5)
  assert len(src) == 5
  record = src[3]
  assert record['id'] == 3 and record['x'].tolist() == [6.0, 7.0]


def test_array_source_validation():
  with pytest.raises(DataError, match="'id'"):
    source.ArraySource({'x': np.zeros(3)})
  with pytest.raises(DataError, match='different lengths'):
    source.ArraySource({'id': np.arange(3), 'x': np.zeros(4)})
  with pytest.raises(DataError, match='integer'):
    source.ArraySource({'id': np.zeros(3, np.float32)})


def test_batches_deterministic_per_seed_and_epoch():
  src = _source(40)
  first = _ids(source.batches(src, 8, shuffle=True, seed=1, epoch=2))
  again = _ids(source.batches(src, 8, shuffle=True, seed=1, epoch=2))
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  next_epoch = np.concatenate(_ids(source.batches(src, 8, shuffle=True, seed=1, epoch=3)))
  other_seed = np.concatenate(_ids(source.batches(src, 8, shuffle=True, seed=2, epoch=2)))
  assert not np.array_equal(np.concatenate(first), next_epoch)
  assert not np.array_equal(np.concatenate(first), other_seed)
  ordered = np.concatenate(_ids(source.batches(src, 8, shuffle=False)))
  np.testing.assert_array_equal(ordered, np.arange(40))


def test_batches_cover_every_id_once_without_drop():
  src = _source(23)
  batch_list = list(source.batches(src, 5, shuffle=True, seed=0, epoch=1, drop_remainder=False))
  assert [len(b['id']) for b in batch_list] == [5, 5, 5, 5, 3]
  assert len(batch_list) == source.num_batches(23, 5, drop_remainder=False)
  np.testing.assert_array_equal(np.sort(np.concatenate([b['id'] for b in batch_list])),
                                np.arange(23))
  for b in batch_list:  # Columns stay aligned with their ids.
    np.testing.assert_array_equal(b['x'][:, 0], 2 * b['id'])


def test_empty_or_small_training_split_names_the_right_fix():
  with pytest.raises(DataError, match="training split 'train' is empty.*train_split"):
    source.check_training_size(0, 8)
  with pytest.raises(ConfigError, match='has 5 examples.*at most 5'):
    source.check_training_size(5, 8)
  source.check_training_size(8, 8)


def test_batches_drop_remainder():
  src = _source(23)
  batch_list = list(source.batches(src, 5, shuffle=True, seed=0, epoch=0))
  assert len(batch_list) == 4 == source.num_batches(23, 5, drop_remainder=True)
  assert all(b['id'].shape == (5,) and b['x'].shape == (5, 2) for b in batch_list)
  assert len(set(np.concatenate([b['id'] for b in batch_list]).tolist())) == 20
  assert source.num_batches(20, 5, True) == source.num_batches(20, 5, False) == 4
  with pytest.raises(ConfigError, match='batch size'):
    source.num_batches(20, 0, True)


# ----------------------------------------------------------------------------- MSD (shared data)


@pytest.fixture(scope='module')
def hippo():
  return data_paths.require_shared('msd_hippocampus')


def test_hippocampus_volume_level_split(hippo):
  train = msd.split_cases(hippo, 'train')
  val = msd.split_cases(hippo, 'val')
  assert (len(train), len(val)) == (166, 42)
  assert not set(train) & set(val)
  assert len(set(train) | set(val)) == 208
  assert train == sorted(train) and val == sorted(val)


def test_hash_fallback_reproduces_splits_json(hippo, tmp_path):
  splits = json.loads((hippo / 'splits.json').read_text())
  cases = [msd._case_name(e['image']) for e in msd.read_msd_info(hippo)['training']]
  fallback = msd.hash_split(cases, 0.2)
  assert fallback['train'] == sorted(splits['train'])
  assert fallback['val'] == sorted(splits['val'])
  # The same through split_cases on a copy without splits.json (links, no data copied).
  for name in ('dataset.json', 'imagesTr', 'labelsTr'):
    (tmp_path / name).symlink_to(hippo / name)
  assert msd.split_cases(tmp_path, 'val', 0.2) == sorted(splits['val'])
  assert msd.split_cases(tmp_path, 'train', 0.2) == sorted(splits['train'])


def test_hippocampus_stable_ids_and_order(hippo):
  arrays, info = msd.load_msd_slices(hippo, 'train', patch_size=(48, 64), max_volumes=6)
  again, info_again = msd.load_msd_slices(hippo, 'train', patch_size=(48, 64), max_volumes=6)
  assert info == info_again
  for key in arrays:
    np.testing.assert_array_equal(arrays[key], again[key])
  assert info.cases == tuple(msd.split_cases(hippo, 'train')[:6]) and info.num_volumes == 6
  np.testing.assert_array_equal(arrays['id'], np.arange(len(arrays['id']), dtype=np.int32))
  order = arrays['case_index'].astype(np.int64) * 1000 + arrays['slice_index']
  assert np.all(np.diff(order) > 0)  # Sorted by (case, slice), no duplicates.
  assert set(arrays['case_index'].tolist()) == set(range(6))
  assert all(arrays[k].dtype == np.int32 for k in ('id', 'case_index', 'slice_index'))


def test_hippocampus_shapes_and_labels(hippo):
  arrays, info = msd.load_msd_slices(hippo, 'val', patch_size=(48, 64), slice_axis=2)
  num = len(arrays['id'])
  assert arrays['image'].shape == (num, 48, 64, 1) and arrays['image'].dtype == np.float32
  assert arrays['label'].shape == (num, 48, 64) and arrays['label'].dtype == np.int32
  assert set(np.unique(arrays['label'])) == {0, 1, 2}
  assert arrays['label'].reshape(num, -1).any(axis=1).all()  # foreground_only.
  assert info.num_classes == 3 and info.channels == 1 and info.num_volumes == 42
  assert info.class_names[0] == 'background'


def test_hippocampus_per_volume_zscore(hippo):
  # A 64 x 64 patch holds whole slices (padding adds zeros), so each volume's voxels sum to 0
  # and their squares to the voxel count.
  arrays, info = msd.load_msd_slices(hippo, 'train', patch_size=(64, 64),
                                     foreground_only=False, max_volumes=3)
  for index, case in enumerate(info.cases):
    image = arrays['image'][arrays['case_index'] == index]
    voxels = np.prod(nib.load(hippo / 'imagesTr' / f'{case}.nii.gz').shape)
    assert len(image) == nib.load(hippo / 'imagesTr' / f'{case}.nii.gz').shape[2]
    np.testing.assert_allclose(image.sum(dtype=np.float64), 0, atol=1e-2)
    np.testing.assert_allclose((image.astype(np.float64) ** 2).sum() / voxels, 1, rtol=1e-4)


def test_load_split_msd(hippo):
  config = ml_collections.ConfigDict(dict(
      name='msd', root=str(hippo), patch_size=(48, 64), slice_axis=0, foreground_only=True,
      val_fraction=0.2, max_volumes=2, resize=False))
  arrays, info = data.load_split(config, 'val')
  assert info.num_volumes == 2 and arrays['image'].shape[1:] == (48, 64, 1)
  resized, _ = data.load_split(ml_collections.ConfigDict(dict(
      name='msd', root=str(hippo), patch_size=(32, 32), max_volumes=1, resize=True)), 'train')
  assert resized['image'].shape[1:] == (32, 32, 1) and resized['label'].max() <= 2


# ----------------------------------------------------------------------------- MSD (bad inputs)


def _assert_one_line(error: Exception, *words: str) -> None:
  message = str(error)
  assert '\n' not in message, message
  for word in words:
    assert word in message, (word, message)


def test_tiny_msd_loads(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  arrays, info = msd.load_msd_slices(root, 'train', patch_size=(8, 8), val_fraction=0.34)
  assert info.num_volumes == 2 and info.channels == 1
  assert info.class_names == ('background', 'organ')
  assert arrays['image'].shape == (4, 8, 8, 1)  # 2 volumes x 2 foreground slices.
  np.testing.assert_array_equal(arrays['slice_index'], [1, 2, 1, 2])


def test_missing_root(tmp_path):
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(tmp_path / 'nowhere', 'train')
  _assert_one_line(info.value, 'nowhere', 'does not exist', 'configs/prostate_amat.py:synthetic')


def test_missing_dataset_json(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  (root / 'dataset.json').unlink()
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train')
  _assert_one_line(info.value, 'no dataset.json', 'medicaldecathlon.com', '--config.data.root')


def test_malformed_json(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  (root / 'dataset.json').write_text('{"name": "Tiny",')
  with pytest.raises(DataError) as info:
    msd.read_msd_info(root)
  _assert_one_line(info.value, 'dataset.json', 'not valid JSON')


def test_missing_keys(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  (root / 'dataset.json').write_text(json.dumps({'name': 'Tiny', 'training': []}))
  with pytest.raises(DataError) as info:
    msd.read_msd_info(root)
  _assert_one_line(info.value, 'lacks the keys', 'modality', 'labels')


def test_missing_labels_folder(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  for path in (root / 'labelsTr').iterdir():
    path.unlink()
  (root / 'labelsTr').rmdir()
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train')
  _assert_one_line(info.value, 'labelsTr')


def test_listed_file_missing(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  (root / 'labelsTr' / 'case_a.nii.gz').unlink()
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train', val_fraction=0.0)
  _assert_one_line(info.value, 'case_a', 'missing')


def test_shape_mismatch(tmp_path):
  root = make_msd(tmp_path / 'tiny', image_shape=(6, 5, 4), label_shape=(6, 5, 3))
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train', val_fraction=0.0)
  _assert_one_line(info.value, 'case_a', '(6, 5, 4)', '(6, 5, 3)', 'does not match')


def test_label_out_of_range(tmp_path):
  root = make_msd(tmp_path / 'tiny', label_value=3)
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train', val_fraction=0.0)
  _assert_one_line(info.value, 'label values', '3', 'background')


def test_unknown_and_empty_split(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'test')
  _assert_one_line(info.value, "'test'", 'train', 'val')
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'val', val_fraction=0.0)
  _assert_one_line(info.value, 'empty')


def test_splits_json_is_used_and_checked(tmp_path):
  root = make_msd(tmp_path / 'tiny')
  (root / 'splits.json').write_text(json.dumps({'train': ['case_c', 'case_a'], 'val': ['case_b']}))
  assert msd.split_cases(root, 'train') == ['case_a', 'case_c']
  assert msd.split_cases(root, 'val') == ['case_b']
  (root / 'splits.json').write_text(json.dumps({'train': ['case_a'], 'val': ['case_a']}))
  with pytest.raises(DataError) as info:
    msd.split_cases(root, 'val')
  _assert_one_line(info.value, 'both', 'case_a')


def test_two_modalities_load_as_channels(tmp_path):
  root = make_msd(tmp_path / 'tiny', image_shape=(6, 5, 4, 2), modalities=('T2', 'ADC'))
  arrays, info = msd.load_msd_slices(root, 'train', patch_size=(6, 5), val_fraction=0.0,
                                     foreground_only=False)
  assert info.channels == 2
  assert arrays['image'].shape == (12, 6, 5, 2)  # 3 volumes x 4 slices.
  for index in range(3):  # Each channel z-scored over its volume.
    volume = arrays['image'][arrays['case_index'] == index].astype(np.float64)
    np.testing.assert_allclose(volume.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(volume.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_modality_count_mismatch(tmp_path):
  root = make_msd(tmp_path / 'tiny', image_shape=(6, 5, 4, 2), modalities=('T2',))
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train', val_fraction=0.0)
  _assert_one_line(info.value, 'channels', 'modalities')


def test_non_finite_image(tmp_path):
  root = make_msd(tmp_path / 'tiny', cases=('case_a',))
  image = np.ones((6, 5, 4), np.float32)
  image[0, 0, 0] = np.nan
  write_nifti(root / 'imagesTr' / 'case_a.nii.gz', image)
  with pytest.raises(DataError) as info:
    msd.load_msd_slices(root, 'train', val_fraction=0.0)
  _assert_one_line(info.value, 'case_a', 'NaN')


def test_splits_json_declares_any_named_split(tmp_path):
  root = make_msd(tmp_path / 'tiny', cases=('case_a', 'case_b', 'case_c', 'case_d'), splits={
      'rule': 'a note, not a split', 'train': ['case_a', 'case_b'], 'val': ['case_c'],
      'test': ['case_d']})
  config = ml_collections.ConfigDict(dict(name='msd', root=str(root), patch_size=(8, 8)))
  assert data.split_names(config) == ('train', 'val', 'test')
  arrays, info = data.load_split(config, 'test')
  assert info.cases == ('case_d',) and len(arrays['id']) == 2  # Two foreground slices.
  np.testing.assert_array_equal(arrays['id'], [0, 1])


def test_a_folder_with_only_a_test_list(tmp_path):
  """Another site's data: labelled held-out cases only, no training split."""
  root = make_msd(tmp_path / 'site2', cases=('x1', 'x2'), splits={'test': ['x2', 'x1']})
  assert msd.split_cases(root, 'test') == ['x1', 'x2']
  with pytest.raises(DataError) as info:
    msd.split_cases(root, 'train')
  _assert_one_line(info.value, "unknown split 'train'", "['test']", 'splits.json')


@pytest.mark.parametrize('splits, words', [
    ({'train': ['case_a'], 'test': ['case_a']}, ['both', 'train', 'test', 'case_a']),
    ({'test': ['case_a', 3]}, ['"test"', 'strings']),
    ({'test': ['case_z']}, ['"test"', 'case_z', 'not in dataset.json']),
    ({'rule': 'no lists'}, ['lists no split']),
    (['case_a'], ['JSON object']),
])
def test_bad_splits_json_is_one_line(tmp_path, splits, words):
  root = make_msd(tmp_path / 'tiny', splits=splits)
  with pytest.raises(DataError) as info:
    msd.split_cases(root, 'test')
  _assert_one_line(info.value, *words)


def test_synthetic_declares_a_test_split():
  config = ml_collections.ConfigDict(dict(name='synthetic', num_train=8, num_val=6,
                                          patch_size=(16, 16), seed=0))
  assert data.split_names(config) == ('train', 'val', 'test')
  val, _ = data.load_split(config, 'val')
  test, _ = data.load_split(config, 'test')
  assert len(test['id']) == 6 and not np.array_equal(val['image'], test['image'])
  with pytest.raises(DataError) as info:
    data.load_split(config, 'test2')
  _assert_one_line(info.value, "'test2'", 'test')


# ----------------------------------------------------------------------------- tuning split


def test_tune_split_is_carved_from_train_volumes(tmp_path):
  cases = tuple(f'case_{i:02d}' for i in range(10))
  root = make_msd(tmp_path / 'tiny', cases=cases,
                  splits={'train': list(cases[:8]), 'val': list(cases[8:])})
  splits = msd.available_splits(root, tune_fraction=0.25)
  assert set(splits) == {'train', 'val', 'tune'}
  assert len(splits['tune']) == 2 and len(splits['train']) == 6
  assert sorted(splits['train'] + splits['tune']) == list(cases[:8])  # only training volumes,
  assert splits['val'] == list(cases[8:])                              # val untouched,
  assert splits == msd.available_splits(root, tune_fraction=0.25)      # and deterministic.
  assert msd.available_splits(root) == {'train': list(cases[:8]), 'val': list(cases[8:])}
  # Volume level: no case of the tune split contributes a slice to train.
  config = ml_collections.ConfigDict({'name': 'msd', 'root': str(root), 'patch_size': (6, 5),
                                      'tune_fraction': 0.25, 'train_split': 'train'})
  assert data.split_names(config) == ('train', 'val', 'tune')
  train, info_train = data.load_split(config, 'train')
  tune, info_tune = data.load_split(config, 'tune')
  assert not set(info_train.cases) & set(info_tune.cases)
  assert set(info_tune.cases) == set(splits['tune'])


@pytest.mark.parametrize('splits, kwargs, error, words', [
    ({'train': ['case_a', 'case_b'], 'tune': ['case_c']}, dict(tune_fraction=0.5), DataError,
     ["'tune'", 'tune_fraction=0']),
    ({'trn': ['case_a', 'case_b'], 'val': ['case_c']}, dict(tune_fraction=0.5), DataError,
     ["'train'", 'train_split']),
    ({'train': ['case_a'], 'val': ['case_b', 'case_c']}, dict(tune_fraction=0.5), DataError,
     ['empty']),
    ({'train': ['case_a', 'case_b'], 'val': ['case_c']}, dict(tune_fraction=1.5), ConfigError,
     ['tune_fraction']),
])
def test_bad_tune_settings_are_one_line(tmp_path, splits, kwargs, error, words):
  root = make_msd(tmp_path / 'tiny', splits=splits)
  with pytest.raises(error) as info:
    msd.available_splits(root, **kwargs)
  _assert_one_line(info.value, *words)


def test_synthetic_tune_split_takes_its_share_of_train():
  c = ml_collections.ConfigDict({'name': 'synthetic', 'num_train': 40, 'num_val': 8,
                                 'patch_size': (16, 16), 'tune_fraction': 0.25})
  assert data.split_names(c) == ('train', 'val', 'test', 'tune')
  train, _ = data.load_split(c, 'train')
  tune, _ = data.load_split(c, 'tune')
  assert len(train['id']) == 30 and len(tune['id']) == 10
  assert not np.allclose(train['image'][:10], tune['image'])
  c.tune_fraction = 0.0
  with pytest.raises(DataError) as info:
    data.load_split(c, 'tune')
  _assert_one_line(info.value, 'tune_fraction')
