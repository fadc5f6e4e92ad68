"""Cephalometric landmark data: the ISBI 2015 cephalograms and a synthetic landmark set.

Real data (``data.name='isbi2015'``) lives in ``data.root``: ``images/NNN.png`` (8-bit gray),
``landmarks_<annotation>.csv`` (header ``image,split,x1,y1,...,xL,yL``, coordinates in original
full-resolution pixels, x right, y down) and ``meta.json`` (``original_size_wh``,
``original_spacing_mm``, ``splits``). The CSV ``split`` column assigns each image to a split;
`split_names` adds the derived 'val' / 'test' (as the AMAT authors' landmark_detection/data_loader.py:
the first ``data.val_count`` and the
other images of ``data.val_from``) and 'tune' (carved from the end of ``data.train_split``).
Every image is resized to ``data.patch_size`` (H, W) with each axis scaled on its own (aspect not
preserved), and the landmarks with it: x_in = x_full * W_in / W_full, y_in = y_full * H_in / H_full.
'to_full' and 'spacing' take predictions back to full-resolution pixels and millimetres.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import robust_med.data.reading as reading
from robust_med.errors import ConfigError, DataError

LANDMARK_NAMES = (
    'sella', 'nasion', 'orbitale', 'porion', 'subspinale', 'supramentale', 'pogonion', 'menton',
    'gnathion', 'gonion', 'lower_incisal_incision', 'upper_incisal_incision', 'upper_lip',
    'lower_lip', 'subnasale', 'soft_tissue_pogonion', 'posterior_nasal_spine',
    'anterior_nasal_spine', 'articulare')
DATASETS = ('isbi2015', 'synthetic')
SYNTHETIC_SPLITS = ('train', 'val', 'test')
SYNTHETIC_TO_FULL = (2.0, 1.5)  # Unequal on purpose: per-axis mm conversion bugs show up.
_DEFAULT_SIZE = {'isbi2015': (200, 160), 'synthetic': (64, 64)}
_LAYOUT = 'images/NNN.png, meta.json and landmarks_<annotation>.csv'
_OTHER = 'or run offline with --config.data.name=synthetic'


@dataclasses.dataclass(frozen=True)
class LandmarkInfo:
  """Describes one loaded landmark split."""
  name: str  # 'isbi2015' or 'synthetic'.
  split: str
  num_landmarks: int
  landmark_names: tuple[str, ...]  # LANDMARK_NAMES for the 19 ISBI landmarks, else 'landmark<k>'.
  channels: int
  input_size: tuple[int, int]  # (H, W) of 'image': data.patch_size.
  files: tuple[str, ...]  # Image file names of the split's records in id order ('' if synthetic).


def _dataset_name(data_config: Any) -> str:
  """data.name; DataError unless it is one of DATASETS."""
  name = data_config.get('name', None)
  if name not in DATASETS:
    raise DataError(f'unknown landmark dataset data.name={name!r}: use one of {list(DATASETS)} '
                    '(e.g. --config.data.name=synthetic)')
  return name


def _input_size(data_config: Any) -> tuple[int, int]:
  """data.patch_size as (H, W); ConfigError unless it is two positive integers."""
  size = data_config.get('patch_size', None)
  size = _DEFAULT_SIZE[_dataset_name(data_config)] if size is None else size
  if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
    raise ConfigError(f'data.patch_size={size!r} is not two positive integers (H, W): set e.g. '
                      '--config.data.patch_size="(200, 160)"')
  return int(size[0]), int(size[1])


def _carve_tune(data_config: Any, splits: dict[str, Sequence[int]],
                where: str) -> dict[str, Sequence[int]]:
  """`splits` plus 'tune': the last round(data.tune_fraction * n) rows of data.train_split, which
  loses them (0 = unchanged)."""
  fraction = float(data_config.get('tune_fraction', 0.0) or 0.0)
  if not fraction:
    return splits
  if not 0 < fraction < 1:
    raise ConfigError(f'data.tune_fraction = {fraction} is outside [0, 1): use e.g. 0.2, or 0 for '
                      'no tuning split')
  source = str(data_config.get('train_split', 'train'))
  if 'tune' in splits:
    raise DataError(f"{where} already declares a 'tune' split: set data.tune_fraction=0 to use it")
  if source not in splits:
    raise DataError(f'cannot carve a tuning split from {source!r}: {where} has the splits '
                    f'{list(splits)}; set data.train_split to one of them')
  rows, num = splits[source], round(fraction * len(splits[source]))
  if not 0 < num < len(rows):
    raise DataError(f'data.tune_fraction = {fraction} of the {len(rows)} {source!r} images leaves '
                    'an empty split: pick a fraction that keeps at least one image on each side')
  return {**splits, source: rows[:-num], 'tune': rows[-num:]}


# ----------------------------------------------------------------------------- ISBI 2015 folder


def _positive_pair(meta: dict, key: str, path: Path, default: Any = None) -> np.ndarray:
  """meta[key] (a positive number or (x, y) pair) as a float64 pair; DataError otherwise."""
  value = meta.get(key, default)
  try:
    pair = np.broadcast_to(np.asarray(value, np.float64), (2,)).copy()
  except (TypeError, ValueError):
    pair = np.full(2, np.nan)
  if not (np.isfinite(pair).all() and (pair > 0).all()):
    raise DataError(f'{path} key "{key}" is {value!r}: it must be a positive number or an (x, y) '
                    'pair of them; fix the file')
  return pair


def _read_meta(root: Path) -> dict:
  path = root / 'meta.json'
  if not path.is_file():
    raise DataError(f'{root} has no meta.json: add one with "original_size_wh", '
                    '"original_spacing_mm" and "splits" (see the ISBI 2015 folder\'s meta.json)')
  meta = reading.read_json(path)
  if not isinstance(meta, dict) or not isinstance(meta.get('splits', {}), dict):
    raise DataError(f'{path} must be a JSON object whose "splits" maps split names to ranges '
                    'like "001-150" or lists of files: fix the file')
  return meta


def _read_csv(root: Path, annotation: str,
              num_landmarks: int) -> tuple[Path, list[str], list[str], np.ndarray]:
  """(path, image names, split names, coordinates (R, L, 2) float64) of landmarks_<annotation>."""
  path = root / f'landmarks_{annotation}.csv'
  if not path.is_file():
    found = sorted(p.name[len('landmarks_'):-len('.csv')] for p in root.glob('landmarks_*.csv'))
    raise DataError(f'{root} has no landmarks_{annotation}.csv (data.annotation={annotation!r}): '
                    f'set data.annotation to one whose CSV exists there: {found}')
  rows = reading.read_csv(path, 'landmark CSV')
  expected = 2 + 2 * num_landmarks
  for line, row in rows:
    if len(row) != expected:
      raise DataError(f'{path} line {line} has {len(row)} columns, expected {expected} (image, '
                      f'split, then x, y of data.num_landmarks={num_landmarks} landmarks): set '
                      'data.num_landmarks to match the file, or fix the file')
  if not rows or [c.strip() for c in rows[0][1][:2]] != ['image', 'split']:
    raise DataError(f'{path} does not start with the header image,split,x1,y1,...: add it')
  header, files, splits = rows[0][1], [], []
  coords = np.zeros((len(rows) - 1, 2 * num_landmarks))
  for i, (line, row) in enumerate(rows[1:]):
    files.append(row[0].strip())
    splits.append(row[1].strip())
    if not files[-1] or not splits[-1]:
      raise DataError(f'{path} line {line} has an empty image or split name: fill it in')
    for j, value in enumerate(row[2:]):
      try:
        coords[i, j] = float(value)
      except ValueError:
        coords[i, j] = np.nan
      if not np.isfinite(coords[i, j]):
        raise DataError(f'{path} line {line}: {header[j + 2].strip()}={value!r} is not a finite '
                        'number: fix the coordinate (full-resolution pixels)')
  duplicates = sorted({f for f in files if files.count(f) > 1})
  if duplicates:
    raise DataError(f'{path} lists {duplicates[0]} more than once: keep one row per image')
  return path, files, splits, coords.reshape(-1, num_landmarks, 2)


def _read_folder(data_config: Any) -> tuple[Path, dict, Path, list[str], np.ndarray, dict]:
  """(root, meta, CSV path, image names, coordinates, {split: row indices sorted by file})."""
  root = data_config.get('root', None)
  if root is None or not str(root).strip():
    raise DataError(f'ISBI 2015 data root is not set: pass --config.data.root=PATH to a folder '
                    f'with {_LAYOUT}, {_OTHER}')
  root = Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f'cephalogram folder {root} does not exist or is not a folder: put {_LAYOUT} '
                    f'there or pass --config.data.root=PATH, {_OTHER}')
  meta = _read_meta(root)
  num_landmarks = int(data_config.get('num_landmarks', 19))
  path, files, row_splits, coords = _read_csv(
      root, str(data_config.get('annotation', 'mean')), num_landmarks)
  order = sorted(range(len(files)), key=files.__getitem__)
  names = list(meta.get('splits', {}))
  names += sorted(set(row_splits) - set(names))
  splits = {name: [i for i in order if row_splits[i] == name] for name in names}
  empty = [name for name, rows in splits.items() if not rows]
  if empty:
    raise DataError(f'{root / "meta.json"} declares the splits {empty} but no row of {path} has '
                    'them: add their rows to the CSV or remove them from "splits"')
  val_from = str(data_config.get('val_from', 'test1'))
  val_count = int(data_config.get('val_count', 50) or 0)
  if val_from in splits and val_count > 0:
    rows = splits[val_from]
    if val_count >= len(rows):
      raise DataError(f'data.val_count={val_count} takes all {len(rows)} {val_from!r} images and '
                      f'leaves no test split: set data.val_count below {len(rows)}, or 0 for no '
                      'derived val/test splits')
    splits.setdefault('val', rows[:val_count])
    splits.setdefault('test', rows[val_count:])
  return root, meta, path, files, coords, _carve_tune(data_config, splits, str(root))


def _read_image(path: Path, name: str, csv_path: Path) -> Image.Image:
  """The gray 8-bit image at `path`; DataError if it is missing, unreadable or not 8-bit."""
  if not path.is_file():
    raise DataError(f'image {name} listed in {csv_path} is missing (expected {path}): restore '
                    'the file or remove its row')
  image = reading.open_image(path)
  if image.mode.startswith('I') or image.mode == 'F':
    raise DataError(f'image {path} has PIL mode {image.mode}, not 8-bit: convert it to 8-bit '
                    'gray PNG')
  return image.convert('L')


def _load_isbi(data_config: Any,
               split: str) -> tuple[dict[str, np.ndarray], LandmarkInfo]:
  size = _input_size(data_config)
  root, meta, csv_path, files, coords, splits = _read_folder(data_config)
  if split not in splits:
    raise DataError(f'unknown split {split!r}: {root} has the splits {list(splits)}; pick one '
                    'of them')
  rows = splits[split]
  full_wh = None
  if meta.get('original_size_wh') is not None:
    full_wh = _positive_pair(meta, 'original_size_wh', root / 'meta.json')
  if meta.get('original_spacing_mm') is None:
    raise DataError(f'{root / "meta.json"} has no "original_spacing_mm": add the pixel spacing '
                    'of the original images in mm (ISBI 2015: 0.1); without it every millimetre '
                    'metric (MRE, SDR) would silently assume another data set\'s')
  spacing = _positive_pair(meta, 'original_spacing_mm', root / 'meta.json')
  images = np.empty((len(rows), *size, 1), np.float32)
  full_size = np.empty((len(rows), 2))  # (W_full, H_full) of each image.
  for n, i in enumerate(rows):
    image = _read_image(root / 'images' / files[i], files[i], csv_path)
    wh = np.asarray(image.size, np.float64) if full_wh is None else full_wh
    if abs(math.log(image.size[0] / image.size[1] * wh[1] / wh[0])) > 0.02:
      raise DataError(f'image {files[i]} is {image.size[0]}x{image.size[1]} but meta.json '
                      f'original_size_wh is {wh.tolist()} (another aspect ratio): fix meta.json '
                      'or use uncropped images')
    resized = image.resize(size[::-1], Image.Resampling.LANCZOS)
    images[n, :, :, 0] = np.asarray(resized, np.float32) / 255.0
    full_size[n] = wh
  full, to_full = coords[rows], full_size / size[::-1]
  outside = (full < 0).any(-1) | (full >= full_size[:, None]).any(-1)
  if outside.any():
    where = [f'{files[rows[n]]} landmark {k + 1}' for n, k in zip(*np.nonzero(outside))]
    warnings.warn(f'{len(where)} landmarks of the {split!r} split lie outside their image (e.g. '
                  f'{", ".join(where[:3])}): check data.annotation and original_size_wh in '
                  f'{root / "meta.json"}; they are kept as they are', stacklevel=3)
  # The last number in the file name (001.png -> 1), else the 1-based CSV data row.
  index = [int(m[-1]) if (m := re.findall(r'\d+', Path(files[i]).stem)) else i + 1 for i in rows]
  arrays = {'image': images, 'landmarks': (full / to_full[:, None]).astype(np.float32),
            'landmarks_full': full.astype(np.float32), 'to_full': to_full.astype(np.float32),
            'spacing': np.tile(spacing, (len(rows), 1)).astype(np.float32),
            'image_index': np.asarray(index, np.int32), 'id': np.arange(len(rows), dtype=np.int32)}
  num_landmarks = coords.shape[1]
  info = LandmarkInfo(name='isbi2015', split=split, num_landmarks=num_landmarks,
                      landmark_names=_landmark_names('isbi2015', num_landmarks), channels=1,
                      input_size=size, files=tuple(files[i] for i in rows))
  return arrays, info


def _landmark_names(dataset: str, num_landmarks: int) -> tuple[str, ...]:
  """LANDMARK_NAMES for the 19 ISBI 2015 landmarks, else landmark1, landmark2, ..."""
  if dataset == 'isbi2015' and num_landmarks == len(LANDMARK_NAMES):
    return LANDMARK_NAMES
  return tuple(f'landmark{k + 1}' for k in range(num_landmarks))


# ----------------------------------------------------------------------------- synthetic set


def _layout(num_landmarks: int, h: int, w: int) -> tuple[np.ndarray, float, float, float]:
  """Mean layout (L, 2) (x, y): a grid whose points, moved by up to 0.3 grid steps, stay a
  margin (8 px; min(H, W) / 6 below 48 px) inside the border; the pattern radius, the grid step
  and the margin. The grid shape maximises the step."""
  margin = min(8.0, min(h, w) / 6)

  def step(cols: int) -> float:
    rows = math.ceil(num_landmarks / cols)
    return min((w - 1 - 2 * margin) / (cols - 0.4), (h - 1 - 2 * margin) / (rows - 0.4))

  cols = max(range(1, num_landmarks + 1), key=step)
  spacing = step(cols)
  radius = min(min(h, w) / 14, (0.8 * spacing - 3) / 2.8)  # Patterns 0.8 steps apart never touch.
  if radius < 2:
    raise ConfigError(f'input size {(h, w)} is too small for {num_landmarks} synthetic landmarks: '
                      'use a larger data.patch_size or fewer data.num_landmarks')
  k = np.arange(num_landmarks)
  grid = np.stack([k % cols, k // cols], axis=-1)
  return margin + spacing * (grid + 0.3), radius, spacing, margin


def _segment(along: np.ndarray, across: np.ndarray, low: float, high: float) -> np.ndarray:
  """Profile (Gaussian, sigma 0.8 px) of a line segment from `low` to `high` on the `along` axis."""
  return np.exp(-0.5 * ((along - np.clip(along, low, high)) ** 2 + across ** 2) / 0.64)


def _pattern(k: int, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
  """Intensity change of landmark k's pattern centred at dx = dy = 0. Kinds cycle through a
  bright blob, a dark ring, a cross, a T junction and a dark L corner; later cycles stretch
  them (1.4 : 1/1.4) and rotate them by 45 degrees per cycle."""
  kind, cycle = k % 5, k // 5
  angle, stretch = cycle * math.pi / 4, 1.4 if cycle else 1.0
  u = math.cos(angle) * dx + math.sin(angle) * dy
  v = -math.sin(angle) * dx + math.cos(angle) * dy
  a, b = radius * stretch, radius / stretch
  if kind == 0:
    return 0.4 * np.exp(-2 * ((u / a) ** 2 + (v / b) ** 2))
  if kind == 1:
    ring = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 0.8) * radius  # ~ px from the ring.
    return -0.3 * np.exp(-0.5 * ring ** 2 / 0.64)
  if kind == 2:
    return 0.4 * np.maximum(_segment(u, v, -a, a), _segment(v, u, -b, b))
  if kind == 3:
    return 0.4 * np.maximum(_segment(u, v, -a, a), _segment(v, u, 0, b))
  return -0.3 * np.maximum(_segment(u, v, 0, a), _segment(v, u, 0, b))


def make_landmark_set(num: int, *, input_size: Sequence[int] = (64, 64), num_landmarks: int = 4,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """`num` synthetic images with `num_landmarks` distinct patterns (see `_pattern`) whose centres
  are the landmarks: a mean grid layout, a random shift per image and a jitter per landmark, each
  pattern inside the image (its centre at least 8 px from the border) and apart from the others, on a smooth
  random background with a little pixel noise. Returns the arrays `load_split` returns ('image'
  in [0, 1]; 'to_full' = SYNTHETIC_TO_FULL, 'spacing' = 0.1 mm); deterministic given the args."""
  h, w = (int(s) for s in input_size)
  if num < 0 or num_landmarks < 1:
    raise ConfigError(f'synthetic landmark set of {num} images with {num_landmarks} landmarks: '
                      'set data.num_train / data.num_val >= 0 and data.num_landmarks >= 1')
  layout, radius, spacing, margin = _layout(num_landmarks, h, w)
  extent, rng = 1.4 * radius + 1.5, np.random.default_rng(seed)
  points = np.broadcast_to(layout, (num, num_landmarks, 2)).copy()
  todo = np.arange(num)
  for _ in range(100):  # Rejection sampling; rows never accepted keep the mean layout.
    cand = (layout + rng.uniform(-spacing / 5, spacing / 5, (len(todo), 1, 2))
            + rng.uniform(-spacing / 10, spacing / 10, (len(todo), num_landmarks, 2)))
    border = max(margin, extent)
    ok = ((cand >= border) & (cand <= np.array([w, h]) - 1 - border)).all(axis=(1, 2))
    dist = np.linalg.norm(cand[:, :, None] - cand[:, None], axis=-1) + 1e9 * np.eye(num_landmarks)
    ok &= dist.min(axis=(1, 2)) >= 2 * extent
    points[todo[ok]] = cand[ok]
    todo = todo[~ok]
    if not len(todo):
      break
  level = rng.uniform(0.3, 0.45, (num, 1, 1))
  freq = rng.uniform(0.3, 2.0, (num, 3, 1, 1)) * 2 * math.pi
  direction = rng.uniform(0, 2 * math.pi, (num, 3, 1, 1))
  phase = rng.uniform(0, 2 * math.pi, (num, 3, 1, 1))
  amplitude = rng.uniform(0, 0.05, (num, 3, 1, 1))
  noise = rng.normal(0, 0.02, (num, h, w))
  y, x = np.mgrid[:h, :w].astype(np.float64)
  images = np.empty((num, h, w, 1), np.float32)
  for start in range(0, num, 64):
    part = slice(start, start + 64)
    wave = np.cos(freq[part] * (np.cos(direction[part]) * x / w + np.sin(direction[part]) * y / h)
                  + phase[part])
    image = level[part] + (amplitude[part] * wave).sum(axis=1) + noise[part]
    for k in range(num_landmarks):
      dx = x - points[part, k, 0, None, None]
      image += _pattern(k, dx, y - points[part, k, 1, None, None], radius)
    images[part, :, :, 0] = np.clip(image, 0, 1)
  to_full = np.tile(np.asarray(SYNTHETIC_TO_FULL, np.float32), (num, 1))
  landmarks = points.astype(np.float32)
  return {'image': images, 'landmarks': landmarks, 'landmarks_full': landmarks * to_full[:, None],
          'to_full': to_full, 'spacing': np.full((num, 2), 0.1, np.float32),
          'image_index': np.arange(num, dtype=np.int32), 'id': np.arange(num, dtype=np.int32)}


def _synthetic_sizes(data_config: Any) -> dict[str, int]:
  num_val = int(data_config.get('num_val', 64))
  return {'train': int(data_config.get('num_train', 256)), 'val': num_val, 'test': num_val}


def _synthetic_splits(data_config: Any) -> dict[str, Sequence[int]]:
  splits = {split: range(num) for split, num in _synthetic_sizes(data_config).items()}
  return _carve_tune(data_config, splits, 'the synthetic landmark set')


def _load_synthetic(data_config: Any,
                    split: str) -> tuple[dict[str, np.ndarray], LandmarkInfo]:
  """Synthetic split: train / val / test (num_train / num_val / num_val images, default 256 / 64
  / 64, data.num_landmarks default 4) use data.seed + 0 / 1 / 2; 'tune' is carved from the end of
  data.train_split."""
  size = _input_size(data_config)
  splits = _synthetic_splits(data_config)
  if split not in splits:
    raise DataError(f'unknown split {split!r}: the synthetic landmark set has the splits '
                    f'{list(splits)}; pick one of them')
  base = str(data_config.get('train_split', 'train')) if split == 'tune' else split
  num_landmarks = int(data_config.get('num_landmarks', 4))
  arrays = make_landmark_set(_synthetic_sizes(data_config)[base], input_size=size,
                             num_landmarks=num_landmarks,
                             seed=int(data_config.get('seed', 0)) + SYNTHETIC_SPLITS.index(base))
  rows = np.asarray(splits[split], np.int64)
  arrays = {key: value[rows] for key, value in arrays.items()}
  arrays['id'] = np.arange(len(rows), dtype=np.int32)
  info = LandmarkInfo(name='synthetic', split=split, num_landmarks=num_landmarks,
                      landmark_names=_landmark_names('synthetic', num_landmarks), channels=1,
                      input_size=size, files=('',) * len(rows))
  return arrays, info


# ----------------------------------------------------------------------------- entry points


def split_names(data_config: Any) -> tuple[str, ...]:
  """Declared splits (meta.json's, then the CSV's others), derived 'val' / 'test', then 'tune'."""
  if _dataset_name(data_config) == 'synthetic':
    return tuple(_synthetic_splits(data_config))
  return tuple(_read_folder(data_config)[-1])


def load_split(data_config: Any, split: str) -> tuple[dict[str, np.ndarray], LandmarkInfo]:
  """Loads `split` of the dataset named by data.name: ({'image': float32 (N, H, W, 1) in [0, 1],
  'landmarks': (N, L, 2) (x, y) input px, 'landmarks_full': (N, L, 2) full-resolution px,
  'to_full': (N, 2) full px per input px (x, y), 'spacing': (N, 2) mm per full px (x, y),
  'image_index': int32 (N,) number in the file name, 'id': int32 arange(N)}, info)."""
  if _dataset_name(data_config) == 'synthetic':
    return _load_synthetic(data_config, split)
  return _load_isbi(data_config, split)
