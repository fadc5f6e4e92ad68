"""Alignment of saliency with annotation masks against hand-worked examples, and the paired
statistics against scipy and hand-worked values."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from robust_med import alignment, stats
from robust_med.errors import ConfigError

# A 4×4 map with distinct values and a mask of 3 pixels.
SALIENCY = np.array([[16, 15, 2, 1],
                     [14, 3, 4, 5],
                     [6, 7, 8, 9],
                     [10, 11, 12, 13]], np.float64)
MASK = np.zeros((4, 4), bool)
MASK[0, 0] = MASK[0, 1] = MASK[3, 3] = True


def test_top_k_region_holds_the_most_salient_pixels_and_breaks_ties_in_raster_order():
  region = alignment.top_k_region(SALIENCY, 25)  # 4 of 16 pixels: 16, 15, 14, 13.
  expected = np.zeros((4, 4), bool)
  expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[3, 3] = True
  np.testing.assert_array_equal(region, expected)
  flat = alignment.top_k_region(np.zeros((2, 3)), 50)
  np.testing.assert_array_equal(flat, [[True, True, True], [False, False, False]])
  assert alignment.top_k_region(SALIENCY, 1).sum() == 1  # At least one pixel.
  assert alignment.top_k_region(SALIENCY, 100).all()


def test_metrics_of_a_hand_worked_map():
  m = alignment.image_metrics(SALIENCY, MASK, (25, 12.5))
  # Top 25 %: 4 pixels, 3 in the mask: IoU 3 / 4, Dice 6 / 7.
  assert m['iou@25'] == pytest.approx(3 / 4) and m['dice@25'] == pytest.approx(6 / 7)
  # Top 12.5 %: 16 and 15, both in the mask: IoU 2 / 3, Dice 4 / 5.
  assert m['iou@12.5'] == pytest.approx(2 / 3) and m['dice@12.5'] == pytest.approx(4 / 5)
  assert m['pointing'] == 1.0  # The maximum, 16, is in the mask.
  assert m['energy'] == pytest.approx((16 + 15 + 13) / SALIENCY.sum())
  # AUC: mask values {16, 15, 13} vs the 13 others (1–12, 14): 13 beats 12, 16 and 15 all 13.
  assert m['auc'] == pytest.approx((13 + 13 + 12) / (3 * 13))


def test_a_map_pointing_outside_or_flat_or_zero():
  outside = np.zeros((4, 4))
  outside[2, 2] = 1.0
  m = alignment.image_metrics(outside, MASK, (25,))
  assert m['pointing'] == 0.0 and m['energy'] == 0.0
  zero = alignment.image_metrics(np.zeros((4, 4)), MASK, (25,))
  assert zero['pointing'] == 0.0 and zero['energy'] == 0.0 and zero['auc'] == 0.5
  inverted = alignment.image_metrics(-SALIENCY, MASK, (25,))
  assert inverted['auc'] == pytest.approx(1 - (13 + 13 + 12) / (3 * 13))


def test_alignment_metrics_per_image_and_empty_masks_flagged():
  maps = np.stack([SALIENCY, SALIENCY.T])
  masks = np.stack([MASK, MASK.T])
  out = alignment.alignment_metrics(maps, masks, (25,))
  assert list(out) == alignment.metric_names((25,))
  np.testing.assert_allclose(out['iou@25'], [0.75, 0.75])
  np.testing.assert_array_equal(alignment.annotated(np.stack([MASK, np.zeros((4, 4))])),
                                [True, False])


@pytest.mark.parametrize('top_k', [(0,), (150,), (-5, 10), ()])
def test_k_outside_0_100_is_a_config_error(top_k):
  with pytest.raises(ConfigError, match=r'\(0, 100\]'):
    alignment.check_top_k(top_k)


def test_map_agreement_of_identical_and_reversed_maps():
  maps = np.stack([SALIENCY, SALIENCY])
  same = alignment.map_agreement(maps, maps, 25)
  np.testing.assert_allclose(same['spearman'], [1, 1])
  np.testing.assert_allclose(same['iou@25'], [1, 1])
  rev = alignment.map_agreement(maps, -maps, 25)
  np.testing.assert_allclose(rev['spearman'], [-1, -1])
  np.testing.assert_allclose(rev['iou@25'], [0, 0])


RNG = np.random.default_rng(0)
A = RNG.uniform(size=40)
B = A + RNG.normal(0.05, 0.1, size=40)


def test_paired_tests_equal_scipy_and_effect_sizes_hold():
  r = stats.paired_comparison(A, B, n_resamples=2000)
  assert r['wilcoxon_p'] == scipy_stats.wilcoxon(B, A).pvalue
  assert r['t_p'] == scipy_stats.ttest_rel(B, A).pvalue
  d = B - A
  assert r['mean_diff'] == pytest.approx(d.mean())
  assert r['cohens_dz'] == pytest.approx(d.mean() / d.std(ddof=1))
  lo, hi = r['mean_diff_ci']
  assert lo < d.mean() < hi and hi - lo < 0.1
  lo, hi = r['cohens_dz_ci']
  assert lo < r['cohens_dz'] < hi
  swapped = stats.paired_comparison(B, A, n_resamples=2000)
  assert swapped['mean_diff'] == pytest.approx(-r['mean_diff'])
  assert swapped['wilcoxon_p'] == pytest.approx(r['wilcoxon_p'])


def test_paired_tests_of_hand_worked_samples():
  # Five positive differences: the exact two-sided Wilcoxon p is 2 / 2^5; t = mean / (sd / √n).
  a = np.zeros(5)
  b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  r = stats.paired_comparison(a, b, n_resamples=500)
  assert r['wilcoxon_p'] == pytest.approx(2 / 32)
  t = 3.0 / (np.std(b, ddof=1) / np.sqrt(5))
  assert r['t_statistic'] == pytest.approx(t)
  assert r['t_p'] == pytest.approx(2 * scipy_stats.t.sf(t, df=4))


def test_identical_samples_give_no_test_and_say_why():
  r = stats.paired_comparison(A, A, n_resamples=200)
  assert np.isnan(r['wilcoxon_p']) and np.isnan(r['t_p'])
  assert 'zero' in r['note'] and r['mean_diff'] == 0


def test_holm_adjustment_by_hand():
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  out = stats.holm([0.5, np.nan, 0.01])
  assert np.isnan(out[1])
  np.testing.assert_allclose(out[[0, 2]], [0.5, 0.02])
  np.testing.assert_allclose(stats.holm([0.9, 0.8]), [1.0, 1.0])  # Monotone, capped at 1.
