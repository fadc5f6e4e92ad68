"""`robust_med.predict`: NIfTI in, NIfTI predictions (and attacked inputs) out on the right grids."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from robust_med import predict, train
from robust_med.data import msd
from test_segmentation3d import volume_config
from tiny import tiny_config


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny 3-D STD run (phantoms at 1 mm) and a tiny 2-D one, trained for one epoch."""
  root = tmp_path_factory.mktemp('runs')
  c3 = volume_config(**{'method.name': 'std', 'num_epochs': 1, 'data.spacing': (1.0, 1.0, 1.0),
                        'checkpoint_every_steps': 2})
  c3.lock()
  train.Trainer(c3, str(root / 'v3')).train()
  c2 = tiny_config('std', **{'num_epochs': 1})
  train.Trainer(c2, str(root / 'v2')).train()
  return {'v3': (c3, root / 'v3'), 'v2': (c2, root / 'v2')}


def write(path, array, spacing, affine=None):
  affine = np.diag([*spacing, 1.0]) if affine is None else affine
  img = nib.Nifti1Image(np.asarray(array, np.float32), affine)
  img.header.set_zooms(spacing)
  nib.save(img, str(path))
  return path


def test_3d_prediction_on_the_input_grid_matches_the_model(runs, tmp_path):
  from robust_med import data as data_lib
  config, workdir = runs['v3']
  arrays, _ = data_lib.load_split(config.data, 'val')
  affine = np.array([[0, -1.0, 0, 10], [1.0, 0, 0, -5], [0, 0, 1.0, 3], [0, 0, 0, 1]])
  src = write(tmp_path / 'case_0.nii.gz', arrays['image'][0, ..., 0], (1.0, 1.0, 1.0), affine)
  record = predict.predict_volumes(config, str(workdir), str(src), str(tmp_path / 'out'))
  out = nib.load(record['volumes'][0]['files']['pred'])
  assert out.shape == (16, 16, 16) and np.allclose(out.affine, affine)
  label = np.asarray(out.dataobj)
  assert label.dtype == np.uint8 and label.max() < 3
  # The same as the model applied to the z-scored volume by the evaluator's route.
  p = predict.Predictor(config, str(workdir))
  z = msd.zscore(arrays['image'][0])
  logits = p.model.apply({'params': p.params}, jnp.asarray(z[None]))
  assert np.array_equal(label, np.argmax(np.asarray(logits)[0], -1))
  assert json.loads((tmp_path / 'out' / 'predictions.json').read_text())['step'] == p.step


def test_3d_attack_budget_per_volume_and_resampled_grid(runs, tmp_path):
  config, workdir = runs['v3']
  rng = np.random.default_rng(0)
  # 2 mm along X: resampled to the run's 1 mm (24 voxels), predicted, mapped back onto 12.
  src = write(tmp_path / 'coarse.nii', rng.normal(size=(12, 18, 16)), (2.0, 1.0, 1.0))
  eps = 2.0
  record = predict.predict_volumes(config, str(workdir), str(src), str(tmp_path / 'out'),
                                   attack='pgd', eps=eps, norm='l2', steps=3)
  entry = record['volumes'][0]
  assert nib.load(entry['files']['pred']).shape == (12, 18, 16)
  assert nib.load(entry['files']['pred_attacked']).shape == (12, 18, 16)
  pert = nib.load(entry['files']['perturbation'])
  assert pert.shape == (24, 18, 16)  # The model's grid, placed in the same world.
  assert np.allclose(pert.header.get_zooms()[:3], (1.0, 1.0, 1.0))
  world = lambda img, ijk: img.affine @ np.array([*ijk, 1.0])
  src_img = nib.load(src)
  # The resampled grid spans the same extent: its first voxel's outer corner is the input's.
  assert np.allclose(world(pert, (-0.5, -0.5, -0.5)), world(src_img, (-0.5, -0.5, -0.5)))
  delta = np.asarray(pert.dataobj, np.float64)
  assert np.sqrt((delta ** 2).sum()) <= eps * (1 + 1e-4)
  assert entry['perturbation_norm'] == pytest.approx(np.sqrt((delta ** 2).sum()), rel=1e-4)
  attacked = np.asarray(nib.load(entry['files']['attacked']).dataobj)
  assert attacked.shape == (24, 18, 16)


def test_2d_model_predicts_volumes_slice_by_slice(runs, tmp_path):
  config, workdir = runs['v2']
  rng = np.random.default_rng(1)
  src = write(tmp_path / 'vol.nii.gz', rng.normal(size=(20, 12, 5)), (1.0, 1.0, 3.0))
  record = predict.predict_volumes(config, str(workdir), str(src), str(tmp_path / 'out'),
                                   attack='pgd', eps=0.5, norm='linf', steps=2)
  entry = record['volumes'][0]
  assert nib.load(entry['files']['pred']).shape == (20, 12, 5)
  delta = np.asarray(nib.load(entry['files']['perturbation']).dataobj)
  assert delta.shape == (20, 12, 5) and np.abs(delta).max() <= 0.5 + 1e-6
  # 20 > the 16-pixel patch along X: the cropped-away rows are never perturbed.
  assert np.abs(delta[:2]).max() == 0 and np.abs(delta[-2:]).max() == 0


def test_bad_input_is_one_error_line(runs, tmp_path):
  from robust_med.errors import DataError
  config, workdir = runs['v3']
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(DataError, match='holds no NIfTI'):
    predict.predict_volumes(config, str(workdir), str(empty), str(tmp_path / 'o'))
  proc = subprocess.run([sys.executable, '-m', 'robust_med.predict', f'--workdir={workdir}',
                         f'--input={empty}', f'--output={tmp_path / "o"}', '--attack=pgd'],
                        capture_output=True, text=True)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and '--eps' in lines[0], lines
