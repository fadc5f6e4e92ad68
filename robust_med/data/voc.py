"""Object-detection data: a Pascal-VOC folder (BCCD blood cells) and a synthetic detection set.

A VOC folder holds `JPEGImages/<stem>.jpg`, `Annotations/<stem>.xml` and
`ImageSets/Main/<split>.txt` (one stem per line); every split file present is a split, so a user's
full copy with `test.txt` has a `test` split. Images are letterboxed to a square of
`data.image_size` pixels: scaled so the longer side fits, centred, padded with grey 0.5;
intensities are scaled to [0, 1] (the noise grid is on [0, 1] inputs). Boxes are VOC's 1-based
inclusive pixel corners turned into continuous (x1, y1, x2, y2) = (xmin − 1, ymin − 1, xmax, ymax)
in input pixels, padded to a static `data.max_boxes` per image with a validity mask. Known quirks
(zero-area boxes, boxes past the border) are dropped or clipped with one warning naming the files.

The synthetic set draws three classes of cells on a textured background: large pale discs
('rbc'), larger dark ellipses ('wbc') and small dark discs ('platelet'), at known boxes.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import robust_med.data.reading as reading
from robust_med.errors import ConfigError, DataError

BCCD_CLASSES = ('RBC', 'WBC', 'Platelets')
SYNTHETIC_CLASSES = ('rbc', 'wbc', 'platelet')
SYNTHETIC_SPLITS = ('train', 'val', 'test')
PAD_VALUE = 0.5


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
  name: str
  split: str
  class_names: tuple[str, ...]
  image_size: int
  max_boxes: int
  channels: int = 3
  files: tuple[str, ...] = ()

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def _image_size(data_config: Any) -> int:
  size = data_config.get('image_size', 320)
  if isinstance(size, bool) or not isinstance(size, int) or size < 8:
    raise ConfigError(f'config.data.image_size = {size!r} must be an integer ≥ 8 (the square '
                      'input side in pixels, e.g. 320).')
  return size


def _max_boxes(data_config: Any) -> int:
  m = data_config.get('max_boxes', 32)
  if isinstance(m, bool) or not isinstance(m, int) or m < 1:
    raise ConfigError(f'config.data.max_boxes = {m!r} must be an integer ≥ 1.')
  return m


def stable_id(stem: str) -> int:
  """A non-negative int32 id from the file stem: the same in every split and folder."""
  return zlib.crc32(stem.encode()) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------
# Letterbox geometry.


def letterbox_geometry(width: int, height: int, size: int) -> tuple[float, int, int, int, int]:
  """(scale, new_w, new_h, pad_x, pad_y) of fitting a W×H image into a size×size square."""
  scale = size / max(width, height)
  new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
  return scale, new_w, new_h, (size - new_w) // 2, (size - new_h) // 2


def letterbox(image: Image.Image, size: int) -> tuple[np.ndarray, float, tuple[int, int]]:
  """(size, size, 3) float32 image in [0, 1], the scale and the (x, y) padding."""
  scale, new_w, new_h, pad_x, pad_y = letterbox_geometry(image.width, image.height, size)
  resized = np.asarray(image.convert('RGB').resize((new_w, new_h), Image.BILINEAR),
                       np.float32) / 255.0
  out = np.full((size, size, 3), PAD_VALUE, np.float32)
  out[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
  return out, scale, (pad_x, pad_y)


# --------------------------------------------------------------------------------------------
# VOC folders.


def _main_dir(root: Path) -> Path:
  if not root.is_dir():
    raise DataError(f'Detection data folder {root} not found: set config.data.root to a Pascal-VOC '
                    'folder (JPEGImages/, Annotations/, ImageSets/Main/<split>.txt), or use '
                    "config.data.name='synthetic'.")
  main = root / 'ImageSets' / 'Main'
  if not main.is_dir():
    raise DataError(f'{main} not found: a VOC folder lists its splits in ImageSets/Main/<split>.txt.')
  return main


def _voc_splits(root: Path) -> tuple[str, ...]:
  splits = tuple(sorted(p.stem for p in _main_dir(root).glob('*.txt')))
  if not splits:
    raise DataError(f'{root / "ImageSets" / "Main"} has no <split>.txt file: add one stem per line.')
  return splits


def _parse_xml(path: Path, class_names: tuple[str, ...], listed_in: str) -> tuple[list, list]:
  """([(xmin, ymin, xmax, ymax)], [class index]) of one VOC annotation (the image size comes from
  the pixels, not the XML's <size>)."""
  if not path.is_file():
    raise DataError(f'Annotation {path} not found (listed in {listed_in}): each image listed in '
                    'a split needs Annotations/<stem>.xml; add it or remove the line.')
  root = reading.parse_xml(path, 'VOC annotation')
  if root.tag != 'annotation':
    raise DataError(f'{path} is not a VOC annotation: its root element is <{root.tag}>, not '
                    '<annotation> (an HTML page saved under this name?); replace the file.')
  try:
    boxes, labels = [], []
    for obj in root.iter('object'):
      name = (obj.find('name').text or '').strip()
      if name not in class_names:
        raise DataError(f'{path}: unknown class {name!r}; the known classes are '
                        f'{", ".join(class_names)} (config.data.class_names).')
      box = obj.find('bndbox')
      boxes.append(tuple(float(box.find(k).text) for k in ('xmin', 'ymin', 'xmax', 'ymax')))
      if not all(math.isfinite(v) for v in boxes[-1]):
        raise DataError(f'{path}: a box of class {name!r} has the coordinates {boxes[-1]}, not '
                        'finite numbers: fix the box or remove it.')
      labels.append(class_names.index(name))
  except (AttributeError, TypeError, ValueError) as e:
    raise DataError(f'{path} is not a valid VOC annotation ({type(e).__name__}: {e}): fix or '
                    'remove the file and its line in the split file.') from None
  return boxes, labels


def _clean_boxes(boxes: list, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(continuous x1 y1 x2 y2 boxes clipped to the image, zero-area mask, clipped mask)."""
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  cont = np.stack([b[:, 0] - 1, b[:, 1] - 1, b[:, 2], b[:, 3]], axis=1)
  clipped = np.clip(cont, 0, [width, height, width, height])
  changed = np.any(np.abs(clipped - cont) > 1e-9, axis=1)
  degenerate = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]) | (clipped[:, 2] <= clipped[:, 0]) | (
      clipped[:, 3] <= clipped[:, 1])
  return clipped, degenerate, changed & ~degenerate


def _load_voc(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], DetectionInfo]:
  root = Path(data_config.root).expanduser()
  splits = _voc_splits(root)
  if split not in splits:
    raise DataError(f'Unknown split {split!r} in {root}: it declares {", ".join(splits)} '
                    '(ImageSets/Main/<split>.txt).')
  stems = [s.split()[0] for s in reading.read_text(root / 'ImageSets' / 'Main' / f'{split}.txt',
                                                     'split file').splitlines() if s.strip()]
  if not stems:
    raise DataError(f'Split file ImageSets/Main/{split}.txt in {root} lists no image.')
  class_names = tuple(data_config.get('class_names', BCCD_CLASSES))
  size, max_boxes = _image_size(data_config), _max_boxes(data_config)
  n = len(stems)
  arrays = {'image': np.zeros((n, size, size, 3), np.float32),
            'boxes': np.zeros((n, max_boxes, 4), np.float32),
            'labels': np.zeros((n, max_boxes), np.int32),
            'valid': np.zeros((n, max_boxes), bool),
            'id': np.arange(n, dtype=np.int32),
            'image_key': np.array([stable_id(s) for s in stems], np.int32),
            'scale': np.zeros((n,), np.float32),
            'pad': np.zeros((n, 2), np.float32),
            'original_size': np.zeros((n, 2), np.int32)}
  dropped, clipped = [], []
  for i, stem in enumerate(stems):
    boxes, labels = _parse_xml(root / 'Annotations' / f'{stem}.xml', class_names,
                               f'ImageSets/Main/{split}.txt')
    path = root / 'JPEGImages' / f'{stem}.jpg'
    if not path.is_file():
      raise DataError(f'Image {path} (listed in ImageSets/Main/{split}.txt) not found: add it or '
                      'remove its line from the split file.')
    im = reading.open_image(path)
    width, height = im.width, im.height
    image, scale, pad = letterbox(im, size)
    boxes, degenerate, changed = _clean_boxes(boxes, width, height)
    if degenerate.any():
      dropped.append(stem)
    if changed.any():
      clipped.append(stem)
    keep = ~degenerate
    boxes, labels = boxes[keep], np.asarray(labels, np.int32)[keep]
    if len(boxes) > max_boxes:
      raise DataError(f'{stem} has {len(boxes)} boxes, more than config.data.max_boxes = '
                      f'{max_boxes}: raise data.max_boxes to at least {len(boxes)}.')
    k = len(boxes)
    arrays['image'][i] = image
    arrays['boxes'][i, :k] = boxes * scale + np.array([pad[0], pad[1], pad[0], pad[1]])
    arrays['labels'][i, :k] = labels
    arrays['valid'][i, :k] = True
    arrays['scale'][i], arrays['pad'][i] = scale, pad
    arrays['original_size'][i] = (width, height)
  if dropped or clipped:
    parts = [f'dropped zero-area boxes in {", ".join(dropped)}'] if dropped else []
    if clipped:
      more = ', ...' if len(clipped) > 5 else ''
      parts.append(f'clipped boxes past the border in {len(clipped)} image(s) '
                   f'({", ".join(clipped[:5])}{more})')
    warnings.warn(f'{root}, split {split}: {"; ".join(parts)}.', stacklevel=3)
  info = DetectionInfo(name=str(data_config.get('name', 'bccd')), split=split,
                       class_names=class_names, image_size=size, max_boxes=max_boxes,
                       files=tuple(f'{s}.jpg' for s in stems))
  return arrays, info


# --------------------------------------------------------------------------------------------
# Synthetic detection set.


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
  coarse = rng.uniform(0.0, 1.0, (size // 8 + 2, size // 8 + 2))
  up = np.kron(coarse, np.ones((8, 8)))[:size, :size]
  return 0.75 + 0.08 * (up - 0.5) + 0.03 * rng.standard_normal((size, size))


def make_detection_set(num: int, *, image_size: int = 64, max_boxes: int = 8, seed: int = 0,
                       offset: int = 0) -> dict[str, np.ndarray]:
  """`num` images with 2…min(max_boxes, 8) cells each; image k is the same for any `num`
  (it depends on seed and offset + k only)."""
  s = image_size
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
  # (half-width, half-height) in fractions of the image side, intensity and colour tint per class.
  shapes = {0: (0.11, 0.11, -0.25, (1.0, 0.55, 0.55)), 1: (0.17, 0.13, -0.55, (0.6, 0.4, 1.0)),
            2: (0.045, 0.045, -0.5, (0.7, 0.4, 0.9))}
  out = {'image': np.zeros((num, s, s, 3), np.float32),
         'boxes': np.zeros((num, max_boxes, 4), np.float32),
         'labels': np.zeros((num, max_boxes), np.int32), 'valid': np.zeros((num, max_boxes), bool),
         'id': np.arange(num, dtype=np.int32),
         'image_key': np.arange(offset, offset + num, dtype=np.int32),
         'scale': np.ones((num,), np.float32), 'pad': np.zeros((num, 2), np.float32),
         'original_size': np.full((num, 2), s, np.int32)}
  for k in range(num):
    rng = np.random.default_rng([seed, offset + k])
    gray = _texture(rng, s)
    image = np.repeat(gray[..., None], 3, axis=-1)
    count = int(rng.integers(2, min(max_boxes, 8) + 1))
    placed = []
    for _ in range(count * 20):
      if len(placed) == count:
        break
      cls = int(rng.choice(3, p=(0.6, 0.15, 0.25)))
      hw, hh, _, _ = shapes[cls]
      rx, ry = hw * s, hh * s
      cx, cy = rng.uniform(rx + 1, s - rx - 1), rng.uniform(ry + 1, s - ry - 1)
      box = np.array([cx - rx, cy - ry, cx + rx, cy + ry])
      if any(not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1])
             for b, _ in placed):
        continue
      placed.append((box, cls))
    for j, (box, cls) in enumerate(placed):
      hw, hh, contrast, tint = shapes[cls]
      cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
      inside = ((xx - cx) / (hw * s)) ** 2 + ((yy - cy) / (hh * s)) ** 2 <= 1.0
      for c in range(3):
        image[..., c] = np.where(inside, image[..., c] + contrast * tint[c], image[..., c])
      out['boxes'][k, j], out['labels'][k, j], out['valid'][k, j] = box, cls, True
    out['image'][k] = np.clip(image, 0.0, 1.0)
  return out


def _synthetic_sizes(data_config: Any) -> dict[str, int]:
  return {'train': int(data_config.get('num_train', 256)),
          'val': int(data_config.get('num_val', 64)),
          'test': int(data_config.get('num_val', 64))}


def _load_synthetic(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], DetectionInfo]:
  if split not in SYNTHETIC_SPLITS:
    raise DataError(f'Unknown split {split!r} of the synthetic detection set: use one of '
                    f'{", ".join(SYNTHETIC_SPLITS)}.')
  sizes = _synthetic_sizes(data_config)
  offset = {'train': 0, 'val': 1_000_000, 'test': 2_000_000}[split]
  size, max_boxes = _image_size(data_config), _max_boxes(data_config)
  arrays = make_detection_set(sizes[split], image_size=size, max_boxes=max_boxes,
                              seed=int(data_config.get('seed', 0)), offset=offset)
  info = DetectionInfo(name='synthetic', split=split, class_names=SYNTHETIC_CLASSES,
                       image_size=size, max_boxes=max_boxes)
  return arrays, info


# --------------------------------------------------------------------------------------------


def _is_synthetic(data_config: Any) -> bool:
  name = data_config.get('name', 'bccd')
  if name not in ('bccd', 'voc', 'synthetic'):
    raise ConfigError(f"config.data.name = {name!r} is not a detection dataset: use 'bccd' (or "
                      "'voc', any Pascal-VOC folder) or 'synthetic'.")
  return name == 'synthetic'


def split_names(data_config: Any) -> tuple[str, ...]:
  """Every split the data declares: the VOC folder's split files, or the synthetic splits."""
  if _is_synthetic(data_config):
    return SYNTHETIC_SPLITS
  return _voc_splits(Path(data_config.root).expanduser())


def load_split(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], DetectionInfo]:
  """(arrays, info): image (N, S, S, 3) in [0, 1], boxes (N, M, 4) x1 y1 x2 y2 in input pixels,
  labels (N, M), valid (N, M), id (N,) = 0..N−1 (the row, which indexes AMAT's margins),
  image_key (N,) a stable id of the image (the same in every split and folder), letterbox scale
  (N,) and pad (N, 2), original
  (width, height) (N, 2)."""
  if _is_synthetic(data_config):
    return _load_synthetic(data_config, split)
  return _load_voc(data_config, split)
