"""The segmentation head on whole volumes (data.ndim = 3): loaders, patches, padding, attacks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

import data_paths
from robust_med import config_base, data as data_lib, evaluate, sharding
from robust_med.attacks import PGDSettings
from robust_med.errors import ConfigError, DataError
from robust_med.models.sliding import SlidingWindow
from robust_med.tasks import base, segmentation
from tiny import set_keys


def volume_config(**overrides):
  c = config_base.task_config('segmentation')
  c.data.name = 'synthetic'
  c.data.ndim = 3
  c.data.volume_shape = (16, 16, 16)
  c.data.patch_size = (8, 16, 16)
  c.data.num_train, c.data.num_val = 16, 8  # The tests' mesh has 8 devices.
  c.model.base_width, c.model.depth = 4, 2
  c.batch_size = 8
  c.progress_bar = False
  set_keys(c, overrides)
  return c


def write_case(root, name, shape, spacing, value=1, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.normal(100, 10, shape).astype(np.float32)
  label = np.zeros(shape, np.uint8)
  c = [s // 2 for s in shape]
  label[c[0] - 1:c[0] + 1, c[1] - 1:c[1] + 1, c[2] - 1:c[2] + 1] = value
  affine = np.diag([*spacing, 1.0])
  for folder, array in (('imagesTr', image), ('labelsTr', label)):
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(spacing)
    nib.save(img, str(root / folder / f'{name}.nii.gz'))


@pytest.fixture
def msd_volumes(tmp_path):
  """Four cases of different grids, one at another spacing, with train/val/test splits."""
  root = tmp_path / 'Task99_Tiny'
  (root / 'imagesTr').mkdir(parents=True)
  (root / 'labelsTr').mkdir()
  cases = {'a': ((10, 12, 8), (1.0, 1.0, 1.0)), 'b': ((9, 14, 10), (1.0, 1.0, 1.0)),
           'c': ((5, 12, 8), (2.0, 1.0, 1.0)), 'd': ((11, 11, 11), (1.0, 1.0, 1.0))}
  for i, (name, (shape, spacing)) in enumerate(cases.items()):
    write_case(root, name, shape, spacing, seed=i)
  info = {'name': 'Tiny', 'modality': {'0': 'MR'}, 'labels': {'0': 'background', '1': 'organ'},
          'training': [{'image': f'./imagesTr/{c}.nii.gz', 'label': f'./labelsTr/{c}.nii.gz'}
                       for c in cases]}
  (root / 'dataset.json').write_text(json.dumps(info))
  (root / 'splits.json').write_text(json.dumps({'train': ['a', 'c'], 'val': ['b'],
                                                'test': ['d']}))
  return root


def test_msd_volumes_resampled_padded_and_masked(msd_volumes):
  arrays, info = data_lib.load_msd_volumes(msd_volumes, 'train', spacing=(1.0, 1.0, 1.0))
  # Case c (5 × 2 mm) is resampled to 10 voxels; the common grid holds both cases.
  assert arrays['image'].shape == (2, 10, 12, 8, 1)
  assert arrays['in_image'].sum(axis=(1, 2, 3)).tolist() == [10 * 12 * 8, 10 * 12 * 8]
  assert info.spacing == (1.0, 1.0, 1.0) and info.cases == ('a', 'c')
  assert arrays['id'].tolist() == [0, 1]
  # Each volume is z-scored over its own voxels; the padding is 0 and outside `valid`.
  own = arrays['image'][0][arrays['in_image'][0]]
  assert abs(own.mean()) < 1e-3 and abs(own.std() - 1) < 1e-2
  # Every declared split loads, the unlabelled-upstream 'test' included.
  test, _ = data_lib.load_msd_volumes(msd_volumes, 'test', spacing=(1.0, 1.0, 1.0))
  assert test['image'].shape == (1, 11, 11, 11, 1)
  padded, _ = data_lib.load_msd_volumes(msd_volumes, 'val', volume_shape=(12, 16, 12))
  assert padded['image'].shape == (1, 12, 16, 12, 1)
  assert padded['in_image'].sum() == 9 * 14 * 10
  assert padded['label'][~padded['in_image']].max() == 0
  assert (padded['image'][~padded['in_image']] == 0).all()


def test_msd_volumes_refuse_what_cannot_work(msd_volumes):
  with pytest.raises(DataError, match='mixes voxel spacings'):
    data_lib.load_msd_volumes(msd_volumes, 'train')  # c is at 2 mm, a at 1 mm
  with pytest.raises(DataError, match='larger than data.volume_shape'):
    data_lib.load_msd_volumes(msd_volumes, 'val', volume_shape=(8, 8, 8))
  with pytest.raises(DataError, match='split'):
    data_lib.load_msd_volumes(msd_volumes, 'holdout')


def test_check_config_for_volumes():
  task_cls = segmentation.Task
  with pytest.raises(ConfigError, match='give 3 sizes'):
    task_cls.check_config(volume_config(**{'data.patch_size': (8, 8)}))
  with pytest.raises(ConfigError, match='smaller than'):
    task_cls.check_config(volume_config(**{'data.volume_shape': (16, 8, 16)}))
  with pytest.raises(ConfigError, match='2-D'):
    task_cls.check_config(volume_config(**{'method.augment': True}))
  task_cls.check_config(volume_config())


def test_training_batch_cuts_patches_with_foreground_share():
  config = volume_config(**{'data.foreground_fraction': 0.5})
  task = segmentation.Task(config)
  arrays, _ = task.load_split('train')
  batch = {k: v[:4] for k, v in arrays.items()}
  out = task.training_batch(batch, np.random.default_rng(0))
  assert out['image'].shape == (4, 8, 16, 16, 1) and out['label'].shape == (4, 8, 16, 16)
  assert out['id'].tolist() == batch['id'].tolist()
  # The last half is centred on foreground: the voxel at patch // 2 is foreground unless the
  # patch was clipped at the border (then foreground is still in the patch).
  for i in (2, 3):
    assert out['label'][i].any()
  again = task.training_batch(batch, np.random.default_rng(0))
  assert all(np.array_equal(out[k], again[k]) for k in out)


def test_within_image_keeps_the_padding_clean():
  x = jnp.zeros((2, 4, 4, 4, 1))
  valid = jnp.zeros((2, 4, 4, 4), bool).at[:, :2].set(True)
  moved = base.within_image({'image': x, 'in_image': valid}, x + 1.0)
  assert float(moved[:, :2].min()) == 1.0 and float(jnp.abs(moved[:, 2:]).max()) == 0.0
  assert base.within_image({'image': x}, x + 1.0) is not None


def test_whole_volume_attack_budget_per_volume_and_padding_untouched():
  config = volume_config(**{'eval.norm': 'l2'})
  task = segmentation.Task(config)
  arrays, info = task.load_split('val')
  arrays['in_image'] = arrays['in_image'].copy()
  arrays['in_image'][:, :2] = False  # Pretend the first two planes are padding.
  model = task.build_model(info)
  assert isinstance(model, SlidingWindow)
  params = model.init(jax.random.key(0), jnp.asarray(arrays['image'][:1]))['params']
  mesh = sharding.make_mesh(0)
  eps = 3.0
  for norm in ('l2', 'linf'):
    attack = PGDSettings(steps=4, norm=norm, random_start=True)
    ev = evaluate.Evaluator(task, model, mesh, attack, batch_size=8, progress=False)
    batch = sharding.put_batch(arrays, mesh)
    x_adv = np.asarray(ev.perturb(params, batch, eps, jax.random.key(1)))
    delta = x_adv - arrays['image']
    assert np.abs(delta[:, :2]).max() == 0.0  # the padding is never changed
    per_volume = (np.sqrt((delta ** 2).reshape(len(delta), -1).sum(1)) if norm == 'l2'
                  else np.abs(delta).reshape(len(delta), -1).max(1))
    assert per_volume.max() <= eps * (1 + 1e-5)
    assert per_volume.min() > 0.5 * eps  # the attack used its budget on the volume itself


def test_synthetic_volume_run_trains_on_patches_and_reports_surface_distances(tmp_path):
  from robust_med import train
  config = volume_config(**{
      'method.name': 'amat', 'method.delta_eps': 0.5, 'method.xi_warmup_epochs': 1,
      'attack.steps': 2, 'num_epochs': 2, 'log_every_steps': 1, 'checkpoint_every_steps': 2,
      'eval.noise_levels': (0.0, 1.0), 'eval.steps': 2, 'eval.apgd_steps': 2,
      'eval.weak_steps': 1, 'eval.batch_size': 8, 'eval.attacks': ('pgd',),
      'eval.masking_checks': False, 'shift.corruptions': (),
      'eval.frequency_levels': (30.0,), 'eval.frequency_steps': 2, 'eval.frequency_block': 4})
  config.lock()
  report = train.train_and_evaluate(config, str(tmp_path))
  clean = report['curves']['pgd-2'][0]
  for key in ('adi', 'tvdi', 'hd95_mm', 'asd_mm', 'hd95_mm/zone1', 'asd_mm/zone2'):
    assert np.isfinite(clean[key]), key
  assert clean['hd95_mm'] >= clean['asd_mm'] >= 0
  # VAFA's own curve, in its own unit, with the L2 bound each budget allows.
  freq = report['frequency']
  assert freq['attack']['name'] == 'vafa-2' and [r['q_max'] for r in freq['results']] == [0, 30]
  assert freq['results'][0]['adi'] == clean['adi'] and freq['results'][1]['max_l2'] > 0
  assert np.isfinite(freq['results'][1]['hd95_mm'])
  saved = json.loads((tmp_path / 'robustness.json').read_text())
  assert saved['frequency']['results'][1]['q_max'] == 30
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  margins = [r for r in records if r['type'] == 'margins']
  assert margins and sum(margins[-1]['counts']) == config.data.num_train  # one per volume


def test_real_hippocampus_volumes():
  root = data_paths.require_shared('msd_hippocampus')
  arrays, info = data_lib.load_msd_volumes(root, 'val', spacing=(1.0, 1.0, 1.0), max_volumes=3)
  assert arrays['image'].ndim == 5 and arrays['image'].shape[0] == 3
  assert info.class_names == ('background', 'Anterior', 'Posterior') or info.num_classes == 3
  assert set(np.unique(arrays['label'])) <= {0, 1, 2}
  for i in range(3):
    assert arrays['label'][i].any() and arrays['in_image'][i].sum() > 30 ** 3


def test_a_2d_checkpoint_is_refused_for_volumes(tmp_path):
  """Evaluating a 2-D run with data.ndim=3 is one error line naming the difference."""
  import subprocess
  import sys
  from robust_med import train
  from tiny import tiny_config
  train.Trainer(tiny_config('std', **{'num_epochs': 1}), str(tmp_path / 'r2')).train()
  proc = subprocess.run(
      [sys.executable, '-m', 'robust_med.evaluate', f'--workdir={tmp_path / "r2"}',
       '--config=configs/hippocampus3d_std.py:synthetic', '--config.data.num_val=8'],
      capture_output=True, text=True, cwd=data_paths.REPO_ROOT)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and 'ndim=3' in lines[0], lines


def test_slicewise_applies_the_2d_model_to_every_slice():
  from robust_med.models.sliding import SliceWise
  from robust_med.models.unet import UNet
  unet = UNet(num_classes=3, features=(4, 8))
  x = jax.random.normal(jax.random.key(0), (2, 10, 12, 6, 1))
  for axis in (0, 2):
    model = SliceWise(unet, axis=axis, multiple=2)
    params = model.init(jax.random.key(1), x)
    out = model.apply(params, x)
    assert out.shape == (2, 10, 12, 6, 3)
    i = 3
    one = jnp.take(x, i, axis=1 + axis)  # (2, ·, ·, 1): slice i of both volumes
    pad = [(0, 0)] + [(0, -n % 2) for n in one.shape[1:3]] + [(0, 0)]
    ref = unet.apply(params, jnp.pad(one, pad))[:, :one.shape[1], :one.shape[2]]
    got = jnp.take(out, i, axis=1 + axis)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_a_2d_run_evaluated_on_volumes_slice_by_slice(tmp_path):
  """model.ndim = 2 with data.ndim = 3: the 2-D checkpoint restores, and its whole-volume report
  has the volumes' metrics and a budget per volume."""
  from robust_med import train
  from tiny import tiny_config
  train.Trainer(tiny_config('std', **{'num_epochs': 1}), str(tmp_path / 'r2')).train()
  config = config_base.task_config('segmentation')
  set_keys(config, {'data.name': 'synthetic', 'data.ndim': 3, 'model.ndim': 2,
                    'data.volume_shape': (16, 16, 16), 'data.patch_size': (16, 16),
                    'data.num_train': 8, 'data.num_val': 8, 'model.base_width': 4,
                    'model.depth': 2, 'batch_size': 8, 'eval.batch_size': 8,
                    'eval.noise_levels': (0.0, 2.0), 'eval.steps': 2,
                    'eval.attacks': ('pgd',), 'eval.masking_checks': False,
                    'progress_bar': False, 'method.name': 'std'})
  config_base.validate(config)
  report = evaluate.evaluate_checkpoint(config, str(tmp_path / 'r2'), out=str(tmp_path / 'ev'))
  rows = report['curves']['pgd-2']
  assert report['num_samples'] == 8 and np.isfinite(rows[0]['hd95_mm'])
  assert rows[1]['adi'] <= rows[0]['adi'] + 1e-6
