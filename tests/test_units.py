"""Tests for robust_med.units: budgets stated in a paper's units and converted to the model's."""

from __future__ import annotations

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks, config_base, evaluate, units
from robust_med.errors import ConfigError
from robust_med.presets import landmarks as ceph_presets

CEPH_PAPER = (3, 200, 160)  # The AMAT authors' cephalograms: 3 × 200 × 160 in [-1, 1].


@pytest.mark.parametrize('norm', ['l2', 'linf'])
@pytest.mark.parametrize('model_shape', [(200, 160, 1), (96, 80, 1), (48, 48, 2)])
def test_conversion_round_trips(norm, model_shape):
  levels = (0.0, 0.5, 1.0, 3.0, 5.0)
  there = units.to_model(levels, norm, model_shape, CEPH_PAPER, 2.0)
  np.testing.assert_allclose(units.to_paper(there, norm, model_shape, CEPH_PAPER, 2.0), levels)
  assert units.to_paper(units.to_model(2.5, norm, model_shape, CEPH_PAPER, 2.0), norm,
                        model_shape, CEPH_PAPER, 2.0) == pytest.approx(2.5)


def test_landmark_factors_by_hand():
  # L2: √(n_model / n_paper) / r with r = 2 ([-1, 1] against [0, 1]).
  assert units.model_per_paper('l2', (200, 160, 1), CEPH_PAPER, 2.0) == pytest.approx(
      np.sqrt(1 / 3) / 2)                                                        # 0.289
  assert units.model_per_paper('l2', (96, 80, 1), CEPH_PAPER, 2.0) == pytest.approx(
      np.sqrt(96 * 80 / (3 * 200 * 160)) / 2)                                    # 0.141
  # L∞ is per value: only the intensity span counts.
  assert units.model_per_paper('linf', (96, 80, 1), CEPH_PAPER, 2.0) == pytest.approx(0.5)
  # Same input, same units: no change.
  assert units.model_per_paper('l2', (320, 320, 2), (2, 320, 320), 1.0) == 1.0


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_an_attack_at_a_paper_budget_has_the_papers_per_pixel_size(norm):
  """An attack at ε_paper converted to this model's input moves each pixel, relative to the
  intensity range, as much as the same attack at ε_paper on the paper's input (the same image as
  the authors feed it: 3 channels, scaled to [-1, 1])."""
  rng = np.random.default_rng(0)
  h, w = 24, 20
  x = jnp.asarray(rng.uniform(size=(1, h, w, 1)), jnp.float32)      # ours: 1 channel in [0, 1]
  x_paper = jnp.tile(2 * x - 1, (1, 1, 1, 3))                         # theirs: 3 channels, [-1, 1]
  weights = jnp.asarray(rng.normal(size=(h, w, 3)), jnp.float32)
  loss_paper = lambda z: jnp.sum(z * weights, axis=(1, 2, 3))
  # The same linear function of the image in our representation.
  loss_model = lambda z: loss_paper(jnp.tile(2 * z - 1, (1, 1, 1, 3)))
  eps_paper = 3.0
  eps_model = units.to_model(eps_paper, norm, (h, w, 1), (3, h, w), 2.0)
  settings = dict(norm=norm, steps=10, step_size=2.5 * eps_paper / 10)
  delta_paper = attacks.pgd(loss_paper, x_paper, eps_paper, **settings) - x_paper
  settings['step_size'] = 2.5 * eps_model / 10
  delta_model = attacks.pgd(loss_model, x, eps_model, **settings) - x
  size = (lambda d, span: float(jnp.sqrt(jnp.mean(d ** 2))) / span) if norm == 'l2' else (
      lambda d, span: float(jnp.max(jnp.abs(d))) / span)
  assert size(delta_model, 1.0) == pytest.approx(size(delta_paper, 2.0), rel=1e-4)
  # And the budget was used: the model's perturbation has norm ε_model.
  assert float(attacks.perturbation_norm(delta_model, norm)[0]) == pytest.approx(eps_model,
                                                                                 rel=1e-4)


def test_resolve_converts_every_budget_once_and_reports_both():
  c = ceph_presets.ceph_config('amat', 'cpu')
  assert c.units.budgets == 'paper'
  f = units.model_per_paper('l2', (96, 80, 1), tuple(c.units.paper_shape),
                            c.units.paper_per_model_intensity)
  r = units.resolve(c, (96, 80, 1))
  assert r.units.budgets == 'model' and c.units.budgets == 'paper'  # The given config is kept.
  np.testing.assert_allclose(r.eval.noise_levels, np.asarray(c.eval.noise_levels) * f)
  assert r.method.delta_eps == pytest.approx(c.method.delta_eps * f)
  assert r.method.max_margin == pytest.approx(c.method.max_margin * f)
  assert units.resolve(r, (96, 80, 1)) is r                          # Already in model units.
  rep = units.report(r)
  assert rep['noise_levels_paper'] == list(c.eval.noise_levels)
  assert rep['model_per_paper'] == pytest.approx(f)
  assert units.report(c) == {}


def test_units_are_validated():
  c = config_base.base_config()
  c.units.budgets = 'pixels'
  with pytest.raises(ConfigError, match='units.budgets'):
    config_base.validate(c)
  c.units.budgets = 'paper'
  with pytest.raises(ConfigError, match='paper_shape'):
    config_base.validate(c)
  c.units.paper_shape, c.units.paper_per_model_intensity = (3, 200, 160), 0.0
  with pytest.raises(ConfigError, match='paper_per_model_intensity'):
    config_base.validate(c)


def test_landmark_paper_protocol_clamps_every_attack_to_the_input_range():
  """The authors clamp their attacks to the input range; the paper protocol does too: the
  training attack and both evaluation attacks carry the clip, and a PGD at a budget far past the
  range stays in [0, 1]."""
  c = ceph_presets.ceph_config('amat', 'cpu')
  assert tuple(c.attack.clip) == (0.0, 1.0)
  built = evaluate.evaluation_attacks(c.eval, c.attack.clip)
  assert [a.clip for a in built] == [(0.0, 1.0)] * len(built)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 8, 8, 1)), jnp.float32)
  loss = lambda z: jnp.sum(z, axis=(1, 2, 3))
  x_adv = built[0](loss, x, 50.0, jax.random.key(0))
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float(jnp.max(jnp.abs(x_adv - x))) > 0.1
