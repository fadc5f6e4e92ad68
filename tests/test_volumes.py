"""NIfTI volumes with their geometry: spacing from the header, resampling, writing on the input's
grid (affine, header, shape), and the one-line errors for unusable inputs."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from robust_med.data import volumes
from robust_med.errors import DataError


def _affine():
  """A rotated, translated, anisotropic grid (as a scanner writes one)."""
  c, s = np.cos(0.3), np.sin(0.3)
  rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
  affine = np.eye(4)
  affine[:3, :3] = rotation @ np.diag([0.8, 0.8, 2.5])
  affine[:3, 3] = [-90.0, 12.5, 40.0]
  return affine


def _write(path, array, affine=None, zooms=None):
  image = nib.Nifti1Image(array, _affine() if affine is None else affine)
  if zooms is not None:
    image.header.set_zooms(zooms)
  nib.save(image, str(path))
  return path


def test_read_gives_spacing_and_write_like_keeps_the_inputs_grid(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.normal(100, 20, (12, 10, 6)).astype(np.float32)
  volume = volumes.read_volume(_write(tmp_path / 'case.nii.gz', image))
  assert volume.spacing == pytest.approx((0.8, 0.8, 2.5)) and volume.shape == (12, 10, 6)
  np.testing.assert_array_equal(volume.array, image)
  labels = (image > 100).astype(np.uint8) + (image > 130)
  out = volumes.write_like(tmp_path / 'pred' / 'case.nii.gz', labels, volume)
  again = nib.load(str(out))
  np.testing.assert_allclose(again.affine, _affine(), atol=1e-6)
  assert again.shape == (12, 10, 6) and again.get_data_dtype() == np.uint8
  assert again.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
  np.testing.assert_array_equal(np.asarray(again.dataobj), labels)
  assert sorted(p.name for p in (tmp_path / 'pred').iterdir()) == ['case.nii.gz']  # no tmp left
  # int64 labels (numpy's default) are written as int16, booleans as uint8.
  out = volumes.write_like(tmp_path / 'b.nii', labels.astype(np.int64), volume)
  assert nib.load(str(out)).get_data_dtype() == np.int16


def test_a_multichannel_input_gives_a_3d_prediction_on_its_grid(tmp_path):
  image = np.zeros((8, 8, 4, 2), np.float32)
  volume = volumes.read_volume(_write(tmp_path / 'two.nii.gz', image))
  assert volume.array.shape == (8, 8, 4, 2) and volume.shape == (8, 8, 4)
  out = volumes.write_like(tmp_path / 'p.nii.gz', np.ones((8, 8, 4), np.uint8), volume)
  again = nib.load(str(out))
  assert again.shape == (8, 8, 4)
  np.testing.assert_allclose(again.affine, _affine(), atol=1e-6)
  with pytest.raises(DataError, match='grid'):
    volumes.write_like(tmp_path / 'q.nii.gz', np.ones((8, 8, 5), np.uint8), volume)


def test_resampling_keeps_the_extent_and_labels_stay_labels():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, (10, 9, 4)).astype(np.int32)
  out, spacing = volumes.resample(labels, (1.0, 1.0, 3.0), (1.0, 1.0, 1.0), order=0)
  assert out.shape == (10, 9, 12) and spacing == pytest.approx((1.0, 1.0, 1.0))
  assert set(np.unique(out)) <= {0, 1, 2}
  np.testing.assert_array_equal(out[:, :, 1], labels[:, :, 0])  # nearest: voxel 1 of 3 → 0
  image = rng.normal(size=(10, 9, 4, 2)).astype(np.float32)
  out, spacing = volumes.resample(image, (0.7, 0.7, 3.0), (1.0, 1.0, 1.0), order=3)
  assert out.shape == (7, 6, 12, 2)
  assert spacing == pytest.approx((1.0, 1.05, 1.0))  # 9 × 0.7 mm over 6 voxels
  same, spacing = volumes.resample(image, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), order=3)
  assert same is image and spacing == (1.0, 1.0, 1.0)
  with pytest.raises(DataError, match='target spacing'):
    volumes.resample(image, (1.0, 1.0, 1.0), (1.0, 0.0, 1.0), order=3)


def test_unusable_inputs_are_one_data_error_each(tmp_path):
  with pytest.raises(DataError, match='no voxel spacing'):
    volumes.read_volume(_write(tmp_path / 'flat.nii.gz', np.zeros((4, 4, 4), np.float32),
                               affine=np.eye(4), zooms=(1.0, 0.0, 1.0)))
  with pytest.raises(DataError, match='3-D'):
    volumes.read_volume(_write(tmp_path / 'slice.nii.gz', np.zeros((4, 4), np.float32),
                               affine=np.eye(4)))
  broken = tmp_path / 'broken.nii.gz'
  broken.write_bytes(gzip.compress(b'\x00' * 400)[:60])
  with pytest.raises(DataError, match='broken.nii.gz'):
    volumes.read_volume(broken)
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no volumes here')
  with pytest.raises(DataError, match='no NIfTI file'):
    volumes.nifti_files(tmp_path / 'empty')
  with pytest.raises(DataError, match='not a NIfTI file'):
    volumes.nifti_files(tmp_path / 'empty' / 'notes.txt')
  with pytest.raises(DataError, match='does not exist'):
    volumes.nifti_files(tmp_path / 'nowhere')
  names = [p.name for p in volumes.nifti_files(tmp_path) if p.name != 'broken.nii.gz']
  assert names == ['flat.nii.gz', 'slice.nii.gz']
