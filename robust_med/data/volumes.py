"""NIfTI volumes with their geometry: reading with voxel spacing, resampling, writing alike.

What a volumetric pipeline needs beyond the voxels: the spacing (mm per voxel, from the header's
pixdim) to resample every case to one target spacing (nnU-Net's `3d_fullres` resamples to the
dataset's median spacing; images with third-order splines, labels with nearest neighbours here)
and the affine and header to write a prediction that opens on top of its input in ITK-SNAP or
3D Slicer (same grid, same orientation, same voxel size).

  volume = read_volume('case_001.nii.gz')            # .array, .spacing, .affine, .header
  image, spacing = resample(volume.array, volume.spacing, (1.0, 1.0, 1.0), order=3)
  write_like('pred/case_001.nii.gz', labels, volume)  # the input's affine and header

`nifti_files(path)` lists the NIfTI files of a file or folder. Every damaged or unusable input is
a `DataError` naming the file and the fix. Writes are atomic: a temporary file renamed into
place, never a half-written volume.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

import robust_med.data.reading as reading
from robust_med.errors import DataError

SUFFIXES = ('.nii.gz', '.nii')


@dataclasses.dataclass(frozen=True)
class Volume:
  """A NIfTI volume: its voxels as stored ((X, Y, Z) or (X, Y, Z, C)), its spacing in mm along
  X, Y and Z, and the affine and header to write results on the same grid."""
  path: Path
  array: np.ndarray
  spacing: tuple[float, float, float]
  affine: np.ndarray
  header: Any

  @property
  def shape(self) -> tuple[int, int, int]:
    return tuple(self.array.shape[:3])


def is_nifti(path: str | os.PathLike) -> bool:
  return str(path).lower().endswith(SUFFIXES)


def nifti_files(path: str | os.PathLike) -> list[Path]:
  """The NIfTI file `path`, or the NIfTI files in folder `path` (sorted by name); DataError when
  there is none."""
  path = Path(path).expanduser()
  if path.is_file():
    if not is_nifti(path):
      raise DataError(f'{path} is not a NIfTI file (.nii or .nii.gz): give a NIfTI volume or a '
                      'folder of them.')
    return [path]
  if not path.is_dir():
    raise DataError(f'{path} does not exist: give a NIfTI volume (.nii or .nii.gz) or a folder '
                    'of them.')
  files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p)
                 and not p.name.startswith('.'))
  if not files:
    raise DataError(f'{path} holds no NIfTI file (.nii or .nii.gz): give a folder of volumes, '
                    'or convert the images to NIfTI first (e.g. dcm2niix for DICOM series).')
  return files


def read_volume(path: str | os.PathLike) -> Volume:
  """A NIfTI volume with its spacing, affine and header; DataError for a damaged file, one that
  is not 3-D (or 3-D with channels), or one whose header gives no voxel spacing."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  path = Path(path)
  zooms = _stored_zooms(path)  # before nibabel's loader replaces a zero pixdim by 1
  array = reading.read_nifti(path)  # DataError for a missing or damaged file
  image = nib.load(path)
  if array.ndim == 5 and array.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector layout
    array = array[:, :, :, 0]
  if array.ndim not in (3, 4):
    raise DataError(f'{path} holds an array of shape {array.shape}: a volume must be 3-D '
                    '(X, Y, Z), or 4-D with channels last (X, Y, Z, C); re-export it.')
  return Volume(path, array, zooms, np.asarray(image.affine, np.float64), image.header)


def _stored_zooms(path: Path) -> tuple[float, float, float]:
  """The voxel size the file's header stores (pixdim 1-3, unchecked: nibabel's loader would
  replace zeros by 1 with a warning, silently making up a spacing); DataError when it stores
  none (a damaged file is left to `reading.read_nifti`, which names it)."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  try:
    with nib.openers.ImageOpener(path) as f:
      magic = f.read(4)
      f.seek(0)
      kind = nib.Nifti2Header if int.from_bytes(magic, 'little') in (540, 540 << 24) else (
          nib.Nifti1Header)
      header = kind.from_fileobj(f, check=False)
    pixdim = [float(z) for z in header['pixdim'][1:4]]
  except Exception:  # pylint: disable=broad-except
    reading.read_nifti(path)  # raises the DataError that names the damage
    raise
  if not all(np.isfinite(z) and z > 0 for z in pixdim):
    raise DataError(f'{path} gives no voxel spacing in its header (pixdim {tuple(pixdim)}): set '
                    'the voxel size in mm (e.g. nibabel\'s header.set_zooms, or re-export from '
                    'the scanner\'s DICOM with dcm2niix).')
  return tuple(pixdim)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    target: Sequence[float]) -> tuple[int, ...]:
  """The grid size that covers the same extent at the target spacing (at least 1 voxel)."""
  return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(array: np.ndarray, spacing: Sequence[float], target: Sequence[float], *,
             order: int) -> tuple[np.ndarray, tuple[float, ...]]:
  """`array` (X, Y, Z[, C]) resampled to spacing `target` (spline `order`: 3 for images, 0 for
  labels), and the spacing of the result (the extent divided by the new voxel counts, which
  differs from `target` by the rounding to whole voxels). Channels are resampled alike."""
  if len(target) != 3 or not all(np.isfinite(t) and t > 0 for t in target):
    raise DataError(f'target spacing {tuple(target)}: give three positive sizes in mm, e.g. '
                    '(1.0, 1.0, 1.0).')
  shape = resampled_shape(array.shape[:3], spacing, target)
  if shape == tuple(array.shape[:3]):
    return array, tuple(float(s) for s in spacing)
  factors = [n / m for n, m in zip(shape, array.shape[:3])] + [1.0] * (array.ndim - 3)
  out = ndimage.zoom(array, factors, order=order, mode='nearest', grid_mode=True)
  new_spacing = tuple(float(s * m / n) for s, m, n in zip(spacing, array.shape[:3], shape))
  return out, new_spacing


def write_like(path: str | os.PathLike, array: np.ndarray, reference: Volume) -> Path:
  """Writes `array` (the reference's X, Y, Z grid, optionally with channels) as NIfTI with the
  reference's affine and header (its data type set to the array's, no intensity scaling), so
  that it overlays the reference in any viewer. Atomic; returns the path."""
  import nibabel as nib  # pylint: disable=import-outside-toplevel
  path = Path(path)
  if tuple(array.shape[:3]) != reference.shape:
    raise DataError(f'cannot write {path}: its grid {tuple(array.shape[:3])} is not the grid '
                    f'{reference.shape} of {reference.path}; map it back onto that grid first.')
  if array.dtype == np.bool_ or array.dtype == np.int64:
    array = array.astype(np.int16 if array.dtype == np.int64 else np.uint8)
  header = reference.header.copy()
  header.set_data_dtype(array.dtype)
  header.set_slope_inter(1.0, 0.0)
  kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  image = kind(array, reference.affine, header=header)
  path.parent.mkdir(parents=True, exist_ok=True)
  suffix = '.nii.gz' if path.name.lower().endswith('.gz') else '.nii'
  tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}{suffix}')
  try:
    nib.save(image, tmp)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path
