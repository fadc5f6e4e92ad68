"""A fuzz harness over every loader of every head: damaged copies of each fixture file must load
(where the damage is undetectable or documented as accepted) or fail with one `UserError` line
that names the file — never another exception, which the entry points would show as a traceback.

Each loader's tiny fixture is built here; from every file in it the harness derives truncations at
several offsets, random byte flips, the file swapped for an HTML page, a zip archive (what an
.xlsx is) or another format, an empty file, the file deleted, text re-encoded (Latin-1, UTF-16
with and without a byte-order mark, UTF-8 with one) and, per format, missing and extra keys,
columns and elements. Loading is done the way the entry points do it, through the head's
`Task.splits` and `Task.load_split` for every split, with no training. The end-to-end check that
such an error becomes exit code 2 with one `error:` line and nothing written is
`test_a_damaged_file_stops_main_with_one_line_and_nothing_written`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import shutil
import zipfile

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import numpy as np
from PIL import Image
import pytest

from cli_helpers import REPO, error_line, run
from msd_fixture import make_msd
from robust_med import config_base
from robust_med.errors import UserError
from robust_med.tasks import get_task_class

HTML = b'<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n'
FLIP_SEEDS = tuple(range(6))
TRUNCATIONS = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
TEXT = ('.csv', '.json', '.txt', '.xml')


def _zip_bytes() -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as z:
    z.writestr('xl/workbook.xml', '<workbook/>')
  return buffer.getvalue()


def _png_bytes() -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, 'PNG')
  return buffer.getvalue()


# ----------------------------------------------------------------------------- fixtures


def msd_folder(root):
  make_msd(root, cases=('case_a', 'case_b', 'case_c', 'case_d'),
           splits={'train': ['case_a', 'case_b'], 'val': ['case_c'], 'test': ['case_d']})
  return 'segmentation', {'name': 'msd', 'root': str(root), 'patch_size': (8, 8)}


def isbi_folder(root):
  root.mkdir(parents=True)
  (root / 'images').mkdir()
  rng = np.random.default_rng(0)
  header = ['image', 'split'] + [f'{a}{k}' for k in (1, 2) for a in 'xy']
  rows = []
  for number in range(1, 9):
    name, split = f'{number:03d}.png', 'train' if number <= 4 else 'test1'
    Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(root / 'images' / name)
    rows.append([name, split, *rng.uniform(5, 100, 4).round(1)])
  with open(root / 'landmarks_mean.csv', 'w', newline='') as f:
    csv.writer(f).writerows([header, *rows])
  (root / 'meta.json').write_text(json.dumps({
      'original_size_wh': [128, 160], 'original_spacing_mm': 0.1,
      'splits': {'train': '001-004', 'test1': '005-008'}}))
  return 'landmarks', {'name': 'isbi2015', 'root': str(root), 'patch_size': (20, 16),
                       'num_landmarks': 2, 'val_count': 2}


def voc_folder(root):
  for d in ('JPEGImages', 'Annotations', 'ImageSets/Main'):
    (root / d).mkdir(parents=True)
  for stem in ('a', 'b', 'c'):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[5:20, 10:30] = 255
    Image.fromarray(pixels).save(root / 'JPEGImages' / f'{stem}.jpg', quality=95)
    (root / 'Annotations' / f'{stem}.xml').write_text(
        '<annotation><size><width>60</width><height>40</height><depth>3</depth></size>'
        '<object><name>RBC</name><bndbox><xmin>11</xmin><ymin>6</ymin><xmax>30</xmax>'
        '<ymax>20</ymax></bndbox></object></annotation>')
  for split, stems in {'train': 'a b', 'val': 'c', 'test': 'b c'}.items():
    (root / 'ImageSets' / 'Main' / f'{split}.txt').write_text('\n'.join(stems.split()) + '\n')
  return 'detection', {'name': 'bccd', 'root': str(root), 'image_size': 32, 'max_boxes': 4}


def _labels(n):
  return (np.arange(n) % 2).astype(np.uint8)


def medmnist_npz(root):
  root.mkdir(parents=True)
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (('train', 6), ('val', 4), ('test', 4)):
    arrays[f'{split}_images'] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
    arrays[f'{split}_labels'] = _labels(n).reshape(n, 1)
  np.savez_compressed(root / 'pneumoniamnist.npz', **arrays)
  return 'classification', {'name': 'npz', 'root': str(root), 'image_size': 16}


def busi_npz(root):
  root.mkdir(parents=True)
  rng = np.random.default_rng(1)
  n = 12
  masks = np.zeros((n, 32, 32), np.uint8)
  masks[:, 8:20, 8:20] = 1
  np.savez(root / 'busi.npz', images=rng.integers(0, 255, (n, 32, 32), dtype=np.uint8),
           label=(np.arange(n) % 3).astype(np.int8), mask=masks,
           split=np.array(['train'] * 6 + ['val'] * 3 + ['test'] * 3),
           class_names=np.array(['normal', 'benign', 'malignant']))
  return 'classification', {'name': 'npz', 'root': str(root), 'image_size': 16}


def image_folder(root):
  rng = np.random.default_rng(2)
  for split, per_class in (('train', 2), ('val', 1)):
    for label in ('cat', 'dog'):
      (root / split / label).mkdir(parents=True)
      for k in range(per_class):
        pixels = rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)
        suffix = '.png' if k == 0 else '.jpg'
        Image.fromarray(pixels).save(root / split / label / f'{label}{k}{suffix}')
  return 'classification', {'name': 'folder', 'root': str(root), 'image_size': 16}


def dicom_folder(root):
  pydicom = pytest.importorskip('pydicom')
  from pydicom import examples  # pylint: disable=import-outside-toplevel
  for split in ('train', 'val'):
    for label in ('normal', 'pneumonia'):
      (root / split / label).mkdir(parents=True)
      ds = examples.ct.copy()
      ds.save_as(root / split / label / 'a.dcm')
  del pydicom
  return 'classification', {'name': 'folder', 'root': str(root), 'image_size': 16}


LOADERS = {'msd_nifti': msd_folder, 'isbi_csv_png': isbi_folder, 'voc_xml_jpeg': voc_folder,
           'medmnist_npz': medmnist_npz, 'busi_npz': busi_npz, 'image_folder': image_folder,
           'dicom_folder': dicom_folder}


def load_everything(head: str, data: dict) -> None:
  """What an entry point does with the data before training: every split the data declares."""
  config = config_base.task_config(head)
  for key, value in data.items():
    config.data[key] = value
  task = get_task_class(head)(config)
  for split in task.splits():
    task.load_split(split)


# ----------------------------------------------------------------------------- damage


def _flip(data: bytes, seed: int, start: int = 0) -> bytes:
  rng = np.random.default_rng(seed)
  out = bytearray(data)
  for i in rng.integers(start, len(out), 8):
    out[i] ^= int(rng.integers(1, 256))
  return bytes(out)


def _csv_rows(data: bytes) -> list[list[str]]:
  return list(csv.reader(io.StringIO(data.decode('utf-8'))))


def _csv_bytes(rows) -> bytes:
  buffer = io.StringIO()
  csv.writer(buffer).writerows(rows)
  return buffer.getvalue().encode()


def _npz_without(data: bytes, key: str) -> bytes:
  with np.load(io.BytesIO(data), allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files if k != key}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def damaged_copies(path, data: bytes):
  """(name, expectation, new bytes or None = delete) for one file; expectation 'fail' (must be
  refused), 'pass' (must load: documented acceptance) or 'any' (load, or be refused; for damage no
  reader can detect, such as flipped bytes inside a JPEG's entropy-coded data)."""
  suffix = ''.join(path.suffixes[-2:]) if path.name.endswith('.nii.gz') else path.suffix.lower()
  text = suffix in TEXT
  yield 'empty', 'fail', b''
  # A file the data lists (dataset.json, a CSV row, a split file) must be missed by name; one
  # found by listing a folder (an image folder's images, a VOC split file, the one .npz) is
  # simply not there, and what remains may be a valid data set.
  yield 'deleted', 'any', None
  yield 'html page', 'fail', HTML
  yield 'zip archive (xlsx)', 'fail', _zip_bytes()
  if not text and suffix != '.png':
    yield 'a png instead', 'fail' if suffix != '.jpg' else 'any', _png_bytes()
  if not text:
    yield 'text instead', 'fail', b'image,split\n001.png,train\n'
  for fraction in TRUNCATIONS:
    keep = max(1, int(len(data) * fraction))
    # A text file cut short can still parse (a shorter list); binary formats must notice, except
    # a PNG that lost only its last 16 bytes (the last data chunk's CRC and the end marker):
    # every pixel is still there.
    intact = suffix == '.png' and keep >= len(data) - 16
    yield f'truncated at {fraction:.0%}', 'any' if text or intact else 'fail', data[:keep]
  start = len(data) // 2 if suffix == '.dcm' else 0  # DICOM: pixel data, not header sizes.
  for seed in FLIP_SEEDS:
    yield f'8 bytes flipped (seed {seed})', 'any', _flip(data, seed, start)
  if not text:
    return
  decoded = data.decode('utf-8')
  yield 'utf-8 with BOM', 'pass', codecs.BOM_UTF8 + data
  yield 'utf-16 with BOM', 'pass', decoded.encode('utf-16')
  yield 'utf-16 without BOM', 'any' if suffix == '.xml' else 'fail', decoded.encode('utf-16-le')
  if suffix in ('.csv', '.txt'):
    lines = decoded.split('\n')
    lines[-2 if len(lines) > 1 else 0] += 'é'  # A non-ASCII character in the last line.
    yield 'latin-1', 'fail', '\n'.join(lines).encode('latin-1')
  if suffix == '.csv':
    rows = _csv_rows(data)
    yield 'last column missing', 'fail', _csv_bytes([r[:-1] for r in rows])
    yield 'extra column', 'fail', _csv_bytes([r + ['1'] for r in rows])
    yield 'semicolon-separated', 'fail', _csv_bytes(rows).replace(b',', b';')
    yield 'header missing', 'fail', _csv_bytes(rows[1:])
  if suffix == '.json':
    obj = json.loads(data)
    for key in obj:
      yield f'key {key!r} missing', 'any', json.dumps({k: v for k, v in obj.items()
                                                       if k != key}).encode()
    yield 'extra key', 'pass', json.dumps({**obj, 'comment': 'from a colleague'}).encode()
    yield 'a list, not an object', 'fail', json.dumps([obj]).encode()
  if suffix == '.xml':
    # XML declares or detects its own encoding: UTF-16 without a byte-order mark is valid XML.
    yield 'bndbox missing', 'fail', data.replace(b'<xmax>30</xmax>', b'')
    yield 'coordinate not a number', 'fail', data.replace(b'<xmin>11</xmin>', b'<xmin>a</xmin>')
    yield 'coordinate NaN', 'fail', data.replace(b'<xmin>11</xmin>', b'<xmin>nan</xmin>')
    yield 'extra element', 'pass', data.replace(b'</annotation>', b'<note>x</note></annotation>')
  if suffix == '.txt':
    yield 'names an image that does not exist', 'fail', data + b'zz\n'


def npz_key_copies(data: bytes):
  with np.load(io.BytesIO(data), allow_pickle=False) as f:
    keys = list(f.files)
  for key in keys:
    # Optional arrays (masks, class names) may go; required ones must be missed by name.
    yield f'key {key!r} missing', 'any', _npz_without(data, key)
  with np.load(io.BytesIO(data), allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays, notes=np.array(['from a colleague']))
  yield 'extra key', 'pass', buffer.getvalue()


def _cases(root):
  files = sorted(p for p in root.rglob('*') if p.is_file())
  seen = set()
  for path in files:
    kind = (path.parent.name, ''.join(path.suffixes))
    if kind in seen and path.suffix.lower() not in ('.json', '.csv'):
      continue  # One file of each kind per folder (the second PNG of a class adds nothing).
    seen.add(kind)
    data = path.read_bytes()
    for name, expect, new in damaged_copies(path, data):
      yield path, name, expect, new
    if path.suffix == '.npz':
      for name, expect, new in npz_key_copies(data):
        yield path, name, expect, new
  folders = sorted(sorted({p.parent for p in files}),
                   key=lambda f: -sum(p.parent == f for p in files))
  for folder in folders[:1]:  # The folder with the most files (the images), emptied.
    yield folder, 'folder emptied', 'fail', 'empty-folder'


@pytest.mark.parametrize('loader', sorted(LOADERS))
def test_every_damaged_input_loads_or_is_one_error_line_naming_the_file(tmp_path, loader):
  head, data = LOADERS[loader](tmp_path / loader)
  load_everything(head, data)  # The undamaged fixture loads.
  problems, counted = [], 0
  root = tmp_path / loader
  for path, damage, expect, new in _cases(root):
    counted += 1
    backup = tmp_path / 'backup'
    if path.is_dir():
      shutil.copytree(path, backup)
      for child in path.iterdir():
        child.unlink()
    else:
      shutil.copyfile(path, backup)
      if new is None:
        path.unlink()
      else:
        path.write_bytes(new)
    try:
      load_everything(head, data)
      outcome = 'loaded'
    except UserError as e:
      message = str(e)
      outcome = 'refused'
      if '\n' in message:
        problems.append(f'{path.name} {damage}: message has several lines: {message!r}')
      elif not any(name in message for name in (path.name, path.name.removesuffix('.gz'))) and (
          damage != 'deleted' or not any(f'{folder}' in message for folder in path.parents
                                         if root in (folder, *folder.parents))):
        # A deleted file cannot be named by what lists a folder: the folder must be.
        problems.append(f'{path.name} {damage}: message does not name the file: {message}')
    except Exception as e:  # noqa: BLE001  The point: anything else is a traceback.
      problems.append(f'{path.name} {damage}: {type(e).__name__}: {e}'[:300])
      outcome = 'crashed'
    finally:
      if path.is_dir():
        shutil.rmtree(path)
        shutil.copytree(backup, path)
        shutil.rmtree(backup)
      else:
        shutil.move(backup, path)
    if outcome != 'crashed' and expect == 'fail' and outcome == 'loaded':
      problems.append(f'{path.name} {damage}: loaded, but must be refused')
    if outcome != 'crashed' and expect == 'pass' and outcome == 'refused':
      problems.append(f'{path.name} {damage}: refused ({message}), but must load')
  assert counted >= 15, counted
  assert not problems, f'{len(problems)} of {counted} damaged inputs:\n' + '\n'.join(problems)


def count_cases() -> dict[str, int]:
  """Damaged inputs per loader (for the record: `python -c 'import test_fuzz_loaders as t;
  print(t.count_cases())'` from tests/)."""
  import tempfile
  from pathlib import Path
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, build in sorted(LOADERS.items()):
      build(Path(tmp) / name)
      out[name] = sum(1 for _ in _cases(Path(tmp) / name))
  return out


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize('config,folder,damage', [
    ('busi_rtda.py:synthetic', 'classification', 'images'),
    ('ceph_amat.py:synthetic', 'landmarks', 'csv'),
])
def test_a_damaged_file_stops_main_with_one_line_and_nothing_written(tmp_path, config, folder,
                                                                      damage):
  """Through `robust_med.main`: exit 2, one `error:` line naming the file, no traceback, and no
  checkpoint or report in the workdir."""
  if folder == 'classification':
    _, data = busi_npz(tmp_path / 'data')
    bad = tmp_path / 'data' / 'busi.npz'
    bad.write_bytes(bad.read_bytes()[:2000])
    extra = ['--config.data.name=npz']
  else:
    _, data = isbi_folder(tmp_path / 'data')
    bad = tmp_path / 'data' / 'landmarks_mean.csv'
    bad.write_bytes(bad.read_text().encode('utf-16-le'))
    extra = ['--config.data.name=isbi2015', '--config.data.num_landmarks=2',
             '--config.data.val_count=2']
  workdir = tmp_path / 'run'
  proc = run('robust_med.main', f'--config={REPO}/configs/{config}', f'--workdir={workdir}',
             f'--config.data.root={data["root"]}', *extra, timeout=180)
  line = error_line(proc)
  assert bad.name in line, line
  written = sorted(p.name for p in workdir.rglob('*') if p.is_file()) if workdir.exists() else []
  assert not [n for n in written if n.endswith(('.json', '.png', '.md')) or 'checkpoint' in n
              ], written
