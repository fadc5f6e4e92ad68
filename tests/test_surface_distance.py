"""Surface-distance metrics against a brute-force reference built here, hand-made spheres and
cubes, the empty-mask convention, input checks, and per-class Dice worked by hand."""

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from robust_med import surface_distance as sd


def reference_surface(mask):
  """Mask voxels with a mask-free neighbour among all 3^n - 1 (outside the image is background),
  found by shifting a padded copy: no erosion involved."""
  mask = np.asarray(mask, bool)
  padded = np.pad(mask, 1, constant_values=False)
  all_neighbours_in = np.ones_like(mask)
  for offset in itertools.product((-1, 0, 1), repeat=mask.ndim):
    window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, mask.shape))
    all_neighbours_in &= padded[window]
  return mask & ~all_neighbours_in


def reference_metrics(pred, ref, spacing):
  """hd95, hausdorff, asd by nearest-neighbour search between surface point clouds in mm."""
  points_pred = np.argwhere(reference_surface(pred)) * np.asarray(spacing)
  points_ref = np.argwhere(reference_surface(ref)) * np.asarray(spacing)
  d_pred_ref = cKDTree(points_ref).query(points_pred)[0]
  d_ref_pred = cKDTree(points_pred).query(points_ref)[0]
  return {'hd95': max(np.percentile(d_pred_ref, 95), np.percentile(d_ref_pred, 95)),
          'hausdorff': max(d_pred_ref.max(), d_ref_pred.max()),
          'asd': np.concatenate([d_pred_ref, d_ref_pred]).mean(),
          'directed': d_pred_ref}


def blob(rng, shape, sigma, quantile):
  """A blob-like mask: smoothed noise above a quantile (several lumps, some at the image edge)."""
  field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
  return field > np.quantile(field, quantile)


def ball(shape, centre, radius):
  grid = np.indices(shape, dtype=np.float64)
  return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


@pytest.mark.parametrize('shape, spacing', [((48, 40), (0.7, 2.5)),
                                            ((24, 20, 28), (1.0, 0.7, 2.5))])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_metrics_match_a_brute_force_reference_on_random_blobs(shape, spacing, seed):
  rng = np.random.default_rng(seed)
  pred = blob(rng, shape, 2.5, 0.7)
  ref = blob(rng, shape, 3.0, 0.6)
  np.testing.assert_array_equal(sd.surface(pred), reference_surface(pred))
  assert reference_surface(pred).sum() < pred.sum()  # The blobs have interiors.
  assert not np.array_equal(pred, ref)
  expected = reference_metrics(pred, ref, spacing)
  assert expected['hausdorff'] > 0
  np.testing.assert_allclose(sd.directed_distances(pred, ref, spacing), expected['directed'],
                             rtol=0, atol=1e-9)
  for name, fn in (('hd95', sd.hd95), ('hausdorff', sd.hausdorff), ('asd', sd.asd)):
    assert fn(pred, ref, spacing) == pytest.approx(expected[name], abs=1e-9), name
    assert fn(ref, pred, spacing) == pytest.approx(expected[name], abs=1e-9), name  # Symmetric.


def test_surface_includes_voxels_on_the_image_edge_and_diagonal_borders():
  mask = np.ones((5, 5), bool)
  expected = np.ones((5, 5), bool)
  expected[1:4, 1:4] = False
  np.testing.assert_array_equal(sd.surface(mask), expected)
  # A voxel whose only background neighbour is diagonal is on the surface (full connectivity).
  mask = np.ones((7, 7), bool)
  mask[0, 0] = False
  assert sd.surface(np.pad(mask, 1))[2, 2]


def test_concentric_spheres_are_three_voxels_apart_and_identical_spheres_zero():
  inner = ball((40, 40, 40), (20, 20, 20), 10)
  outer = ball((40, 40, 40), (20, 20, 20), 13)
  tolerance = math.sqrt(3)  # One voxel diagonal of discretisation error.
  for a, b in ((inner, outer), (outer, inner)):
    distances = sd.directed_distances(a, b)
    assert distances.size == sd.surface(a).sum()
    assert np.all(np.abs(distances - 3) <= tolerance)
  assert 2 <= sd.hd95(inner, outer) <= 4
  assert 2 <= sd.asd(inner, outer) <= 4
  assert sd.hausdorff(inner, outer) >= sd.hd95(inner, outer)
  for fn in (sd.hd95, sd.hausdorff, sd.asd):
    assert fn(inner, inner.copy()) == 0.0


@pytest.mark.parametrize('axis', [0, 1, 2])
@pytest.mark.parametrize('k, s', [(1, 1.0), (3, 2.5), (2, 0.7)])
def test_a_cube_shifted_by_k_voxels_is_k_times_spacing_away(axis, k, s):
  cube = np.zeros((24, 24, 24), bool)
  cube[8:16, 8:16, 8:16] = True
  shifted = np.roll(cube, k, axis=axis)
  spacing = [1.0, 1.0, 1.0]
  spacing[axis] = s
  assert sd.hausdorff(cube, shifted, spacing) == pytest.approx(k * s, abs=1e-12)
  assert sd.hausdorff(shifted, cube, spacing) == pytest.approx(k * s, abs=1e-12)
  assert 0 < sd.asd(cube, shifted, spacing) < k * s


def test_empty_masks_score_zero_together_and_the_image_diagonal_alone():
  shape, spacing = (10, 20, 30), (1.0, 0.7, 2.5)
  diagonal = math.sqrt(10 ** 2 + 14 ** 2 + 75 ** 2)
  empty = np.zeros(shape, bool)
  one = np.zeros(shape, bool)
  one[4:6, 4:6, 4:6] = True
  assert sd.image_diagonal(shape, spacing) == pytest.approx(diagonal)
  for fn in (sd.hd95, sd.hausdorff, sd.asd):
    assert fn(empty, empty, spacing) == 0.0
    assert fn(one, empty, spacing) == pytest.approx(diagonal)
    assert fn(empty, one, spacing) == pytest.approx(diagonal)
  assert sd.directed_distances(empty, one, spacing).size == 0
  np.testing.assert_allclose(sd.directed_distances(one, empty, spacing), diagonal)
  assert sd.hd95(np.zeros((3, 4)), np.ones((3, 4))) == pytest.approx(5.0)  # 2-D, unit spacing.


def test_bad_inputs_raise_value_errors_that_name_the_problem():
  a = np.zeros((8, 8, 8), bool)
  a[2:5, 2:5, 2:5] = True
  with pytest.raises(ValueError, match='same grid'):
    sd.hd95(a, a[:, :, :7])
  with pytest.raises(ValueError, match='3 values'):
    sd.asd(a, a, (1.0, 1.0))
  with pytest.raises(ValueError, match='positive'):
    sd.hausdorff(a, a, (1.0, 0.0, 1.0))
  with pytest.raises(ValueError, match='positive'):
    sd.hd95(a, a, (1.0, -2.0, 1.0))
  with pytest.raises(ValueError, match='2-D or 3-D'):
    sd.hd95(a[None], a[None])
  with pytest.raises(ValueError, match='2-D or 3-D'):
    sd.surface(np.ones(5))
  with pytest.raises(ValueError, match='same grid'):
    sd.per_class(np.zeros((4, 4), int), np.zeros((4, 5), int), [1])


def test_per_class_dice_by_hand_and_absent_classes():
  ref = np.zeros((6, 6), int)
  ref[0:2, 0:2] = 1        # 4 voxels of class 1.
  ref[3:6, 3:6] = 2        # 9 voxels of class 2.
  pred = np.zeros((6, 6), int)
  pred[0:2, 0:3] = 1       # 6 voxels, 4 overlapping: dice 2·4 / (6 + 4) = 0.8.
  pred[4:6, 4:6] = 2       # 4 voxels, all inside: dice 2·4 / (4 + 9) = 8/13.
  pred[5, 0] = 3           # Class 3 only in pred; class 4 in neither.
  results = sd.per_class(pred, ref, [1, 2, 3, 4], spacing=(1.0, 2.0))
  assert set(results) == {1, 2, 3, 4}
  assert all(set(r) == {'dice', 'hd95', 'asd'} for r in results.values())
  assert results[1]['dice'] == pytest.approx(0.8)
  assert results[2]['dice'] == pytest.approx(8 / 13)
  assert results[3] == {'dice': 0.0, 'hd95': pytest.approx(math.sqrt(36 + 144)),
                        'asd': pytest.approx(math.sqrt(36 + 144))}
  assert results[4] == {'dice': 1.0, 'hd95': 0.0, 'asd': 0.0}
  # Class 1: pred's extra column 2 is 2 mm (one voxel along axis 1) from ref's border.
  assert sd.hausdorff(pred == 1, ref == 1, (1.0, 2.0)) == pytest.approx(2.0)


@pytest.mark.parametrize('shape,spacing', [((20, 24, 18), (1.0, 1.5, 2.0)), ((30, 28), (0.7, 1.2))])
def test_batched_jax_equals_the_scipy_functions(shape, spacing):
  """`batched` (JAX, jitted) gives each class's HD95 and ASD exactly as `hd95`/`asd` do, for
  random blobs, an empty prediction and a class missing from the truth."""
  import jax
  import jax.numpy as jnp
  from scipy import ndimage
  rng = np.random.default_rng(0)
  pred, ref = np.zeros((4, *shape), np.int32), np.zeros((4, *shape), np.int32)
  for b in range(4):
    for k in (1, 2):
      for labels in (pred, ref):
        blob = ndimage.gaussian_filter(rng.normal(size=shape), 2) > 0.15
        labels[b][blob & (labels[b] == 0)] = k
  pred[1] = 0
  ref[2][ref[2] == 2] = 0
  out = jax.jit(lambda p, r: sd.batched(p, r, 3, spacing))(jnp.asarray(pred), jnp.asarray(ref))
  for b in range(4):
    for k in (1, 2):
      assert float(out['hd95'][b, k - 1]) == pytest.approx(
          sd.hd95(pred[b] == k, ref[b] == k, spacing), rel=1e-5)
      assert float(out['asd'][b, k - 1]) == pytest.approx(
          sd.asd(pred[b] == k, ref[b] == k, spacing), rel=1e-5)


def test_batched_valid_mask_is_the_volume_in_its_padding():
  """With a `valid` box inside a padded grid, the figures are those of the box alone (the
  empty-class diagonal included), whatever the padding holds."""
  import jax.numpy as jnp
  inner = np.zeros((1, 10, 12, 8), np.int32)
  inner[0, 2:6, 3:8, 2:5] = 1
  truth = np.zeros_like(inner)
  truth[0, 3:7, 3:9, 2:6] = 1
  grid = (1, 16, 16, 12)
  pad = lambda a: np.pad(a, [(0, 0), (3, 3), (2, 2), (2, 2)])
  valid = pad(np.ones_like(inner, bool))
  noisy = pad(inner)
  noisy[0, 0, 0, 0] = 1  # Padding the model predicted as foreground: left out.
  for p, r, v in ((inner, truth, None), (noisy, pad(truth), valid)):
    out = sd.batched(jnp.asarray(p), jnp.asarray(r), 2, (1.0, 1.0, 2.0), v)
    assert float(out['hd95'][0, 0]) == pytest.approx(sd.hd95(inner[0], truth[0], (1, 1, 2)),
                                                     rel=1e-5)
  empty = sd.batched(jnp.zeros(grid, jnp.int32), jnp.asarray(pad(truth)), 2, (1.0, 1.0, 2.0),
                     jnp.asarray(valid))
  assert float(empty['asd'][0, 0]) == pytest.approx(sd.image_diagonal((10, 12, 8), (1, 1, 2)))
