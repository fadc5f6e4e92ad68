"""The detection data layer (robust_med/data/voc.py): any VOC split, letterbox geometry, quirks,
bad input, the synthetic set and the shared BCCD copy."""

from __future__ import annotations

import warnings

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import ml_collections
import numpy as np
import pytest
from PIL import Image

from robust_med.data import voc
from robust_med.errors import ConfigError, DataError

# stem → (width, height, [(class, xmin, ymin, xmax, ymax)]) in VOC's 1-based inclusive pixels.
IMAGES = {
    'a': (80, 40, [('RBC', 11, 6, 30, 25), ('WBC', 41, 11, 70, 35)]),
    'b': (40, 80, [('Platelets', 5, 5, 14, 14), ('RBC', 20, 60, 45, 80)]),  # Past the border.
    'c': (60, 60, [('RBC', 30, 30, 30, 30), ('RBC', 1, 1, 20, 20)]),  # A zero-area box.
}
SPLITS = {'train': ['a', 'b'], 'val': ['c'], 'test': ['b', 'c']}


def write_xml(path, width, height, objects):
  body = ''.join(f'<object><name>{c}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>'
                 f'<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>'
                 for c, x0, y0, x1, y1 in objects)
  path.write_text(f'<annotation><size><width>{width}</width><height>{height}</height>'
                  f'<depth>3</depth></size>{body}</annotation>')


def make_voc(root, images=IMAGES, splits=SPLITS):
  for d in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
    (root / d).mkdir(parents=True, exist_ok=True)
  for stem, (w, h, objects) in images.items():
    pixels = np.zeros((h, w, 3), np.uint8)
    for _, x0, y0, x1, y1 in objects:  # Each box painted white, so geometry can be checked.
      pixels[y0 - 1:y1, x0 - 1:x1] = 255
    Image.fromarray(pixels).save(root / 'JPEGImages' / f'{stem}.jpg', quality=100)
    write_xml(root / 'Annotations' / f'{stem}.xml', w, h, objects)
  for split, stems in splits.items():
    (root / 'ImageSets' / 'Main' / f'{split}.txt').write_text('\n'.join(stems) + '\n')
  return root


def config(root, **overrides):
  return ml_collections.ConfigDict({'name': 'bccd', 'root': str(root), 'image_size': 32,
                                    'max_boxes': 4, **overrides})


@pytest.fixture
def folder(tmp_path):
  return make_voc(tmp_path / 'voc')


def test_every_split_file_is_a_split(folder):
  assert voc.split_names(config(folder)) == ('test', 'train', 'val')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    sizes = {s: len(voc.load_split(config(folder), s)[0]['id']) for s in ('train', 'val', 'test')}
  assert sizes == {'train': 2, 'val': 1, 'test': 2}


def test_letterbox_maps_boxes_onto_their_pixels(folder):
  with pytest.warns(UserWarning, match='zero-area boxes in c'):
    arrays, info = voc.load_split(config(folder), 'val')  # 'c': 60×60, scale 32/60, no padding.
  np.testing.assert_allclose(arrays['pad'], [[0, 0]])
  assert info.files == ('c.jpg',) and info.class_names == voc.BCCD_CLASSES
  with pytest.warns(UserWarning):
    arrays, info = voc.load_split(config(folder), 'train')
  image, boxes, valid = arrays['image'], arrays['boxes'], arrays['valid']
  assert image.shape == (2, 32, 32, 3) and 0 <= image.min() and image.max() <= 1
  # 'a' is 80×40: scale 0.4, 32×16 centred with 8 rows of grey above and below.
  assert arrays['scale'][0] == pytest.approx(0.4)
  np.testing.assert_allclose(arrays['pad'][0], [0, 8])
  np.testing.assert_allclose(image[0, :8], 0.5, atol=1e-6)
  np.testing.assert_allclose(boxes[0, 0], [10 * 0.4, 5 * 0.4 + 8, 30 * 0.4, 25 * 0.4 + 8])
  assert valid[0].tolist() == [True, True, False, False]
  assert arrays['labels'][0, :2].tolist() == [0, 1]
  for k in range(2):  # The painted boxes are bright inside and dark just outside.
    x0, y0, x1, y1 = np.round(boxes[0, k]).astype(int)
    assert image[0, y0 + 1:y1 - 1, x0 + 1:x1 - 1].mean() > 0.9
    assert image[0, y1 + 1:y1 + 2, x0:x1].mean() < 0.6
  # 'b' (40×80) has a box past the bottom-right corner: clipped to the image.
  np.testing.assert_allclose(boxes[1, 1], np.array([19, 59, 40, 80]) * 0.4 + [8, 0, 8, 0])
  assert arrays['image_key'].tolist() == [voc.stable_id('a'), voc.stable_id('b')]
  assert arrays['id'].tolist() == [0, 1]


def test_quirks_are_one_warning_naming_the_files(folder):
  with pytest.warns(UserWarning) as record:
    arrays, _ = voc.load_split(config(folder), 'test')
  assert len(record) == 1
  text = str(record[0].message)
  assert 'dropped zero-area boxes in c' in text and 'b' in text.split('clipped')[1]
  assert arrays['valid'].sum(axis=1).tolist() == [2, 1]  # c's zero-area box is gone.


@pytest.mark.parametrize('break_it,words', [
    (lambda r: (r / 'ImageSets' / 'Main' / 'val.txt').unlink(), "Unknown split 'val'"),
    (lambda r: (r / 'Annotations' / 'c.xml').write_text('<annotation><size>'), 'c.xml is not a valid'),
    (lambda r: write_xml(r / 'Annotations' / 'c.xml', 60, 60, [('Neutrophil', 1, 1, 9, 9)]),
     "unknown class 'Neutrophil'; the known classes are RBC, WBC, Platelets"),
    (lambda r: (r / 'JPEGImages' / 'c.jpg').unlink(), 'c.jpg (listed in ImageSets/Main/val.txt) not found'),
    (lambda r: write_xml(r / 'Annotations' / 'c.xml', 60, 60, [('RBC', 1, 1, 9, 9)] * 5),
     'c has 5 boxes, more than config.data.max_boxes = 4: raise data.max_boxes'),
])
def test_bad_input_is_one_error_line(folder, break_it, words):
  break_it(folder)
  with pytest.raises(DataError) as e:
    voc.load_split(config(folder), 'val')
  assert words in str(e.value) and '\n' not in str(e.value)


def test_missing_folders_and_bad_settings(tmp_path, folder):
  with pytest.raises(DataError, match='not found: set config.data.root'):
    voc.split_names(config(tmp_path / 'nowhere'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match='ImageSets/Main/<split>.txt'):
    voc.split_names(config(tmp_path / 'empty'))
  with pytest.raises(ConfigError, match='image_size'):
    voc.load_split(config(folder, image_size=4), 'val')
  with pytest.raises(ConfigError, match='max_boxes'):
    voc.load_split(config(folder, max_boxes=0), 'val')
  with pytest.raises(ConfigError, match='not a detection dataset'):
    voc.split_names(config(folder, name='coco'))


def test_synthetic_set_is_deterministic_and_boxes_hold_their_cells():
  c = ml_collections.ConfigDict({'name': 'synthetic', 'image_size': 64, 'max_boxes': 8,
                                 'num_train': 6, 'num_val': 3, 'seed': 0})
  assert voc.split_names(c) == ('train', 'val', 'test')
  a, info = voc.load_split(c, 'train')
  b, _ = voc.load_split(ml_collections.ConfigDict({**c.to_dict(), 'num_train': 3}), 'train')
  np.testing.assert_array_equal(a['image'][:3], b['image'])  # Image k does not depend on num.
  val, _ = voc.load_split(c, 'val')
  assert not set(a['image_key']) & set(val['image_key'])
  assert info.class_names == voc.SYNTHETIC_CLASSES and a['image'].shape == (6, 64, 64, 3)
  counts = a['valid'].sum(axis=1)
  assert (counts >= 2).all() and (counts <= 8).all()
  assert set(a['labels'][a['valid']]) <= {0, 1, 2}
  for k in range(6):  # Each cell differs from the background at its box's centre.
    background = np.median(a['image'][k], axis=(0, 1))
    for box in a['boxes'][k][a['valid'][k]]:
      cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
      assert np.abs(a['image'][k, cy, cx] - background).max() > 0.15
  with pytest.raises(DataError, match="Unknown split 'tune'"):
    voc.load_split(c, 'tune')


def test_real_bccd_splits_and_quirks():
  root = data_paths.require_shared('bccd')
  c = config(root, image_size=320, max_boxes=32)
  assert voc.split_names(c) == ('train', 'trainval', 'val')
  with pytest.warns(UserWarning, match='BloodImage_00343'):
    train, info = voc.load_split(c, 'train')
  assert len(train['id']) == 205 and len(set(train['image_key'])) == 205
  assert info.files[0] == 'BloodImage_00001.jpg'
  # 640×480 → scale 0.5, 40 rows of padding above and below.
  np.testing.assert_allclose(train['scale'], 0.5)
  np.testing.assert_allclose(train['pad'], np.tile([0, 40], (205, 1)))
  # BloodImage_00001's first box: WBC 68,315,286,480 → (67, 314, 286, 480) · 0.5 + (0, 40).
  np.testing.assert_allclose(train['boxes'][0, 0], [33.5, 197.0, 143.0, 280.0])
  assert train['labels'][0, 0] == voc.BCCD_CLASSES.index('WBC')
  b = train['boxes'][train['valid']]
  assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
  assert b[:, [1, 3]].min() >= 40 and b[:, [1, 3]].max() <= 280
  with pytest.warns(UserWarning, match='BloodImage_00338'):
    val, _ = voc.load_split(c, 'val')
  assert len(val['id']) == 87 and not set(val['image_key']) & set(train['image_key'])
  assert int(train['valid'].sum() + val['valid'].sum()) == 3943 - 2
