"""Per-patch attacks (robust_med/patchwise.py): tiling, the budget split, and the evaluator's
per-patch PGD on volumes — each tile attacked alone, the volume's budget kept."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks, evaluate, methods, patchwise, sharding
from robust_med.errors import ConfigError
from robust_med.tasks import segmentation
from robust_med.tasks.base import within_image
from test_segmentation3d import volume_config


def test_tiles_cut_by_hand_and_put_back():
  a = np.random.default_rng(0).normal(size=(2, 5, 7, 3, 2)).astype(np.float32)
  tiles = np.asarray(patchwise.to_tiles(jnp.asarray(a), (2, 4, 3)))
  assert patchwise.grid((5, 7, 3), (2, 4, 3)) == (3, 2, 1)
  assert tiles.shape == (2 * 6, 2, 4, 3, 2)
  # Sample 1's tile (i, j, k) = (1, 1, 0) is its tile 2·1 + 1 = 3, row-major.
  np.testing.assert_array_equal(tiles[6 + 3][:, :3], a[1, 2:4, 4:7])
  assert np.all(tiles[6 + 3][:, 3:] == 0)  # padding past the sample's 7 rows
  last = tiles[6 + 4]  # (2, 0, 0): one plane of the sample, one of padding
  np.testing.assert_array_equal(last[:1], a[1, 4:5, 0:4])
  assert np.all(last[1:] == 0)
  np.testing.assert_array_equal(np.asarray(patchwise.from_tiles(jnp.asarray(tiles), (5, 7, 3))), a)


def test_l2_budget_split_over_tiles_keeps_the_samples_budget():
  mask = np.ones((2, 6, 6), bool)
  mask[1, :, 4:] = False  # sample 1: a third of it is padding
  batch = {'image': jnp.zeros((2, 6, 6, 1)), 'in_image': jnp.asarray(mask),
           'label': jnp.zeros((2, 6, 6), jnp.int32), 'id': jnp.arange(2)}
  tiled = patchwise.tile_batch(batch, (4, 4))
  assert tiled['image'].shape == (8, 4, 4, 1) and tiled['label'].shape == (8, 4, 4)
  np.testing.assert_array_equal(np.asarray(tiled['id']), [0] * 4 + [1] * 4)
  eps = jnp.asarray([2.0, 3.0])
  l2 = np.asarray(patchwise.tile_budgets(eps, tiled['in_image'], 4, 'l2')).reshape(2, 4)
  np.testing.assert_allclose(np.sqrt((l2 ** 2).sum(1)), [2.0, 3.0], rtol=1e-6)
  # Sample 0's tiles hold 16, 8, 8, 4 of its 36 voxels.
  np.testing.assert_allclose(l2[0], 2.0 * np.sqrt(np.array([16, 8, 8, 4]) / 36), rtol=1e-6)
  linf = np.asarray(patchwise.tile_budgets(eps, tiled['in_image'], 4, 'linf'))
  np.testing.assert_array_equal(linf, [2.0] * 4 + [3.0] * 4)
  # Without a mask, every voxel of the sample is perturbable and the tiles' padding is not.
  no_mask = patchwise.tile_batch({'image': batch['image']}, (4, 4))['in_image']
  assert int(no_mask.sum()) == 2 * 36


@pytest.fixture(scope='module')
def volumes():
  config = volume_config(**{'eval.norm': 'l2'})
  task = segmentation.Task(config)
  arrays, info = task.load_split('val')
  arrays['in_image'] = arrays['in_image'].copy()
  arrays['in_image'][:, :2] = False  # the first two planes are padding
  model = task.build_model(info)
  params = model.init(jax.random.key(0), jnp.asarray(arrays['image'][:1]))['params']
  return config, task, arrays, model, params


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_per_patch_pgd_attacks_each_tile_alone_within_the_volumes_budget(volumes, norm):
  config, task, arrays, model, params = volumes
  mesh = sharding.make_mesh(0)
  base = attacks.PGDSettings(steps=3, norm=norm)
  attack = patchwise.PerPatch(base)  # the model's training patch, (8, 16, 16): 2 tiles
  ev = evaluate.Evaluator(task, model, mesh, attack, batch_size=8, progress=False)
  assert ev.attack.patch == (8, 16, 16) and ev.attack.describe()['name'] == 'patch-pgd-3'
  eps = 3.0
  x_adv = np.asarray(ev.perturb(params, sharding.put_batch(arrays, mesh), eps, None))
  delta = x_adv - arrays['image']
  assert np.abs(delta[:, :2]).max() == 0.0  # padding never changed
  flat = delta.reshape(len(delta), -1)
  per_volume = np.sqrt((flat ** 2).sum(1)) if norm == 'l2' else np.abs(flat).max(1)
  assert per_volume.max() <= eps * (1 + 1e-5) and per_volume.min() > 0.5 * eps

  # Tile (volume 0, second half) attacked by hand: the U-Net on the tile alone, the loss on the
  # tile's labels, the tile's share of the budget.
  tile = {k: jnp.asarray(v[:1, 8:]) for k, v in arrays.items() if k != 'id'}
  n_tile, n_volume = tile['in_image'].sum(), arrays['in_image'][0].sum()
  eps_tile = eps * np.sqrt(n_tile / n_volume) if norm == 'l2' else eps
  loss_fn = lambda x: methods.total(task.loss_terms(
      model.apply({'params': params}, within_image(tile, x)), tile))
  by_hand = attacks.run_iterative(base, loss_fn, tile['image'], eps_tile)
  np.testing.assert_allclose(x_adv[:1, 8:], np.asarray(within_image(tile, by_hand)), atol=1e-5)


def test_per_patch_curve_in_the_report_and_a_model_without_patch_is_refused(volumes):
  config, task, arrays, model, params = volumes
  cfg = volume_config(**{'eval.attacks': ('pgd', 'pgd_patch'), 'eval.steps': 2,
                         'eval.noise_levels': (0.0, 2.0), 'eval.masking_checks': False})
  mesh = sharding.make_mesh(0)
  ev = evaluate.make_evaluator(task, model, mesh, cfg)
  report = evaluate.robustness_report(ev, params, dict(arrays), cfg.eval)
  assert set(report['curves']) >= {'pgd-2', 'patch-pgd-2', 'worst-case'}
  patch_row, worst_row = report['curves']['patch-pgd-2'][1], report['curves']['worst-case'][1]
  assert worst_row['adi'] <= patch_row['adi'] + 1e-9  # in the per-sample worst case
  described = [a for a in report['attacks'] if a['name'] == 'patch-pgd-2'][0]
  assert described['patch'] == [8, 16, 16]
  # A 2-D model has no training patch: one ConfigError naming the key to set.
  with pytest.raises(ConfigError, match='patch_attack_size'):
    patchwise.PerPatch(base=attacks.PGDSettings()).resolve(model.model)  # the bare U-Net


def test_impossible_tile_sizes_are_refused_at_start_up():
  from robust_med import config_base
  for bad in ((0, 4), (2.5, 4)):
    c = volume_config(**{'eval.attacks': ('pgd', 'pgd_patch')})
    c.eval.patch_attack_size = bad
    with pytest.raises(ConfigError, match='patch_attack_size'):
      config_base.validate(c)
