"""Tests for robust_med.ranges and the range table of every config key: stated once, checked at
start-up, with the conventions for edge values (0 = all) kept and everything else refused."""

from __future__ import annotations

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import pytest

from robust_med import config_base, ranges
from robust_med.errors import ConfigError
from robust_med.tasks import get_task_class

HEADS = ('segmentation', 'landmarks', 'detection', 'classification')


def _numeric(value) -> bool:
  values = value if isinstance(value, (tuple, list)) else (value,)
  return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                              for v in values)


@pytest.mark.parametrize('head', HEADS)
def test_every_numeric_key_states_its_range(head):
  """A numeric key added without a range fails here: the table is the one place it is stated."""
  declared = {**config_base.RANGES, **get_task_class(head).config_ranges()}
  keys = config_base.flat_keys(config_base.task_config(head))
  missing = sorted(k for k, v in keys.items() if _numeric(v) and k not in declared)
  assert not missing, missing
  assert not sorted(set(get_task_class(head).config_ranges()) - set(keys))  # no stale entries


@pytest.mark.parametrize('head', HEADS)
def test_defaults_lie_in_their_ranges(head):
  config_base.validate(config_base.task_config(head))


def test_range_bounds_and_wording():
  r = ranges.Range(0, 1, open_hi=True)
  assert r.holds(0) and r.holds(0.5) and not r.holds(1) and not r.holds(-1e-9)
  assert not r.holds(float('nan')) and not r.holds(True) and not r.holds('0.5')
  assert str(r) == 'in [0, 1)' and str(ranges.Range(1)) == '≥ 1'
  assert str(ranges.Range(0, open_lo=True)) == '> 0' and str(ranges.Range()) == ''
  assert ranges.Range().holds(-3.0) and not ranges.Range().holds(float('inf'))


@pytest.mark.parametrize('head,key,value,words', [
    ('segmentation', 'eval.max_samples', -1, r'≥ 0 \(0 = every sample of the split\)'),
    ('segmentation', 'interpret.max_samples', -1, '0 = every annotated image'),
    ('segmentation', 'interpret.figure_images', -1, '0 = no figure'),
    ('segmentation', 'eval.noise_levels', (0.0, float('nan')), 'each value must be a finite'),
    ('segmentation', 'data.val_fraction', 1.0, r'in \[0, 1\)'),
    ('segmentation', 'interpret.confidence', 1.0, r'in \(0, 1\)'),
    ('segmentation', 'optimizer.learning_rate', 0.0, '> 0'),
    ('segmentation', 'shift.severities', (1, 6), r'in \[1, 5\]'),
    ('landmarks', 'landmarks.vote_threshold', 1.0, 'heatmap probability'),
    ('landmarks', 'data.val_count', -1, 'no val/test carved'),
    ('detection', 'detection.nms_iou', 1.5, r'in \[0, 1\)'),
    ('detection', 'data.max_boxes', 0, '≥ 1'),
    ('classification', 'model.stem_stride', 0, '≥ 1'),
])
def test_out_of_range_values_are_one_line_naming_key_value_and_range(head, key, value, words):
  c = config_base.task_config(head)
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=words) as e:
    config_base.validate(c)
  assert f'config.{key} = ' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.parametrize('head,key,value,words', [
    ('segmentation', 'method.name', 'madry', "'madry' is not one of std, sat, amat"),
    ('segmentation', 'eval.attacks', ('pgd', 'fab'), "'fab' is not one of pgd, apgd"),
    ('segmentation', 'eval.norm', 'l1', "'l1' is not one of l2, linf"),
    ('landmarks', 'landmarks.decoder', 'mean', "'mean' is not one of vote, argmax"),
    ('classification', 'classification.class_weights', 'inverse', 'none, balanced'),
])
def test_unknown_choices_list_the_accepted_names(head, key, value, words):
  c = config_base.task_config(head)
  section, name = key.split('.')
  c[section][name] = value
  with pytest.raises(ConfigError, match=words):
    config_base.validate(c)


def test_a_head_may_widen_a_base_range():
  """The detector's CSP blocks may have no bottleneck (the detection notebook's fast mode); the
  U-Net needs depth ≥ 1."""
  c = config_base.task_config('detection')
  c.model.depth = 0
  config_base.validate(c)
  c = config_base.task_config('segmentation')
  c.model.depth = 0
  with pytest.raises(ConfigError, match='model.depth = 0'):
    config_base.validate(c)


def test_zero_keeps_its_documented_meaning():
  c = config_base.task_config('segmentation')
  c.eval.max_samples = 0
  c.interpret.figure_images = 0
  c.interpret.max_samples = 0
  config_base.validate(c)
