"""Image-classification data: MedMNIST npz, npz with a split column, image folders, synthetic.

Image-classification data: MedMNIST-format npz files, npz files with a split column (BUSI),
image folders (PNG/JPEG/DICOM) and a synthetic ultrasound lesion set; the one data path of the
classification head.

`data.name` picks the source:

* ``'npz'``: `data.root` is an .npz file or a folder holding exactly one. Two layouts:
  MedMNIST (``<split>_images`` (N, H, W) or (N, H, W, 3) and ``<split>_labels`` (N,) or (N, 1);
  every prefix with both keys is a split, so a full copy's ``test`` is a split) and split-column
  (a ``split`` string column, every distinct value a split; images from `data.image_key`, labels
  from `data.label_key`, lesion masks from ``masks`` (or ``mask``) when present).
* ``'folder'``: ``root/<split>/<class>/<image>`` with .png, .jpg, .jpeg or .dcm files; every
  subfolder of root holding class folders is a split, and the classes are the sorted union of the
  class folders over all splits (or `data.class_names`), so labels agree across splits.
* ``'synthetic'``: `make_classification_set`, built in code: 'train' (`data.num_train` images,
  `data.seed`), 'val' and 'test' (`data.num_val` images, seed + 1 and seed + 2).

Every image is resized to a `data.image_size` square with PIL's bilinear filter (masks: nearest)
and brought to `data.channels` (gray is repeated to 3 channels; RGB becomes ITU-R 601 luminance
for 1). Intensities are scaled to [0, 1]: uint8 / 255, uint16 / 65535, DICOM pixel data min–max
per image (MONOCHROME1 inverted). Class names are `data.class_names`, else an npz's
``class_names`` array, else the folder names, else the label integers ('0', '1', ...).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

import robust_med.data.reading as reading
from robust_med.errors import ConfigError, DataError

NAMES = ('synthetic', 'npz', 'folder')
SYNTHETIC_CLASSES = ('normal', 'benign', 'malignant')
SYNTHETIC_SPLITS = ('train', 'val', 'test')
# Fractions of normal and malignant images in a synthetic split; benign takes the rest.
SYNTHETIC_NORMAL, SYNTHETIC_MALIGNANT = 0.2, 0.3
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.dcm')
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as PIL's convert('L').
_ORDER = ('train', 'val', 'valid', 'validation', 'tune', 'test')
_DEMO = "or use config.data.name='synthetic' for the built-in demo set"


@dataclasses.dataclass(frozen=True)
class ClassificationInfo:
  name: str                           # 'synthetic' | 'npz' | 'folder'
  split: str
  class_names: tuple[str, ...]
  channels: int
  image_size: int
  source: str = ''                    # the file or folder read
  class_counts: tuple[int, ...] = ()  # examples per class in this split

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# --------------------------------------------------------------------------------------------
# Settings.


def _name(data_config: Any) -> str:
  name = data_config.get('name', None)
  if name not in NAMES:
    raise ConfigError(f'config.data.name = {name!r} is not a classification dataset: use '
                      "'npz' (MedMNIST-format or split-column .npz), 'folder' "
                      "(root/<split>/<class>/<image>) or 'synthetic'.")
  return name


def _image_size(data_config: Any) -> int:
  size = data_config.get('image_size', 64)
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
    raise ConfigError(f'config.data.image_size = {size!r} must be an integer ≥ 8 (the square '
                      'side images are resized to, e.g. 64).')
  return int(size)


def _channels(data_config: Any) -> int:
  channels = data_config.get('channels', 1)
  if isinstance(channels, bool) or channels not in (1, 3):
    raise ConfigError(f'config.data.channels = {channels!r} must be 1 (gray; RGB becomes '
                      'luminance) or 3 (RGB; gray is repeated).')
  return int(channels)


def _configured_classes(data_config: Any) -> tuple[str, ...]:
  names = data_config.get('class_names', ()) or ()
  if isinstance(names, str):
    raise ConfigError(f'config.data.class_names = {names!r} must be a tuple of class names in '
                      "label order, e.g. ('normal', 'pneumonia').")
  return tuple(str(n) for n in names)


def _count(data_config: Any, key: str, default: int) -> int:
  value = data_config.get(key, default)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ConfigError(f'config.data.{key} = {value!r} must be a non-negative integer.')
  return int(value)


def _ordered(splits) -> tuple[str, ...]:
  """train, val, test (and their usual variants) first, then the rest alphabetically."""
  return tuple(sorted(set(splits), key=lambda s: (_ORDER.index(s) if s in _ORDER else len(_ORDER),
                                                  s)))


def _root(data_config: Any) -> Path:
  root = data_config.get('root', '')
  if root is None or not str(root).strip():
    raise DataError('config.data.root is not set: pass --config.data.root=PATH (an .npz file, a '
                    f'folder holding one, or an image folder root/<split>/<class>/), {_DEMO}.')
  path = Path(str(root)).expanduser()
  if not path.exists():
    raise DataError(f'Classification data {path} not found: set config.data.root to an .npz '
                    f'file, a folder holding one, or an image folder root/<split>/<class>/, '
                    f'{_DEMO}.')
  return path


# --------------------------------------------------------------------------------------------
# Pixels: scaling to [0, 1], channels and resizing.


def _unit_range(array: np.ndarray, what: str) -> np.ndarray:
  """float32 in [0, 1]: uint8 / 255, uint16 / 65535, bool as is, floats must lie in [0, 1]."""
  if array.dtype == np.uint8:
    return array.astype(np.float32) / 255.0
  if array.dtype == np.uint16:
    return array.astype(np.float32) / 65535.0
  if array.dtype == bool:
    return array.astype(np.float32)
  if array.size and np.issubdtype(array.dtype, np.integer):
    if array.min() < 0 or array.max() > 255:
      raise DataError(f'{what} is {array.dtype} with values {array.min()}…{array.max()}: store '
                      'images as uint8 (0–255), uint16 (0–65535) or floats in [0, 1].')
    return array.astype(np.float32) / 255.0
  if array.size and np.issubdtype(array.dtype, np.floating):
    bad = ~np.isfinite(array)
    if bad.any():
      first = np.unravel_index(int(np.argmax(bad)), array.shape)
      kind = 'NaN' if np.isnan(array[first]) else 'infinite'
      raise DataError(f'{what} holds {int(bad.sum())} NaN or infinite values (the first, '
                      f'{kind}, at index {tuple(int(i) for i in first)}): replace them with '
                      'finite values in [0, 1] or drop those images.')
    low, high = float(np.min(array)), float(np.max(array))
    if not (np.isfinite(array).all() and low >= -1e-6 and high <= 1 + 1e-6):
      raise DataError(f'{what} is {array.dtype} with values {low:g}…{high:g}: float images must '
                      'lie in [0, 1]; rescale them or store uint8 / uint16.')
    return np.clip(array, 0.0, 1.0).astype(np.float32)
  if not array.size:
    return array.astype(np.float32)
  raise DataError(f'{what} has dtype {array.dtype}: store images as uint8, uint16 or floats in '
                  '[0, 1].')


def _resize_plane(plane: np.ndarray, size: int) -> np.ndarray:
  if plane.shape == (size, size):
    return plane.astype(np.float32)
  image = Image.fromarray(np.ascontiguousarray(plane, np.float32))  # Mode 'F'.
  return np.asarray(image.resize((size, size), Image.BILINEAR), np.float32)


def fit_image(image: np.ndarray, size: int, channels: int) -> np.ndarray:
  """(size, size, channels) float32 in [0, 1] from one (H, W), (H, W, 1), (H, W, 3) or
  (H, W, 4) image in [0, 1] (alpha is dropped)."""
  if image.ndim == 3:
    if image.shape[-1] == 1:
      image = image[..., 0]
    elif image.shape[-1] in (3, 4):
      image = image[..., :3]
      if channels == 1:
        image = image @ LUMA
    elif image.shape[-1] == 2:  # Gray + alpha.
      image = image[..., 0]
  if image.ndim == 2:
    plane = _resize_plane(image, size)[..., None]
    out = np.repeat(plane, channels, axis=-1)
  else:
    out = np.stack([_resize_plane(image[..., c], size) for c in range(3)], axis=-1)
  return np.clip(out, 0.0, 1.0)


def _fit_images(images: np.ndarray, size: int, channels: int, what: str) -> np.ndarray:
  """(N, size, size, channels) float32 from an (N, H, W[, C]) array."""
  if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
    raise DataError(f'{what} has shape {images.shape}: images must be (N, H, W) gray or '
                    '(N, H, W, 3) RGB.')
  out = np.zeros((len(images), size, size, channels), np.float32)
  unit = _unit_range(images, what) if images.dtype.kind == 'f' else None
  for i in range(len(images)):
    image = unit[i] if unit is not None else _unit_range(images[i], what)
    out[i] = fit_image(image, size, channels)
  return out


def _fit_masks(masks: np.ndarray, size: int, what: str) -> np.ndarray:
  """(N, size, size) uint8 masks resized with nearest neighbour."""
  if masks.ndim == 4 and masks.shape[-1] == 1:
    masks = masks[..., 0]
  if masks.ndim != 3:
    raise DataError(f'{what} has shape {masks.shape}: lesion masks must be (N, H, W).')
  if masks.dtype == bool or (masks.size and (masks.min() < 0 or masks.max() > 255)):
    masks = masks > 0
  masks = masks.astype(np.uint8)
  if masks.shape[1:] == (size, size):
    return masks
  return np.stack([np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST))
                   for m in masks]) if len(masks) else np.zeros((0, size, size), np.uint8)


# --------------------------------------------------------------------------------------------
# Labels and class names.


def _label_vector(raw: np.ndarray, what: str) -> np.ndarray:
  """(N,) int64 labels from (N,) or (N, 1) integer (or integral float) labels."""
  raw = np.asarray(raw)
  if raw.ndim == 2 and raw.shape[1] == 1:
    raw = raw[:, 0]
  elif raw.ndim == 2:
    raise DataError(f'{what} has shape {raw.shape} ({raw.shape[1]} labels per image, '
                    'multi-label): only single-label classification is supported; store one '
                    'integer class per image, (N,) or (N, 1).')
  if raw.ndim != 1:
    raise DataError(f'{what} has shape {raw.shape}: labels must be (N,) or (N, 1) integers.')
  if raw.dtype == bool or np.issubdtype(raw.dtype, np.integer):
    return raw.astype(np.int64)
  if np.issubdtype(raw.dtype, np.floating) and np.isfinite(raw).all() and (
      raw == np.round(raw)).all():
    return raw.astype(np.int64)
  raise DataError(f'{what} has dtype {raw.dtype} with non-integer values: labels must be integer '
                  'class indices 0…K−1.')


def _inferred_classes(labels: list[np.ndarray]) -> tuple[str, ...]:
  top = max((int(l.max()) for l in labels if l.size), default=-1)
  return tuple(str(k) for k in range(max(top + 1, 0)))


def _check_labels(labels: np.ndarray, class_names: tuple[str, ...], split: str,
                  source: str) -> None:
  bad = labels[(labels < 0) | (labels >= len(class_names))]
  if bad.size:
    raise DataError(f'Label {int(bad[0])} in split {split!r} of {source} is outside the classes '
                    f'{class_names} (config.data.class_names, in label order): list every class '
                    'there or fix the labels.')


def _counts(labels: np.ndarray, num_classes: int) -> tuple[int, ...]:
  return tuple(int(c) for c in np.bincount(labels, minlength=num_classes)[:num_classes])


# --------------------------------------------------------------------------------------------
# npz files.


def _npz_path(data_config: Any) -> Path:
  root = _root(data_config)
  if root.is_file():
    return root
  found = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == '.npz')
  if len(found) == 1:
    return found[0]
  if not found:
    raise DataError(f'{root} holds no .npz file: set config.data.root to the .npz (or its '
                    "folder), or config.data.name='folder' for an image folder "
                    'root/<split>/<class>/<image>.')
  raise DataError(f'{root} holds {len(found)} .npz files ({", ".join(p.name for p in found)}): '
                  'set config.data.root to the one to read.')


class _Npz(reading.Npz):
  """An opened npz file and its layout."""

  def __init__(self, path: Path):
    super().__init__(path)
    prefixes = [k[:-len('_images')] for k in self.keys if k.endswith('_images')]
    self.medmnist = _ordered(p for p in prefixes if f'{p}_labels' in self.keys)
    self.column = 'split' in self.keys
    if not self.medmnist and not self.column:
      self.close()
      raise DataError(f'{path} has neither MedMNIST keys (<split>_images and <split>_labels) nor '
                      f'a split column (split); its keys are {", ".join(self.keys)}: re-save it '
                      'in one of these layouts.')

  def split_column(self) -> np.ndarray:
    column = self.array('split')
    if column.ndim != 1:
      raise DataError(f"{self.path} key 'split' has shape {column.shape}: it must be one split "
                      'name per image, (N,).')
    return column.astype(str)

  def splits(self) -> tuple[str, ...]:
    if self.column:
      return _ordered(np.unique(self.split_column()).tolist())
    return self.medmnist

  def stored_classes(self) -> tuple[str, ...]:
    if 'class_names' not in self.keys:
      return ()
    return tuple(str(n) for n in np.asarray(self.array('class_names')).astype(str).reshape(-1))


def _length_check(path: Path, a: np.ndarray, a_key: str, b: np.ndarray, b_key: str) -> None:
  if len(a) != len(b):
    raise DataError(f'{path}: {a_key!r} has {len(a)} rows but {b_key!r} has {len(b)}: every '
                    'array needs one row per image.')


def _npz_split_names(data_config: Any) -> tuple[str, ...]:
  with _Npz(_npz_path(data_config)) as npz:
    return npz.splits()


def _load_npz(data_config: Any, split: str,
              image_key: str | None) -> tuple[dict[str, np.ndarray], ClassificationInfo]:
  size, channels = _image_size(data_config), _channels(data_config)
  with _Npz(_npz_path(data_config)) as npz:
    path, splits = npz.path, npz.splits()
    if split not in splits:
      layout = ('its split column holds' if npz.column else
                'its <split>_images/<split>_labels keys give')
      raise DataError(f'Unknown split {split!r} in {path}: {layout} {", ".join(splits)} (keys '
                      f'present: {", ".join(npz.keys)}); pick one of those.')
    image_key = image_key or str(data_config.get('image_key', 'images') or 'images')
    masks = None
    if npz.column:
      label_key = str(data_config.get('label_key', 'label') or 'label')
      for key, setting in ((image_key, 'image_key'), (label_key, 'label_key')):
        if key not in npz.keys:
          raise DataError(f'{path} has no key {key!r} (config.data.{setting}); its keys are '
                          f'{", ".join(npz.keys)}: set config.data.{setting} to one of them.')
      column = npz.split_column()
      images, all_labels = npz.array(image_key), npz.array(label_key)
      _length_check(path, images, image_key, all_labels, label_key)
      _length_check(path, images, image_key, column, 'split')
      all_labels = _label_vector(all_labels, f'{path} key {label_key!r}')
      rows = np.flatnonzero(column == split)
      images, labels = images[rows], all_labels[rows]
      every_label = [all_labels]
      mask_key = next((k for k in ('masks', 'mask') if k in npz.keys), None)
      if mask_key:
        all_masks = npz.array(mask_key)
        _length_check(path, column, 'split', all_masks, mask_key)
        masks = _fit_masks(all_masks[rows], size, f'{path} key {mask_key!r}')
      where = f'{path} key {image_key!r}'
    else:
      key, label_key = f'{split}_{image_key}', f'{split}_labels'
      if key not in npz.keys:
        raise DataError(f'{path} has no key {key!r} (split {split!r}, image key '
                        f'{image_key!r}); its keys are {", ".join(npz.keys)}: pick an image key '
                        'present for this split.')
      images = npz.array(key)
      labels = _label_vector(npz.array(label_key), f'{path} key {label_key!r}')
      _length_check(path, images, key, labels, label_key)
      every_label = [labels if s == split else
                     _label_vector(npz.array(f'{s}_labels'), f'{path} key {s}_labels')
                     for s in splits]
      where = f'{path} key {key!r}'
    stored = npz.stored_classes()
  class_names = _configured_classes(data_config) or stored or _inferred_classes(every_label)
  _check_labels(labels, class_names, split, str(path))
  arrays = {'image': _fit_images(images, size, channels, where),
            'label': labels.astype(np.int32),
            'id': np.arange(len(labels), dtype=np.int32)}
  if masks is not None:
    arrays['mask'] = masks
  info = ClassificationInfo(name='npz', split=split, class_names=class_names, channels=channels,
                            image_size=size, source=str(path),
                            class_counts=_counts(labels, len(class_names)))
  return arrays, info


# --------------------------------------------------------------------------------------------
# Image folders.


def _visible_dirs(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _folder_layout(data_config: Any) -> tuple[Path, dict[str, list[Path]]]:
  """(root, {split: class folders})."""
  root = _root(data_config)
  if not root.is_dir():
    raise DataError(f"{root} is a file, not an image folder: with config.data.name='folder' set "
                    "config.data.root to root/<split>/<class>/<image>, or use data.name='npz'.")
  subdirs = _visible_dirs(root)
  layout = {d.name: _visible_dirs(d) for d in subdirs}
  layout = {split: classes for split, classes in layout.items() if classes}
  if not layout:
    found = (f'its subfolders ({", ".join(d.name for d in subdirs)}) hold no class folders'
             if subdirs else 'it has no subfolders')
    raise DataError(f'Image folder {root} is not laid out as root/<split>/<class>/<image> '
                    f'({found}): put each class folder inside a split folder, e.g. '
                    f'{root}/train/<class>/ and {root}/val/<class>/.')
  return root, layout


def _folder_classes(data_config: Any, root: Path, layout: dict[str, list[Path]],
                    split: str) -> tuple[str, ...]:
  """Configured or found class names; DataError for a class folder outside them (those of
  `split` are named first)."""
  found = sorted({c.name for classes in layout.values() for c in classes})
  class_names = _configured_classes(data_config) or tuple(found)
  for name in sorted(layout, key=lambda s: s != split):
    for c in layout[name]:
      if c.name not in class_names:
        raise DataError(f'Class folder {c} (split {name!r}) is not one of the classes '
                        f'{class_names} (config.data.class_names): add it there or remove the '
                        'folder.')
  if len(found) < 2:  # What the folder holds, whatever config.data.class_names lists.
    raise DataError(f'Image folder {root} has only one class ({", ".join(found)}): '
                    'classification needs at least two class folders root/<split>/<class>/.')
  return class_names


def _read_dicom(path: Path) -> np.ndarray:
  try:
    import pydicom  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataError(f'{path} is a DICOM file but pydicom is not installed: pip install pydicom '
                    '(or convert the DICOM files to PNG).') from None
  try:
    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array, np.float32)
    photometric = str(ds.get('PhotometricInterpretation', 'MONOCHROME2')).upper()
  except Exception as e:  # pydicom raises many types for unreadable or compressed pixel data.
    raise DataError(f'Cannot read DICOM image {path} ({reading.first_line(e)}): replace or remove the '
                    'file (compressed pixel data may need pip install pylibjpeg).') from None
  colour = pixels.ndim == 3 and pixels.shape[-1] == 3 and not photometric.startswith('MONOCHROME')
  if pixels.ndim != 2 and not colour:
    raise DataError(f'DICOM image {path} has pixel data of shape {pixels.shape} (multi-frame?): '
                    'only single-frame 2-D images are supported; export one frame per file.')
  low, high = float(pixels.min()), float(pixels.max())
  pixels = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
  if photometric == 'MONOCHROME1':  # Higher values are darker.
    pixels = 1.0 - pixels
  return pixels


def read_image(path: Path) -> np.ndarray:
  """One image file as float32 in [0, 1], (H, W) gray or (H, W, 3) RGB."""
  if path.suffix.lower() == '.dcm':
    return _read_dicom(path)
  image = reading.open_image(path)
  mode = image.mode
  if mode.startswith('I;16'):
    return np.asarray(image).astype(np.float32) / 65535.0
  if mode == 'I':  # 16-bit PNGs on some Pillow versions.
    return np.clip(np.asarray(image, np.float32) / 65535.0, 0.0, 1.0)
  if mode == 'F':
    pixels = np.asarray(image, np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    return (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
  if mode in ('1', 'L', 'LA', 'La'):
    return np.asarray(image.convert('L'), np.float32) / 255.0
  return np.asarray(image.convert('RGB'), np.float32) / 255.0


def _folder_split_names(data_config: Any) -> tuple[str, ...]:
  return _ordered(_folder_layout(data_config)[1])


def _load_folder(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], ClassificationInfo]:
  size, channels = _image_size(data_config), _channels(data_config)
  root, layout = _folder_layout(data_config)
  if split not in layout:
    raise DataError(f'Unknown split {split!r} in image folder {root}: it has the splits '
                    f'{", ".join(_ordered(layout))} (subfolders holding class folders); pick one.')
  class_names = _folder_classes(data_config, root, layout, split)
  files, labels = [], []
  for folder in sorted(layout[split], key=lambda c: class_names.index(c.name)):
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    files += found
    labels += [class_names.index(folder.name)] * len(found)
  if not files:
    raise DataError(f'Split folder {root / split} holds no image (.png, .jpg, .jpeg or .dcm) in '
                    'its class folders: add images or remove the folder.')
  images = np.zeros((len(files), size, size, channels), np.float32)
  for i, path in enumerate(files):
    images[i] = fit_image(read_image(path), size, channels)
  labels = np.asarray(labels, np.int32)
  arrays = {'image': images, 'label': labels, 'id': np.arange(len(files), dtype=np.int32)}
  info = ClassificationInfo(name='folder', split=split, class_names=class_names,
                            channels=channels, image_size=size, source=str(root),
                            class_counts=_counts(labels, len(class_names)))
  return arrays, info


# --------------------------------------------------------------------------------------------
# Synthetic ultrasound lesions.


def synthetic_class_counts(num: int) -> tuple[int, int, int]:
  """(normal, benign, malignant) images of a synthetic split of `num`: round(0.2·num) normal,
  round(0.3·num) malignant, the rest benign."""
  normal, malignant = round(SYNTHETIC_NORMAL * num), round(SYNTHETIC_MALIGNANT * num)
  return normal, num - normal - malignant, malignant


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """A smooth random field in about [−1, 1]: a cells×cells grid upsampled bilinearly."""
  grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
  return np.asarray(Image.fromarray(grid).resize((size, size), Image.BILINEAR), np.float32)


def _speckle(rng: np.random.Generator, size: int) -> np.ndarray:
  """Fully developed speckle: the magnitude of a smoothed complex Gaussian field, mean 1."""
  sigma = max(0.6, size / 64)
  re = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode='wrap')
  im = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode='wrap')
  magnitude = np.hypot(re, im)
  return (magnitude / magnitude.mean()).astype(np.float32)


def _lesion_radius(rng: np.random.Generator, theta: np.ndarray, malignant: bool) -> np.ndarray:
  """Boundary radius r(θ) relative to the mean radius: a smooth oval (benign) or a lobulated,
  spiculated outline (malignant)."""
  if not malignant:
    r = np.ones_like(theta)
    for k in (2, 3):  # Gentle macro-lobulation at most.
      r += rng.uniform(0.0, 0.04) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return r
  r = np.ones_like(theta)
  for k in range(3, 7):
    r += rng.uniform(0.04, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
  for _ in range(int(rng.integers(4, 9))):  # Spicules: narrow spikes.
    angle, width = rng.uniform(0, 2 * np.pi), rng.uniform(0.06, 0.14)
    delta = np.angle(np.exp(1j * (theta - angle)))
    r += rng.uniform(0.5, 0.9) * np.exp(-0.5 * (delta / width) ** 2)
  return r


def _synthetic_image(rng: np.random.Generator, label: int,
                     size: int) -> tuple[np.ndarray, np.ndarray]:
  """One (size, size) ultrasound-like image in [0, 1] and its lesion mask."""
  yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size  # In [0, 1].
  # Tissue: a bright skin line, layered echogenicity, depth attenuation, coarse variation.
  depth = 0.55 + 0.12 * _smooth_field(rng, size, 4) + 0.08 * _smooth_field(rng, size, 9)
  depth *= 1.0 - rng.uniform(0.2, 0.4) * yy
  depth += 0.3 * np.exp(-((yy - rng.uniform(0.03, 0.08)) / 0.025) ** 2)
  tissue = depth
  # Fat lobules in every image: faint elongated hypoechoic blobs (distractors).
  for _ in range(int(rng.integers(1, 4))):
    cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.9)
    a, b = rng.uniform(0.08, 0.18), rng.uniform(0.03, 0.06)
    inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2
    fade = 1.0 / (1.0 + np.exp(np.minimum((inside - 1.0) * 6.0, 50.0)))
    tissue = tissue * (1.0 - rng.uniform(0.1, 0.25) * fade)
  mask = np.zeros((size, size), np.uint8)
  if label > 0:
    malignant = label == 2
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.62)
    radius = rng.uniform(0.14, 0.22)
    # Benign: wider than tall (parallel to the skin); malignant: round to taller than wide.
    aspect = rng.uniform(1.15, 1.6) if not malignant else rng.uniform(0.8, 1.15)
    tilt = rng.uniform(-0.3, 0.3)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / aspect
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) * aspect
    rho, theta = np.hypot(u, v) / radius, np.arctan2(v, u)
    outline = _lesion_radius(rng, theta, malignant)
    edge = 0.6 * size ** -1 / radius * (1.0 if not malignant else 1.6)  # Blur in radius units.
    inside = 1.0 / (1.0 + np.exp(np.clip((rho - outline) / edge, -50.0, 50.0)))
    mask = (rho <= outline).astype(np.uint8)
    # Benign: homogeneous and dark (cyst-like); malignant: less dark, heterogeneous.
    contrast = rng.uniform(0.5, 0.75) if not malignant else rng.uniform(0.4, 0.65)
    tissue = tissue * (1.0 - contrast * inside)
    if malignant and rng.uniform() < 0.5:  # Echogenic halo: a bright rim around the margin.
      rim = np.exp(-((rho - outline) / 0.25) ** 2) * (rho > outline)
      tissue = tissue * (1.0 + rng.uniform(0.15, 0.35) * rim)
    if malignant and rng.uniform() < 0.6:  # Microcalcifications: bright specks inside.
      for _ in range(int(rng.integers(1, 4))):
        r, a = rng.uniform(0.0, 0.6), rng.uniform(0, 2 * np.pi)
        px = cx + r * radius * np.cos(a) / aspect
        py = cy + r * radius * np.sin(a) * aspect
        speck = np.exp(-(((xx - px) ** 2 + (yy - py) ** 2) * (size / 0.8) ** 2) / 2)
        tissue = tissue + rng.uniform(0.3, 0.5) * speck
    # Posterior acoustic feature: enhancement behind benign cysts, shadowing behind cancers.
    if rng.uniform() < 0.7:
      below = (yy > cy) * np.exp(-((xx - cx) / (radius * 0.9)) ** 2) * np.exp(-(yy - cy) / 0.35)
      strength = rng.uniform(0.1, 0.3)
      tissue = tissue * (1.0 + (strength if not malignant else -strength) * below * (1 - inside))
  image = tissue * (0.7 + 0.3 * _speckle(rng, size)) + 0.03 * rng.standard_normal((size, size))
  return np.clip(image, 0.0, 1.0).astype(np.float32), mask


def make_classification_set(num: int, *, image_size: int = 64, channels: int = 1,
                            seed: int = 0) -> dict[str, np.ndarray]:
  """`num` synthetic ultrasound images: 'image' (num, S, S, channels) in [0, 1], 'label' (num,)
  0 normal / 1 benign / 2 malignant in the counts of `synthetic_class_counts`, shuffled by the
  seed, 'mask' (num, S, S) the lesion (all zero for normal) and 'id' = arange(num). The same
  arguments give the same arrays."""
  counts = synthetic_class_counts(num)
  labels = np.repeat(np.arange(3, dtype=np.int32), counts)
  labels = np.random.default_rng([seed, 0]).permutation(labels).astype(np.int32)
  images = np.zeros((num, image_size, image_size, channels), np.float32)
  masks = np.zeros((num, image_size, image_size), np.uint8)
  for k in range(num):
    image, masks[k] = _synthetic_image(np.random.default_rng([seed, 1, k]), int(labels[k]),
                                       image_size)
    images[k] = image[..., None]
  return {'image': images, 'label': labels, 'mask': masks, 'id': np.arange(num, dtype=np.int32)}


def _load_synthetic(data_config: Any,
                    split: str) -> tuple[dict[str, np.ndarray], ClassificationInfo]:
  if split not in SYNTHETIC_SPLITS:
    raise DataError(f'Unknown split {split!r} of the synthetic classification set: use one of '
                    f'{", ".join(SYNTHETIC_SPLITS)}.')
  configured = _configured_classes(data_config)
  if configured and configured != SYNTHETIC_CLASSES:
    raise ConfigError(f'config.data.class_names = {configured} does not match the synthetic set '
                      f'{SYNTHETIC_CLASSES}: set it to those or to ().')
  size, channels = _image_size(data_config), _channels(data_config)
  num = _count(data_config, 'num_train' if split == 'train' else 'num_val',
               256 if split == 'train' else 64)
  seed = int(data_config.get('seed', 0) or 0) + SYNTHETIC_SPLITS.index(split)
  arrays = make_classification_set(num, image_size=size, channels=channels, seed=seed)
  info = ClassificationInfo(name='synthetic', split=split, class_names=SYNTHETIC_CLASSES,
                            channels=channels, image_size=size,
                            class_counts=synthetic_class_counts(num))
  return arrays, info


# --------------------------------------------------------------------------------------------


def split_names(data_config: Any) -> tuple[str, ...]:
  """Every split the data declares (train, val and test first, then the rest alphabetically)."""
  name = _name(data_config)
  if name == 'synthetic':
    return SYNTHETIC_SPLITS
  if name == 'npz':
    return _npz_split_names(data_config)
  return _folder_split_names(data_config)


def load_split(data_config: Any, split: str,
               image_key: str | None = None) -> tuple[dict[str, np.ndarray], ClassificationInfo]:
  """(arrays, info): 'image' (N, S, S, C) float32 in [0, 1], 'label' (N,) int32, 'id' (N,) =
  arange(N), and 'mask' (N, S, S) uint8 where the data has lesion masks (split-column npz,
  synthetic). `image_key` (npz only) reads another image array than data.image_key, e.g. BUSI's
  28 px 'images_28' resized to data.image_size."""
  name = _name(data_config)
  if image_key and name != 'npz':
    raise ConfigError(f'image_key = {image_key!r} (e.g. config.data.shift_image_key) applies to '
                      f"npz data only, not data.name={name!r}: set it to ''.")
  if name == 'synthetic':
    arrays, info = _load_synthetic(data_config, split)
  elif name == 'npz':
    arrays, info = _load_npz(data_config, split, image_key)
  else:
    arrays, info = _load_folder(data_config, split)
  if split == data_config.get('train_split', 'train') and missing_classes(info):
    raise DataError(f'the training split {split!r} of {info.source or name} has no images of '
                    f'the class(es) {", ".join(missing_classes(info))}: a classifier trained on '
                    'it would never see them; add their images to the split, or drop the classes '
                    '(their folders, or their names in config.data.class_names).')
  return arrays, info


def missing_classes(info: ClassificationInfo) -> tuple[str, ...]:
  """The classes of `info` with no example in its split."""
  return tuple(name for name, count in zip(info.class_names, info.class_counts) if count == 0)
