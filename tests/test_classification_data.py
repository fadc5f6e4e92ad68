"""The classification data layer (robust_med/data/classification.py): MedMNIST and split-column
npz files, image folders (PNG, JPEG, DICOM), the synthetic lesion set, bad input and the shared
BUSI and PneumoniaMNIST copies."""

from __future__ import annotations

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import ml_collections
import numpy as np
import pytest
from PIL import Image

from robust_med.data import classification as cls_data
from robust_med.errors import ConfigError, DataError

SIZES = {'train': 5, 'val': 3, 'test': 4}


def config(**overrides):
  return ml_collections.ConfigDict({'name': 'npz', 'root': '', 'image_size': 16, 'channels': 1,
                                    'class_names': (), 'image_key': 'images',
                                    'label_key': 'label', 'num_train': 20, 'num_val': 10,
                                    'seed': 0, 'train_split': 'train', **overrides})


def ramp(n, h, w, channels=0):
  """uint8 images whose value rises with the row index: image k adds 10·k."""
  base = np.linspace(0, 200, h)[:, None].repeat(w, axis=1)
  images = np.stack([base + 10 * k for k in range(n)]).clip(0, 255).astype(np.uint8)
  return np.repeat(images[..., None], channels, axis=-1) if channels else images


def make_medmnist(path, rgb=False, **extra):
  arrays = {}
  for split, n in SIZES.items():
    arrays[f'{split}_images'] = ramp(n, 28, 28, 3 if rgb else 0)
    arrays[f'{split}_labels'] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
  arrays.update(extra)
  np.savez(path, **arrays)
  return path


def make_column_npz(path, **extra):
  splits = np.array(['train'] * 5 + ['val'] * 3 + ['test'] * 4)
  n = len(splits)
  masks = np.zeros((n, 32, 32), np.uint8)
  masks[:, 8:16, 8:24] = 1
  arrays = {'images': ramp(n, 32, 32), 'images_28': ramp(n, 28, 28), 'mask': masks,
            'label': (np.arange(n) % 3).astype(np.int8), 'label_breastmnist': np.ones(n, np.int8),
            'split': splits}
  arrays.update(extra)
  np.savez(path, **arrays)
  return path


def save_dicom(path):
  from pydicom import examples  # pylint: disable=import-outside-toplevel
  ds = examples.ct.copy()
  ds.save_as(path)
  return ds.pixel_array


def make_folder(root):
  """train: cat (png, jpg), dog (png, DICOM); val: cat, dog; test: dog only, one DICOM."""
  layout = {'train/cat/a.png': 'L', 'train/cat/b.JPG': 'RGB', 'train/dog/c.png': 'RGB',
            'train/dog/d.dcm': 'dcm', 'val/cat/e.jpeg': 'L', 'val/dog/f.png': 'L',
            'test/dog/g.dcm': 'dcm', 'test/dog/h.png': 'RGB'}
  for name, mode in layout.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == 'dcm':
      save_dicom(path)
      continue
    pixels = ramp(1, 40, 30, 3)[0]
    pixels[..., 0] = 255  # Red-tinted in RGB files.
    image = Image.fromarray(pixels)
    (image.convert('L') if mode == 'L' else image).save(path)
  (root / 'train' / 'cat' / 'notes.txt').write_text('not an image')
  return root


# --------------------------------------------------------------------------------------------
# npz files.


@pytest.mark.parametrize('rgb', [False, True])
@pytest.mark.parametrize('channels', [1, 3])
def test_medmnist_npz_loads_every_split(tmp_path, rgb, channels):
  path = make_medmnist(tmp_path / 'mnist.npz', rgb=rgb)
  c = config(root=str(tmp_path), channels=channels, image_size=14)  # The folder holds one .npz.
  assert cls_data.split_names(c) == ('train', 'val', 'test')
  for split, n in SIZES.items():
    arrays, info = cls_data.load_split(c, split)
    assert set(arrays) == {'image', 'label', 'id'}
    assert arrays['image'].shape == (n, 14, 14, channels) and arrays['image'].dtype == np.float32
    assert 0 <= arrays['image'].min() and arrays['image'].max() <= 1
    assert arrays['label'].tolist() == [k % 2 for k in range(n)]
    assert arrays['label'].dtype == np.int32
    assert arrays['id'].tolist() == list(range(n)) and arrays['id'].dtype == np.int32
    assert info.class_names == ('0', '1') and info.num_classes == 2
    assert info.class_counts == ((n + 1) // 2, n // 2) and info.source == str(path)
    assert (info.name, info.split, info.channels, info.image_size) == ('npz', split, channels, 14)
  # Brightness rises down the rows and with k; RGB with R = G = B keeps its gray values.
  image = arrays['image']
  assert (np.diff(image[0].mean(axis=(1, 2))) > 0).all()
  assert image[1].mean() == pytest.approx(image[0].mean() + 10 / 255, abs=2e-3)
  np.testing.assert_allclose(image[0, 7].mean(), 100 / 255, atol=0.03)


def test_npz_file_root_and_same_size_is_exact(tmp_path):
  path = make_medmnist(tmp_path / 'mnist.npz')
  arrays, _ = cls_data.load_split(config(root=str(path), image_size=28), 'val')
  np.testing.assert_array_equal(arrays['image'][..., 0], ramp(3, 28, 28) / np.float32(255))


def test_npz_class_names_from_config_or_file(tmp_path):
  path = make_medmnist(tmp_path / 'a.npz', class_names=np.array(['healthy', 'sick']))
  _, info = cls_data.load_split(config(root=str(path)), 'train')
  assert info.class_names == ('healthy', 'sick')
  _, info = cls_data.load_split(config(root=str(path), class_names=('n', 'p', 'x')), 'test')
  assert info.class_names == ('n', 'p', 'x') and info.class_counts == (2, 2, 0)
  with pytest.raises(DataError, match="no images of the class.*x"):  # nothing to learn x from
    cls_data.load_split(config(root=str(path), class_names=('n', 'p', 'x')), 'train')


def test_split_column_npz_loads_every_split_with_masks(tmp_path):
  path = make_column_npz(tmp_path / 'busi.npz')
  c = config(root=str(path), class_names=('normal', 'benign', 'malignant'))
  assert cls_data.split_names(c) == ('train', 'val', 'test')
  labels = np.arange(12) % 3
  for split, rows in (('train', slice(0, 5)), ('val', slice(5, 8)), ('test', slice(8, 12))):
    arrays, info = cls_data.load_split(c, split)
    n = len(labels[rows])
    assert set(arrays) == {'image', 'label', 'id', 'mask'}
    assert arrays['image'].shape == (n, 16, 16, 1)
    assert arrays['label'].tolist() == labels[rows].tolist()
    assert arrays['id'].tolist() == list(range(n))
    assert arrays['mask'].shape == (n, 16, 16) and arrays['mask'].dtype == np.uint8
    assert arrays['mask'][0].sum() == 4 * 8 and set(np.unique(arrays['mask'])) == {0, 1}
    assert info.class_counts == tuple(np.bincount(labels[rows], minlength=3))
  # Test rows 8…11 are images 8…11 of the file (brightness grows 10/255 per image).
  full = cls_data.load_split(config(root=str(path), image_size=32), 'test')[0]['image']
  np.testing.assert_allclose(full[0, ..., 0], ramp(12, 32, 32)[8] / 255, atol=1e-6)


def test_image_key_override_and_label_key(tmp_path):
  path = make_column_npz(tmp_path / 'busi.npz')
  c = config(root=str(path), image_size=56, label_key='label_breastmnist',
             class_names=('malignant', 'benign_or_normal'))
  default, _ = cls_data.load_split(c, 'val')
  small, info = cls_data.load_split(c, 'val', image_key='images_28')  # 28 px upsampled to 56.
  assert small['image'].shape == default['image'].shape == (3, 56, 56, 1)
  assert small['mask'].shape == (3, 56, 56) and info.image_size == 56
  assert small['label'].tolist() == [1, 1, 1]
  np.testing.assert_allclose(small['image'].mean(axis=(1, 2, 3)),
                             default['image'].mean(axis=(1, 2, 3)), atol=0.02)
  assert not np.array_equal(small['image'], default['image'])


# --------------------------------------------------------------------------------------------
# Image folders.


@pytest.mark.parametrize('channels', [1, 3])
def test_image_folder_png_jpeg_dicom(tmp_path, channels):
  root = make_folder(tmp_path / 'folder')
  c = config(name='folder', root=str(root), channels=channels, image_size=20)
  assert cls_data.split_names(c) == ('train', 'val', 'test')
  sizes, counts = {}, {}
  for split in ('train', 'val', 'test'):
    arrays, info = cls_data.load_split(c, split)
    assert info.class_names == ('cat', 'dog') and info.name == 'folder'
    assert arrays['image'].shape[1:] == (20, 20, channels)
    assert 0 <= arrays['image'].min() and arrays['image'].max() <= 1
    sizes[split], counts[split] = len(arrays['id']), info.class_counts
    if split == 'train':
      train = arrays
  assert sizes == {'train': 4, 'val': 2, 'test': 2}
  assert counts == {'train': (2, 2), 'val': (1, 1), 'test': (0, 2)}  # dog is 1 in every split.
  assert train['label'].tolist() == [0, 0, 1, 1] and train['id'].tolist() == [0, 1, 2, 3]
  dicom = train['image'][3]  # d.dcm: min–max scaled, so it spans [0, 1] before resizing.
  assert dicom.max() > 0.5 and dicom.min() < 0.1
  rgb = train['image'][1]  # b.JPG (upper-case suffix): red-tinted.
  if channels == 3:
    assert rgb[..., 0].mean() > rgb[..., 1].mean() + 0.2
    assert np.allclose(train['image'][0][..., 0], train['image'][0][..., 2])  # Gray repeated.
  else:
    gray = train['image'][0]  # a.png, the same pixels saved as luminance.
    np.testing.assert_allclose(rgb, gray, atol=0.03)


def test_image_folder_dicom_pixels(tmp_path):
  root = tmp_path / 'f'
  for split in ('train',):
    for cls in ('a', 'b'):
      (root / split / cls).mkdir(parents=True)
  pixels = save_dicom(root / 'train' / 'a' / 'x.dcm').astype(np.float32)
  Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(root / 'train' / 'b' / 'y.png')
  arrays, _ = cls_data.load_split(config(name='folder', root=str(root), image_size=128), 'train')
  expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
  np.testing.assert_allclose(arrays['image'][0, ..., 0], expected, atol=1e-6)
  np.testing.assert_allclose(arrays['image'][1], 32768 / 65535, atol=1e-5)  # 16-bit PNG.


def test_image_folder_configured_classes(tmp_path):
  root = make_folder(tmp_path / 'folder')
  c = config(name='folder', root=str(root), class_names=('dog', 'cat', 'bird'))
  arrays, info = cls_data.load_split(c, 'val')
  assert info.class_names == ('dog', 'cat', 'bird') and info.class_counts == (1, 1, 0)
  assert arrays['label'].tolist() == [0, 1]  # Ordered by class, then file name.
  assert cls_data.missing_classes(info) == ('bird',)


def test_a_class_missing_from_training_is_refused_and_from_evaluation_reported(tmp_path):
  """The test split has no cat: training on it is refused (the classifier would never see a
  cat); evaluating on it loads, and the task's note (printed and kept in the report) says so."""
  from robust_med.tasks.classification import Task as ClassificationTask
  root = make_folder(tmp_path / 'folder')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(name='folder', root=str(root), train_split='test'), 'test')
  one_line(e, "training split 'test'", 'cat', 'never see')
  _, info = cls_data.load_split(config(name='folder', root=str(root)), 'test')
  assert info.class_counts == (0, 2)
  note = ClassificationTask.subset_note(None, info)
  assert "'test' split has no images of the class(es) cat" in note
  _, info = cls_data.load_split(config(name='folder', root=str(root)), 'val')
  assert ClassificationTask.subset_note(None, info) == ''


# --------------------------------------------------------------------------------------------
# Synthetic set.


def test_synthetic_set_is_deterministic_with_documented_counts():
  c = config(name='synthetic', image_size=32, num_train=50, num_val=20, seed=3)
  assert cls_data.split_names(c) == ('train', 'val', 'test')
  a, info = cls_data.load_split(c, 'train')
  b, _ = cls_data.load_split(c, 'train')
  for key in ('image', 'label', 'mask', 'id'):
    np.testing.assert_array_equal(a[key], b[key])
  assert info.class_names == ('normal', 'benign', 'malignant')
  assert info.class_counts == (10, 25, 15) == tuple(np.bincount(a['label']))
  assert a['image'].shape == (50, 32, 32, 1) and a['mask'].shape == (50, 32, 32)
  assert 0 <= a['image'].min() and a['image'].max() <= 1
  assert a['id'].tolist() == list(range(50))
  lesion = a['mask'].sum(axis=(1, 2))
  assert (lesion[a['label'] == 0] == 0).all() and (lesion[a['label'] > 0] > 10).all()
  # Lesions are darker than the tissue around them, by a moderate margin.
  inside = [a['image'][k, ..., 0][a['mask'][k] > 0].mean() for k in np.flatnonzero(a['label'])]
  assert 0.1 < np.median(a['image'][..., 0].mean(axis=(1, 2))) - np.median(inside) < 0.45
  val, vinfo = cls_data.load_split(c, 'val')
  test, tinfo = cls_data.load_split(c, 'test')
  assert vinfo.class_counts == tinfo.class_counts == (4, 10, 6)
  assert not np.array_equal(val['image'], test['image'])
  other, _ = cls_data.load_split(config(name='synthetic', image_size=32, num_train=50, seed=4),
                                 'train')
  assert not np.array_equal(other['image'], a['image'])
  rgb = cls_data.make_classification_set(4, image_size=16, channels=3, seed=0)['image']
  assert rgb.shape == (4, 16, 16, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
  assert cls_data.synthetic_class_counts(384) == (77, 192, 115)


# --------------------------------------------------------------------------------------------
# Bad input.


def one_line(excinfo, *words):
  text = str(excinfo.value)
  assert '\n' not in text, text
  for word in words:
    assert word in text, (word, text)


def test_bad_npz_input(tmp_path):
  path = make_medmnist(tmp_path / 'm.npz')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path)), 'holdout')
  one_line(e, "'holdout'", 'train, val, test', 'train_images', 'val_labels')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(make_column_npz(tmp_path / 'c.npz'))), 'tune')
  one_line(e, "'tune'", 'train, val, test', 'split')
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(root=str(tmp_path / 'nowhere')))
  one_line(e, 'nowhere', 'not found', 'config.data.root')
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(root=''))
  one_line(e, 'config.data.root is not set')
  np.savez(tmp_path / 'x.npz', pixels=np.zeros((2, 4, 4)), targets=np.zeros(2))
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(root=str(tmp_path / 'x.npz')))
  one_line(e, 'neither', '<split>_images', 'split column', 'pixels, targets')
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(root=str(tmp_path)))  # Three .npz files now.
  one_line(e, '3 .npz files', 'm.npz')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(root=str(tmp_path / 'empty')))
  one_line(e, 'no .npz file', "name='folder'")
  (tmp_path / 'broken.npz').write_bytes(b'not a zip')
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(root=str(tmp_path / 'broken.npz')))
  one_line(e, 'broken.npz', 'cannot read')


def test_bad_npz_arrays(tmp_path):
  path = make_medmnist(tmp_path / 'a.npz', train_labels=np.zeros(4, np.uint8))
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path)), 'train')
  one_line(e, "'train_images' has 5 rows", "'train_labels' has 4")
  path = make_column_npz(tmp_path / 'b.npz', label=np.zeros(11, np.int8))
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path)), 'train')
  one_line(e, "'images' has 12", "'label' has 11")
  path = make_medmnist(tmp_path / 'c.npz', val_labels=np.eye(3, 4, dtype=np.uint8))
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path)), 'val')
  one_line(e, 'multi-label', 'only single-label classification is supported')
  path = make_medmnist(tmp_path / 'd.npz', test_labels=np.array([0, 1, 2, 1]))
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path), class_names=('normal', 'pneumonia')), 'test')
  one_line(e, 'Label 2', "split 'test'", "('normal', 'pneumonia')", 'config.data.class_names')
  path = make_column_npz(tmp_path / 'e.npz')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path)), 'val', image_key='images_64')
  one_line(e, "'images_64'", 'images_28', 'config.data.image_key')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(root=str(path), label_key='target'), 'val')
  one_line(e, "'target'", 'label_breastmnist', 'config.data.label_key')


def test_bad_folders(tmp_path):
  root = make_folder(tmp_path / 'folder')
  c = config(name='folder', root=str(root))
  with pytest.raises(DataError) as e:
    cls_data.load_split(c, 'holdout')
  one_line(e, "'holdout'", 'train, val, test')
  flat = tmp_path / 'flat'
  for cls in ('cat', 'dog'):
    (flat / cls).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / cls / 'x.png')
  with pytest.raises(DataError) as e:
    cls_data.split_names(config(name='folder', root=str(flat)))
  one_line(e, str(flat), 'root/<split>/<class>/<image>', 'cat, dog')
  single = tmp_path / 'single'
  (single / 'train' / 'cat').mkdir(parents=True)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(single / 'train' / 'cat' / 'x.png')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(name='folder', root=str(single)), 'train')
  one_line(e, str(single), 'only one class', 'cat')
  with pytest.raises(DataError) as e:  # Also when the config lists more classes than there are.
    cls_data.load_split(config(name='folder', root=str(single), class_names=('cat', 'dog')),
                        'train')
  one_line(e, str(single), 'only one class', 'cat')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(name='folder', root=str(root), class_names=('cat', 'bird')),
                        'train')
  one_line(e, 'dog', "split 'train'", "('cat', 'bird')")
  (root / 'val' / 'dog' / 'broken.png').write_bytes(b'\x89PNG but not really')
  with pytest.raises(DataError) as e:
    cls_data.load_split(c, 'val')
  one_line(e, 'broken.png', 'cannot read image')
  (root / 'val' / 'dog' / 'broken.png').unlink()
  (root / 'val' / 'dog' / 'broken.dcm').write_bytes(b'nonsense')
  with pytest.raises(DataError) as e:
    cls_data.load_split(c, 'val')
  one_line(e, 'broken.dcm', 'Cannot read DICOM image')


def test_missing_pydicom_is_named(tmp_path, monkeypatch):
  import sys  # pylint: disable=import-outside-toplevel
  root = make_folder(tmp_path / 'folder')
  monkeypatch.setitem(sys.modules, 'pydicom', None)  # `import pydicom` now raises ImportError.
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(name='folder', root=str(root)), 'test')
  one_line(e, 'g.dcm', 'pip install pydicom')


def test_bad_settings(tmp_path):
  path = str(make_medmnist(tmp_path / 'm.npz'))
  with pytest.raises(ConfigError) as e:
    cls_data.split_names(config(name='imagenet'))
  one_line(e, "'imagenet'", "'npz'", "'folder'", "'synthetic'")
  for size in (4, 16.0, '32', True):
    with pytest.raises(ConfigError) as e:
      cls_data.load_split(config(root=path, image_size=size), 'train')
    one_line(e, 'config.data.image_size', '≥ 8')
  for channels in (2, 4, 0):
    with pytest.raises(ConfigError) as e:
      cls_data.load_split(config(root=path, channels=channels), 'train')
    one_line(e, 'config.data.channels', f'= {channels}')
  with pytest.raises(ConfigError) as e:
    cls_data.load_split(config(name='synthetic'), 'train', image_key='images_28')
  one_line(e, 'npz data only')
  with pytest.raises(DataError) as e:
    cls_data.load_split(config(name='synthetic'), 'tune')
  one_line(e, "'tune'", 'train, val, test')


# --------------------------------------------------------------------------------------------
# Shared data.


def test_shared_busi():
  root = data_paths.require_shared('busi')
  c = config(root=str(root), image_size=32, class_names=('normal', 'benign', 'malignant'))
  assert cls_data.split_names(c) == ('train', 'val')
  train, info = cls_data.load_split(c, 'train')
  assert info.class_counts == (93, 306, 147) and len(train['id']) == 546
  assert train['image'].shape == (546, 32, 32, 1) and train['mask'].shape == (546, 32, 32)
  assert 0 <= train['image'].min() and train['image'].max() <= 1
  assert (train['mask'][train['label'] == 0] == 0).all()
  assert (train['mask'][train['label'] > 0].sum(axis=(1, 2)) > 0).mean() > 0.95
  val, info = cls_data.load_split(c, 'val', image_key='images_28')
  assert info.class_counts == (13, 44, 21) and val['image'].shape == (78, 32, 32, 1)
  c = config(root=str(root), image_size=32, label_key='label_breastmnist',
             class_names=('malignant', 'normal_benign'))
  _, info = cls_data.load_split(c, 'val')
  assert info.class_counts == (21, 57)


def test_shared_pneumoniamnist():
  root = data_paths.require_shared('pneumoniamnist_variant')
  c = config(root=str(root), image_size=28, class_names=('normal', 'pneumonia'))
  assert cls_data.split_names(c) == ('train', 'val')
  train, info = cls_data.load_split(c, 'train')
  assert len(train['id']) == 3882 and info.class_counts == (388, 3494)
  assert train['image'].shape == (3882, 28, 28, 1) and 'mask' not in train
  val, info = cls_data.load_split(c, 'val')
  assert len(val['id']) == 524 and info.class_counts == (135, 389)
  with pytest.raises(DataError) as e:
    cls_data.load_split(c, 'test')  # The shared copy has no test_* arrays.
  one_line(e, "'test'", 'train, val')
