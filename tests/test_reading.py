"""Tests for robust_med.data.reading: the files users bring, read or refused with one line."""

from __future__ import annotations

import codecs
import io
import json
import zipfile

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import nibabel as nib
import numpy as np
from PIL import Image
import pytest

from robust_med.data import reading
from robust_med.errors import DataError

CSV = 'image,split,x1,y1\n001.png,train,1.5,2\n002.png,test1,3,4\n'
HTML = b'<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n'


def refused(fn, path, *words):
  """Calls fn(path); asserts one DataError line naming the file and each of `words`."""
  with pytest.raises(DataError) as e:
    fn(path)
  text = str(e.value)
  assert '\n' not in text, text
  assert str(path) in text, text
  for word in words:
    assert word in text, (word, text)
  return text


def _png(path, size=(12, 10)):
  Image.fromarray(np.arange(np.prod(size), dtype=np.uint8).reshape(size)).save(path)
  return path


# ----------------------------------------------------------------------------- text and CSV


@pytest.mark.parametrize('prefix,encoding', [(b'', 'utf-8'), (codecs.BOM_UTF8, 'utf-8'),
                                             (b'', 'utf-16'), (b'', 'utf-16-be')])
def test_csv_reads_utf8_with_or_without_bom_and_utf16_with_one(tmp_path, prefix, encoding):
  data = prefix + CSV.encode(encoding)
  if encoding == 'utf-16-be':
    data = codecs.BOM_UTF16_BE + data
  path = tmp_path / 'l.csv'
  path.write_bytes(data)
  rows = reading.read_csv(path)
  assert [r for _, r in rows][0] == ['image', 'split', 'x1', 'y1']  # the BOM is not in 'image'
  assert [line for line, _ in rows] == [1, 2, 3]


def test_crlf_and_blank_lines_are_read(tmp_path):
  path = tmp_path / 'l.csv'
  path.write_bytes(CSV.replace('\n', '\r\n\r\n').encode())
  assert [row[0] for _, row in reading.read_csv(path)] == ['image', '001.png', '002.png']


def test_latin1_is_refused_with_the_way_to_resave(tmp_path):
  path = tmp_path / 'l.csv'
  path.write_bytes((CSV + 'Müller.png,train,1,2\n').encode('latin-1'))
  refused(reading.read_csv, path, 'not UTF-8', 'Latin-1', 'offset', 'CSV UTF-8')


def test_utf16_without_bom_is_named(tmp_path):
  path = tmp_path / 'l.csv'
  path.write_bytes(CSV.encode('utf-16-le'))
  refused(reading.read_csv, path, 'UTF-16')


@pytest.mark.parametrize('content,word', [
    (b'PK\x03\x04' + bytes(range(256)) * 4, 'xlsx'),
    (b'\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1' + bytes(range(256)), '.xls'),
    (b'%PDF-1.7\n' + bytes(range(128, 256)), 'PDF'),
    (b'\x89PNG\r\n\x1a\n' + bytes(range(256)), 'PNG image'),
])
def test_a_binary_file_under_a_text_name_is_named(tmp_path, content, word):
  path = tmp_path / 'l.csv'
  path.write_bytes(content)
  refused(reading.read_csv, path, word)


def test_semicolon_and_tab_separated_files_are_named(tmp_path):
  for sep, word in ((';', 'semicolons'), ('\t', 'tabs')):
    path = tmp_path / f'l{len(word)}.csv'
    path.write_text(CSV.replace(',', sep))
    refused(reading.read_csv, path, word, 'comma-separated')


def test_missing_file_and_folder_are_refused(tmp_path):
  refused(reading.read_text, tmp_path / 'nope.txt', 'does not exist')
  refused(reading.read_text, tmp_path, 'is a folder')


# ----------------------------------------------------------------------------- JSON and XML


def test_json_syntax_error_names_line_and_column(tmp_path):
  path = tmp_path / 'meta.json'
  path.write_text('{\n  "splits": {"train": "001-150",}\n}\n')
  refused(reading.read_json, path, 'line 2', 'column')


def test_json_with_bom_is_read(tmp_path):
  path = tmp_path / 'meta.json'
  path.write_bytes(codecs.BOM_UTF8 + json.dumps({'a': [1, 2]}).encode())
  assert reading.read_json(path) == {'a': [1, 2]}


def test_json_saved_as_an_html_page_is_named(tmp_path):
  path = tmp_path / 'dataset.json'
  path.write_bytes(HTML)
  refused(reading.read_json, path, 'HTML page', 'not a JSON file')


def test_xml_reads_and_refuses_truncation_and_html(tmp_path):
  path = tmp_path / 'a.xml'
  xml = b'<annotation><object><name>RBC</name></object></annotation>'
  path.write_bytes(xml)
  assert reading.parse_xml(path).find('object/name').text == 'RBC'
  path.write_bytes(xml[:30])
  refused(reading.parse_xml, path, 'not a valid XML file')
  path.write_bytes(HTML.replace(b'<!DOCTYPE html>', b'<!DOCTYPE html><br>'))
  refused(reading.parse_xml, path, 'HTML page')


# ----------------------------------------------------------------------------- images


def test_image_reads_and_closes_the_file(tmp_path):
  image = reading.open_image(_png(tmp_path / 'a.png'))
  assert image.size == (10, 12) and np.asarray(image)[1, 0] == 10


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_truncated_image_is_refused(tmp_path, fmt):
  buffer = io.BytesIO()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, fmt)
  data = buffer.getvalue()
  path = tmp_path / f'a.{fmt.lower()}'
  path.write_bytes(data[:len(data) // 2])
  refused(reading.open_image, path, 'cannot read image', 'truncated')


def test_html_page_saved_as_an_image_is_named(tmp_path):
  path = tmp_path / 'a.jpg'
  path.write_bytes(HTML)
  refused(reading.open_image, path, 'HTML page', 'not an image')


def test_empty_image_file_is_named(tmp_path):
  path = tmp_path / 'a.png'
  path.write_bytes(b'')
  refused(reading.open_image, path, 'an empty file')


# ----------------------------------------------------------------------------- npz and NIfTI


def _damage_member(path, key):
  """Flips bytes inside the stored (uncompressed) data of member `key` so its CRC fails."""
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(f'{key}.npy')
  start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
  for i in range(start + 200, start + 210):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def test_npz_reads_and_names_a_damaged_member(tmp_path):
  path = tmp_path / 'a.npz'
  np.savez(path, train_images=np.zeros((4, 28, 28), np.uint8), train_labels=np.arange(4))
  with reading.Npz(path) as npz:
    assert set(npz.keys) == {'train_images', 'train_labels'}
    assert npz.array('train_labels').tolist() == [0, 1, 2, 3]
  _damage_member(path, 'train_images')
  with reading.Npz(path) as npz:
    refused(npz.array, 'train_images', 'is damaged', str(path))


def test_npz_truncated_or_not_an_archive_is_refused(tmp_path):
  path = tmp_path / 'a.npz'
  np.savez(path, x=np.zeros(1000))
  path.write_bytes(path.read_bytes()[:300])
  refused(reading.Npz, path, 'cannot read', '.npz')
  path.write_bytes(HTML)
  refused(reading.Npz, path, 'HTML page')
  path.write_bytes(b'not an archive')
  refused(reading.Npz, path, 'not a zip archive')
  np.save(tmp_path / 'b.npy', np.zeros(3))
  refused(reading.Npz, tmp_path / 'b.npy', 'single .npy array')


def test_npz_object_array_is_refused(tmp_path):
  path = tmp_path / 'a.npz'
  np.savez(path, names=np.array(['a', None], dtype=object))
  with reading.Npz(path) as npz:
    refused(npz.array, 'names', 'without pickle')


@pytest.mark.parametrize('suffix', ['.nii', '.nii.gz'])
def test_nifti_reads_and_refuses_truncation(tmp_path, suffix):
  path = tmp_path / f'a{suffix}'
  volume = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
  nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
  np.testing.assert_array_equal(reading.read_nifti(path), volume)
  path.write_bytes(path.read_bytes()[:200])
  refused(reading.read_nifti, path, 'cannot read NIfTI file', 'truncated')
  path.write_bytes(HTML)
  refused(reading.read_nifti, path, 'HTML page')


def test_sniff_names_common_impostors():
  assert reading.sniff(b'') == 'an empty file'
  assert 'xlsx' in reading.sniff(b'PK\x03\x04rest')
  assert 'HTML' in reading.sniff(b'  \n<html>')
  assert reading.sniff(b'\x00' * 127 + b'\x01' * 1 + bytes(4)) in ('a binary file', 'UTF-16 text')
  assert reading.sniff(b'image,split\n') == ''
