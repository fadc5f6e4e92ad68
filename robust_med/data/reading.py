"""The one reading layer for the files users bring: text, CSV, JSON, XML, images, NIfTI and npz.

Every loader reads its files through these functions. A file that cannot be read becomes one
`DataError` that names the file, says what the file looks like instead where its first bytes tell
(another text encoding, a spreadsheet, an HTML page saved under an image's name, a truncated copy)
and gives the fix; no decoder's exception (PIL, nibabel, zipfile, numpy, XML, codecs) reaches the
user as a traceback.

Text is UTF-8. A UTF-8 byte-order mark (what Excel writes by default) is read and dropped, and
text with a UTF-16 byte-order mark (PowerShell's `>` redirect) is decoded as UTF-16: both are
unambiguous. Anything else that is not UTF-8 (Latin-1, Windows-1252) is refused with the way to
re-save it, since guessing an 8-bit encoding can silently change names.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any
import xml.etree.ElementTree as ET

import numpy as np

from robust_med.errors import DataError

# (first bytes, what a file starting with them is).
_SIGNATURES = (
    (b'PK\x03\x04', 'a zip archive (an Excel .xlsx or another Office file under this name?)'),
    (b'\xd0\xcf\x11\xe0', 'an old Office document (an Excel .xls under this name?)'),
    (b'%PDF', 'a PDF document'),
    (b'\x1f\x8b', 'a gzip archive'),
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF8', 'a GIF image'),
    (b'\x93NUMPY', 'a NumPy .npy array'),
)
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_SNIFF_BYTES = 512


def first_line(e: BaseException) -> str:
  """'Type: first line of the message' of an exception (its type alone when it has none)."""
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0]}' if text else type(e).__name__


def sniff(head: bytes) -> str:
  """What a file whose first bytes are `head` looks like, in words; '' when they say nothing."""
  if not head:
    return 'an empty file'
  for signature, what in _SIGNATURES:
    if head.startswith(signature):
      return what
  if len(head) >= 132 and head[128:132] == b'DICM':
    return 'a DICOM file'
  text = head.removeprefix(codecs.BOM_UTF8).lstrip().lower()
  if text.startswith((b'<!doctype html', b'<html')) or b'<html' in text[:_SNIFF_BYTES]:
    return 'an HTML page (a failed download or a saved error page?)'
  if text.startswith(b'<?xml'):
    return 'an XML document'
  if text.startswith((b'{', b'[')):
    return 'JSON text'
  if head.startswith(_UTF16_BOMS) or (len(head) >= 4 and head[1::2].count(0) > len(head) // 4):
    return 'UTF-16 text'
  if b'\x00' in head:
    return 'a binary file'
  return ''


def read_bytes(path: str | Path, what: str = 'file') -> bytes:
  """The bytes of `path`; DataError when it is missing, a folder or unreadable."""
  path = Path(path)
  if path.is_dir():
    raise DataError(f'{path} is a folder, not a {what}: point the config at the file')
  try:
    return path.read_bytes()
  except FileNotFoundError:
    raise DataError(f'{what} {path} does not exist: restore it or fix the path') from None
  except OSError as e:
    raise DataError(f'cannot read {what} {path} ({first_line(e)}): check its permissions and '
                    'copy it again') from None


def _head(path: Path) -> bytes:
  try:
    with path.open('rb') as f:
      return f.read(_SNIFF_BYTES)
  except OSError:
    return b''


def decode_text(data: bytes, path: str | Path, what: str = 'text file') -> str:
  """`data` (the bytes of `path`) as text: UTF-8, with or without its byte-order mark, or UTF-16
  with one; DataError naming the likely cause otherwise."""
  if data.startswith(_UTF16_BOMS):
    try:
      return data.decode('utf-16')
    except UnicodeDecodeError as e:
      raise DataError(f'{path} starts like UTF-16 text but does not decode ({first_line(e)}): '
                      'copy it again, or re-save it as UTF-8') from None
  kind = sniff(data[:_SNIFF_BYTES])
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    if kind and kind != 'JSON text':
      raise DataError(f'{path} is {kind}, not a {what}: replace it with the {what} itself '
                      '(from a spreadsheet: save as "CSV UTF-8")') from None
    raise DataError(f'{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}; '
                    'another encoding, e.g. Latin-1 or Windows-1252 from Excel?): re-save it as '
                    'UTF-8 (Excel: "CSV UTF-8"; or iconv -f latin1 -t utf-8 OLD > NEW)') from None
  if kind.startswith('an HTML page'):
    raise DataError(f'{path} is {kind}, not a {what}: replace it with the {what} itself')
  if '\x00' in text:
    hint = 'UTF-16 text without a byte-order mark' if kind == 'UTF-16 text' else (
        kind or 'a binary file')
    raise DataError(f'{path} holds NUL bytes: it is {hint}, not a {what}: re-save it as UTF-8 '
                    'text') from None
  return text


def read_text(path: str | Path, what: str = 'text file') -> str:
  """The text of `path` (see `decode_text`)."""
  return decode_text(read_bytes(path, what), path, what)


def read_json(path: str | Path, what: str = 'JSON file') -> Any:
  """The parsed JSON of `path`; DataError naming the line and column of a syntax error."""
  text = read_text(path, what)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f'{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): '
                    'fix or re-create the file') from None
  except RecursionError:
    raise DataError(f'{path} nests too deeply to be read as JSON: fix or re-create the '
                    'file') from None


def read_csv(path: str | Path, what: str = 'CSV file') -> list[tuple[int, list[str]]]:
  """(line number, cells) of every non-empty row of a comma-separated file; DataError for a file
  that is not comma-separated text."""
  text = read_text(path, what)
  try:
    rows = [(line, row) for line, row in enumerate(csv.reader(io.StringIO(text, newline='')), 1)
            if any(cell.strip() for cell in row)]
  except csv.Error as e:
    raise DataError(f'{path} is not a valid CSV file ({first_line(e)}): fix the file') from None
  if rows and all(len(row) == 1 for _, row in rows[:5]):
    for separator, name in ((';', 'semicolons'), ('\t', 'tabs')):
      if separator in rows[0][1][0]:
        raise DataError(f'{path} is separated by {name}, not commas (a spreadsheet exported '
                        'with a regional setting?): re-save it comma-separated')
  return rows


def parse_xml(path: str | Path, what: str = 'XML file') -> ET.Element:
  """The root element of an XML file; DataError naming what the file is when it is not XML."""
  data = read_bytes(path, what)
  try:
    return ET.fromstring(data)
  except ET.ParseError as e:
    kind = sniff(data[:_SNIFF_BYTES])
    detail = f'it is {kind}' if kind and kind not in ('an XML document', 'UTF-16 text') else (
        first_line(e))
    raise DataError(f'{path} is not a valid {what} ({detail}): fix or re-create the '
                    'file') from None


def open_image(path: str | Path):
  """The decoded `PIL.Image` at `path` (pixels loaded, file closed); DataError for a file that is
  not an image, or a truncated or damaged one."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  path = Path(path)
  if not path.is_file():
    raise DataError(f'image {path} does not exist: restore it or remove it from the list that '
                    'names it')
  try:
    with Image.open(path) as image:
      image.load()
      return image
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, struct.error...
    kind = sniff(_head(path))
    if kind and not kind.endswith('image'):
      raise DataError(f'{path} is {kind}, not an image: replace it with the image or remove '
                      'it') from None
    raise DataError(f'cannot read image {path} ({first_line(e)}; a truncated or damaged copy?): '
                    'copy it again or remove it') from None


def read_nifti(path: str | Path) -> np.ndarray:
  """The voxel array of a NIfTI file (.nii or .nii.gz); DataError for a damaged one."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  path = Path(path)
  try:
    return np.asarray(nib.load(path).dataobj)
  except Exception as e:  # nibabel, gzip and zlib raise many types for damaged files.
    kind = sniff(_head(path))
    detail = f'it is {kind}' if kind and kind != 'a gzip archive' else first_line(e)
    raise DataError(f'cannot read NIfTI file {path} ({detail}; a truncated or damaged copy?): '
                    'copy or download it again') from None


class Npz:
  """An opened .npz archive whose arrays are read one by one; every failure — a file that is not
  an archive, a damaged member (CRC error), an object array — is a DataError naming the file."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    try:
      self.file = np.load(self.path, allow_pickle=False)
    except Exception as e:  # np.load raises OSError, ValueError, BadZipFile, EOFError, ...
      head = _head(self.path)
      kind = sniff(head)
      if head.startswith(b'PK'):
        detail = first_line(e)
      else:
        detail = f'it is {kind}' if kind else 'it is not a zip archive'
      raise DataError(f'cannot read {self.path} as an .npz file ({detail}): point '
                      'config.data.root at a NumPy .npz written by np.savez, or copy it '
                      'again') from None
    if not isinstance(self.file, np.lib.npyio.NpzFile):
      raise DataError(f'{self.path} is a single .npy array, not an .npz archive: save the arrays '
                      'with np.savez')
    self.keys = tuple(self.file.files)

  def array(self, key: str) -> np.ndarray:
    """The array `key`, read now."""
    try:
      return self.file[key]
    except ValueError as e:  # An object array (np.save with allow_pickle).
      raise DataError(f'{self.path} key {key!r} cannot be read without pickle '
                      f'({first_line(e)}): re-save it as a fixed-width array (e.g. strings as '
                      "np.array(names, dtype='U'))") from None
    except Exception as e:  # zipfile.BadZipFile (bad CRC), zlib.error, EOFError, OSError...
      raise DataError(f'{self.path} key {key!r} is damaged ({first_line(e)}; a truncated or '
                      'corrupted copy?): copy the file again or re-create it') from None

  def close(self) -> None:
    self.file.close()

  def __enter__(self) -> Npz:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
