"""Tests for the presets' protocols: configs named after a paper's experiment follow its settings
(docs/fidelity.md), and ',robust_med' after the variant gives the library's own."""

from __future__ import annotations

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import pytest

from robust_med import config_base
from robust_med.errors import ConfigError
from robust_med.presets import detection, landmarks, segmentation


def test_segmentation_paper_protocol():
  c = segmentation.msd_config('prostate', 'amat', '')
  assert c.protocol == 'paper' and c.method.xi_mode == 'sum'
  assert (c.attack.step_size_factor, c.attack.steps, c.attack.random_start) == (4.0, 20, True)
  assert tuple(c.data.patch_size) == (320, 320) and c.batch_size == 32
  assert tuple(segmentation.msd_config('heart', 'amat', '').data.patch_size) == (320, 256)
  assert segmentation.msd_config('heart', 'amat', '').batch_size == 40
  # ξ from a trained STD model, and seed 001's copies from one, in the full-sized runs.
  assert (c.method.xi_source, c.method.xi_checkpoint) == ('checkpoint', 'runs/prostate_std')
  f = segmentation.msd_config('prostate', 'fgsm_aug', '')
  assert (f.method.fgsm_source, f.method.fgsm_checkpoint) == ('offline', 'runs/prostate_std')
  # The CPU variant keeps the rules at a smaller size; its budgets are stated for 320×320.
  cpu = segmentation.msd_config('prostate', 'amat', 'cpu')
  assert cpu.method.xi_mode == 'sum' and cpu.units.budgets == 'paper'
  assert tuple(cpu.units.paper_shape) == (2, 320, 320) and tuple(cpu.data.patch_size) == (128, 128)


def test_robust_med_protocol_keeps_the_library_settings():
  base = config_base.base_config()
  for c in (segmentation.msd_config('hippocampus', 'amat', 'cpu_long,robust_med'),
            landmarks.ceph_config('amat', 'cpu,robust_med')):
    assert c.protocol == 'robust_med'
    for key in ('method.xi_mode', 'attack.step_size_factor', 'attack.random_start',
                'attack.clip', 'units.budgets', 'method.xi_source', 'method.fgsm_source'):
      section, name = key.split('.')
      assert c[section][name] == base[section][name], key
  # Same sizes and grids as the paper protocol's config: only the protocol's settings differ.
  a = segmentation.msd_config('hippocampus', 'amat', 'cpu_long')
  b = segmentation.msd_config('hippocampus', 'amat', 'cpu_long,robust_med')
  assert a.eval.noise_levels == b.eval.noise_levels and a.data.patch_size == b.data.patch_size


def test_landmark_and_detection_paper_protocols():
  c = landmarks.ceph_config('sat', '')
  assert c.protocol == 'paper' and c.method.xi_mode == 'per_term'
  assert (c.attack.step_size_factor, c.attack.random_start) == (5.0, True)
  assert tuple(c.attack.clip) == (0.0, 1.0)
  assert (c.units.budgets, tuple(c.units.paper_shape)) == ('paper', (3, 200, 160))
  assert c.units.paper_per_model_intensity == 2.0
  # The synthetic demo has no paper image: its budgets stay in its own units.
  assert landmarks.ceph_config('amat', 'synthetic').units.budgets == 'model'
  d = detection.bccd_config('amat', '')
  assert d.protocol == 'paper' and d.detection.nms_iou == 0.5
  assert d.method.xi_mode == 'per_term' and d.method.xi_stat == 'mean+2std'


def test_unknown_protocol_is_one_clear_line():
  with pytest.raises(ConfigError, match="Unknown protocol 'faithful'.*robust_med"):
    segmentation.msd_config('prostate', 'amat', 'cpu,faithful')
  with pytest.raises(ConfigError, match='Unknown config variant'):
    landmarks.ceph_config('amat', 'gpu,paper')
  c = config_base.base_config()
  c.protocol = 'mine'
  with pytest.raises(ConfigError, match='config.protocol'):
    config_base.validate(c)
