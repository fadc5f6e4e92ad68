"""Patch sampling: the foreground fraction, centring and clipping, uniform random starts, seeds."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from robust_med.data.patches import (crop, foreground_voxels, forced_count, patch_start,
                                     sample_starts)
from robust_med.errors import ConfigError, DataError


def _inside(starts, shape, patch):
  starts = np.asarray(starts)
  return bool(np.all(starts >= 0) and np.all(starts + np.array(patch) <= np.array(shape)))


def _centred_on_foreground(label, start, patch):
  """The foreground voxels of `label` that a forced patch at `start` may have been centred on: in
  the patch, and at index patch // 2 along every axis unless the start was clipped there (then
  on the clipped side of index patch // 2)."""
  shape = np.array(label.shape)
  start, patch = np.asarray(start), np.asarray(patch)
  voxels = np.argwhere(label > 0)
  offset = voxels - start
  centred = offset == patch // 2
  low = (start == 0) & (offset < patch // 2) & (offset >= 0)
  high = (start == shape - patch) & (offset > patch // 2) & (offset < patch)
  return [tuple(v) for v in voxels[np.all(centred | low | high, axis=1)]]


@pytest.mark.parametrize('batch, fraction, forced', [(2, 0.33, 1), (6, 0.33, 2)])
def test_the_share_of_patches_with_foreground_is_the_forced_share_plus_random_hits(
    batch, fraction, forced):
  shape, patch = (36, 40, 44), (20, 24, 28)
  label = np.zeros(shape, np.int32)
  label[3:6, 5:8, 36:39] = 2  # a small cube near a corner, far from the centre
  # p_random exactly: the share of all valid starts whose patch holds a cube voxel.
  ranges = [range(s - p + 1) for s, p in zip(shape, patch)]
  per_axis = [[label.any(axis=tuple(a for a in range(3) if a != d))[s:s + p].any() for s in r]
              for d, (r, p) in enumerate(zip(ranges, patch))]
  hits = sum(all(per_axis[d][s[d]] for d in range(3)) for s in itertools.product(*ranges))
  p_random = hits / math.prod(len(r) for r in ranges)
  assert p_random == pytest.approx(6 * 8 * 8 / 17 ** 3)  # the cube by hand: 6, 8, 8 of 17 starts
  assert forced_count(batch, fraction) == forced

  rng = np.random.default_rng(7)
  fg = [foreground_voxels(label)]
  n_batches = 3000 // batch
  got = []
  for _ in range(n_batches):
    starts = sample_starts([shape], fg, patch, [0] * batch, fraction, rng)
    assert _inside(starts, shape, patch)
    got.append([crop(label, s, patch).any() for s in starts])
  got = np.array(got)
  assert got[:, batch - forced:].all()  # the last `forced` samples of every batch
  share = got.mean()
  forced_share = forced / batch
  expected = forced_share + (1 - forced_share) * p_random
  n_random = n_batches * (batch - forced)
  sd = math.sqrt(n_random * p_random * (1 - p_random)) / got.size
  assert share >= fraction
  assert abs(share - expected) <= 4 * sd, (share, expected, sd)
  # Random samples alone hit the cube at the random rate (4 sd), not more.
  random_share = got[:, :batch - forced].mean()
  assert abs(random_share - p_random) <= 4 * math.sqrt(p_random * (1 - p_random) / n_random)


def test_forced_patches_are_centred_on_a_foreground_voxel_unless_clipped():
  rng = np.random.default_rng(3)
  patch = (8, 10, 6)
  shapes = [(20, 24, 16), (16, 16, 16), (9, 12, 6), (12, 12, 12)]
  labels = [np.zeros(s, np.int32) for s in shapes]
  labels[0][0, 0, 0] = labels[0][19, 23, 15] = labels[0][10, 12, 8] = labels[0][3, 20, 1] = 1
  labels[1][15, 2, 7] = labels[1][4, 4, 4] = 3
  labels[2][rng.random((9, 12, 6)) < 0.03] = 1
  # labels[3] has no foreground: its forced samples fall back to random starts.
  fg = [foreground_voxels(label) for label in labels]
  assert [len(f) for f in fg[:2]] == [4, 2] and len(fg[3]) == 0
  used = [set() for _ in shapes]
  empty_starts = set()
  for _ in range(400):
    cases = rng.integers(0, len(shapes), size=4)
    starts = sample_starts(shapes, fg, patch, cases, 0.5, rng)  # samples 2 and 3 forced
    for i, (case, start) in enumerate(zip(cases, starts)):
      assert _inside(start, shapes[case], patch)
      if i < 2:
        continue
      if case == 3:
        empty_starts.add(tuple(start))
        continue
      assert crop(labels[case], start, patch).any()
      candidates = _centred_on_foreground(labels[case], start, patch)
      assert candidates, (case, start)
      used[case].update(candidates)
  # Every foreground voxel is drawn as a centre some time, and the corners were clipped.
  for case in range(3):
    assert used[case] == {tuple(v) for v in np.argwhere(labels[case] > 0)}
  assert len(empty_starts) > 10


def test_clipping_at_the_border_by_hand():
  rng = np.random.default_rng(0)
  before = rng.bit_generator.state
  one_d = [patch_start((10,), (4,), rng, centre=(c,)).tolist() for c in range(10)]
  assert one_d == [[0], [0], [0], [1], [2], [3], [4], [5], [6], [6]]  # c − 2, within [0, 6]
  assert patch_start((10,), (5,), rng, centre=(5,)).tolist() == [3]  # odd: exactly the middle
  assert patch_start((10, 8), (4, 6), rng, centre=(1, 7)).tolist() == [0, 2]
  assert patch_start((10, 8), (4, 6), rng, centre=(9, 0)).tolist() == [6, 0]
  assert patch_start((10, 8), (4, 6), rng, centre=(5, 4)).tolist() == [3, 1]
  assert patch_start((4, 6), (4, 6), rng, centre=(3, 5)).tolist() == [0, 0]
  assert rng.bit_generator.state == before  # centring draws nothing
  with pytest.raises(ValueError, match='not a voxel'):
    patch_start((10, 8), (4, 6), rng, centre=(10, 0))


def test_random_starts_are_uniform_over_all_valid_starts():
  rng = np.random.default_rng(11)
  starts = np.array([patch_start((12,), (5,), rng)[0] for _ in range(8000)])
  counts = np.bincount(starts, minlength=9)
  assert counts[8] == 0 and starts.min() == 0 and starts.max() == 7  # 8 valid starts, 0..7
  assert stats.chisquare(counts[:8]).pvalue > 1e-3
  # 2-D joint, through sample_starts with no forcing: 4 × 3 = 12 valid starts.
  shape, patch = (6, 7), (3, 5)
  fg = [np.array([[0, 0]], np.int32)]
  starts = np.concatenate([sample_starts([shape], fg, patch, [0] * 8, 0.0, rng)
                           for _ in range(1200)])
  assert _inside(starts, shape, patch)
  counts = np.zeros((4, 3), int)
  np.add.at(counts, (starts[:, 0], starts[:, 1]), 1)
  assert counts.min() > 0
  assert stats.chisquare(counts.ravel()).pvalue > 1e-3
  # A volume the size of the patch has one start.
  assert patch_start((5, 6, 7), (5, 6, 7), rng).tolist() == [0, 0, 0]


def test_the_same_seed_gives_the_same_starts():
  shapes = [(30, 20, 10), (25, 25, 12)]
  labels = [np.zeros(s, np.int8) for s in shapes]
  labels[0][5:9, 3:5, 2:4] = 1
  labels[1][20:24, 1:4, 8:12] = 2
  fg = [foreground_voxels(label) for label in labels]
  run = lambda seed: [sample_starts(shapes, fg, (8, 8, 8), [0, 1, 1, 0, 1], 0.33,
                                    np.random.default_rng(seed)) for _ in range(5)]
  a, b, c = run(5), run(5), run(6)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  assert a[0].shape == (5, 3) and a[0].dtype == np.int64


def test_foreground_voxels_are_capped_foreground_coordinates():
  rng = np.random.default_rng(1)
  label = (rng.random((20, 30, 10)) < 0.1).astype(np.int32) * rng.integers(1, 4, (20, 30, 10))
  every = np.argwhere(label > 0)
  assert len(every) > 500
  few = foreground_voxels(label, max_voxels=100, rng=np.random.default_rng(2))
  assert few.shape == (100, 3) and few.dtype == np.int32
  assert len({tuple(v) for v in few}) == 100  # no repeats
  assert np.all(label[tuple(few.T)] > 0)
  assert np.array_equal(foreground_voxels(label, 100), foreground_voxels(label, 100))  # rng=None
  assert not np.array_equal(few, foreground_voxels(label, 100, rng=np.random.default_rng(3)))
  assert np.array_equal(foreground_voxels(label), every)  # under the cap: all of them
  assert np.array_equal(foreground_voxels(label, max_voxels=len(every)), every)
  assert foreground_voxels(np.zeros((4, 5), np.int32)).shape == (0, 2)
  label2d = np.zeros((4, 5), np.int32)
  label2d[1, 3] = 1
  label2d[3, 0] = -1  # not foreground
  assert foreground_voxels(label2d).tolist() == [[1, 3]]
  with pytest.raises(ConfigError, match='max_voxels'):
    foreground_voxels(label, max_voxels=0)


def test_forced_count_by_hand():
  # nnU-Net's rule: samples from index round(B·(1 − p)) on are forced.
  assert forced_count(2, 0.33) == 1   # nnU-Net's 3-D batch: round(1.34) = 1, one of two
  assert forced_count(12, 0.33) == 4  # round(8.04) = 8
  assert forced_count(6, 0.33) == 2   # round(4.02) = 4
  assert forced_count(4, 0.33) == 1   # round(2.68) = 3
  assert forced_count(3, 1 / 3) == 1
  assert forced_count(1, 0.33) == 0   # round(0.67) = 1: a batch of one is never forced
  assert forced_count(100, 0.07) == 7
  assert forced_count(10, 0.5) == 5
  assert forced_count(4, 0.0) == 0
  assert forced_count(4, 1.0) == 4


def test_crop_keeps_channels():
  array = np.arange(10 * 12 * 3).reshape(10, 12, 3)
  patch = crop(array, np.array([2, 7]), (4, 5))
  assert patch.shape == (4, 5, 3)
  assert np.array_equal(patch, array[2:6, 7:12])
  assert crop(array, (0, 0, 1), (10, 12, 2)).shape == (10, 12, 2)
  with pytest.raises(ValueError, match='outside'):
    crop(array, (7, 0), (4, 5))


def test_errors_name_the_problem_and_the_fix():
  rng = np.random.default_rng(0)
  with pytest.raises(DataError, match=r'shape \(10, 40\) is smaller than the patch \(16, 16\).*'
                                      r'pad or resample.*data\.patch_size'):
    patch_start((10, 40), (16, 16), rng)
  with pytest.raises(DataError, match='smaller than the patch'):  # forced samples too
    sample_starts([(10, 40)], [np.array([[5, 5]])], (16, 16), [0], 1.0, rng)
  with pytest.raises(ConfigError, match='one size per spatial axis'):
    patch_start((10, 40, 8), (8, 8), rng)
  with pytest.raises(ConfigError, match='at least 1'):
    patch_start((10, 40), (0, 8), rng)
  for bad in (-0.1, 1.5, float('nan')):
    with pytest.raises(ConfigError, match=r'outside \[0, 1\]'):
      forced_count(4, bad)
    with pytest.raises(ConfigError, match=r'outside \[0, 1\]'):
      sample_starts([(10, 10)], [np.zeros((0, 2))], (4, 4), [], bad, rng)
  with pytest.raises(ConfigError, match='batch size'):
    forced_count(0, 0.33)
  with pytest.raises(ValueError, match='not among'):
    sample_starts([(10, 10)], [np.zeros((0, 2))], (4, 4), [1], 0.5, rng)
