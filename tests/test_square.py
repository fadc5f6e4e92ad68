"""Tests for robust_med.square: the gradient-free Square attack (L∞ and L2)."""

from __future__ import annotations

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks, square

KEY = jax.random.key(0, impl='rbg')  # 'rbg' keys compile much faster than threefry on CPU.


def test_the_window_schedule_is_the_papers():
  # At a budget of 10 000 queries p halves after queries 10, 50, 200, ..., 8000.
  p = [float(square.window_fraction(i, 10000, 0.8)) for i in (0, 10, 11, 50, 51, 8000, 8001)]
  assert p == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512])
  # A smaller budget rescales the points: 1000 queries halve after 1, 5, 20, ...
  assert float(square.window_fraction(2, 1000, 0.8)) == pytest.approx(0.4)
  assert int(square.window_side(0.05, 32, 32)) == 7          # round(√(0.05 · 1024))
  assert int(square.window_side(1.0, 8, 6)) == 5             # at most min(H, W) − 1
  assert int(square.window_side(1e-6, 8, 6)) == 1            # at least 1


def _random_linear_loss(seed=0):
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(1, 8, 6, 2)), jnp.float32)
  return lambda z: jnp.sum(z * w, axis=(1, 2, 3))


@pytest.mark.parametrize('norm, eps', [('linf', [0.0, 0.05, 0.1, 0.3]), ('l2', [0.0, 0.3, 0.6, 2.0])])
def test_square_stays_in_the_budget_and_the_range_and_raises_the_loss(norm, eps):
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 8, 6, 2)), jnp.float32)
  eps = jnp.asarray(eps)
  loss = _random_linear_loss()
  x_adv = jax.jit(lambda x, e, k: square.square(loss, x, e, k, queries=200, norm=norm,
                                                clip=(0.0, 1.0)))(x, eps, KEY)
  delta = np.asarray(attacks.perturbation_norm(x_adv - x, norm))
  assert (delta <= np.asarray(eps) + 1e-5).all()
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  np.testing.assert_array_equal(np.asarray(x_adv[0]), np.asarray(x[0]))  # ε = 0: unchanged.
  gain = np.asarray(loss(x_adv) - loss(x))
  assert (gain[1:] > 0).all() and gain[3] > gain[1]


def test_square_finds_what_pgd_cannot_on_a_model_without_gradients():
  """A step-function "classifier": its loss jumps when the image's mean passes 0.6, and its
  gradient is zero everywhere. PGD cannot move; Square's random search crosses the step for most
  samples (about two in three at this budget: a random search on a plateau is a lottery, and the
  paper's schedule shrinks the windows fast at 300 queries)."""
  loss = lambda z: jnp.floor(10 * jnp.mean(z, axis=(1, 2, 3)))
  x = jnp.full((64, 8, 6, 2), 0.598)
  assert np.all(np.asarray(jax.grad(lambda z: jnp.sum(loss(z)))(x)) == 0)
  pgd = attacks.pgd(loss, x, 0.1, norm='linf', steps=20, step_size=0.025)
  np.testing.assert_array_equal(np.asarray(loss(pgd)), np.asarray(loss(x)))
  found = square.square(loss, x, 0.1, KEY, queries=300, p_init=0.3)
  assert (np.asarray(loss(found)) > np.asarray(loss(x))).mean() > 0.5
  assert float(jnp.max(jnp.abs(found - x))) <= 0.1 + 1e-6


def test_l2_square_finds_what_pgd_cannot_on_a_model_without_gradients():
  """The L2 search on a step function of a random direction w: each sample sits 0.02 below a
  step of ⟨w, x⟩; its gradient is zero everywhere, so PGD cannot move, while Square's proposals
  on the sphere of radius 0.5 cross the step. Unclipped, every perturbation has norm ε exactly."""
  rng = np.random.default_rng(4)
  w = rng.normal(size=(1, 8, 6, 2))
  w /= np.linalg.norm(w)
  x = rng.normal(size=(32, 8, 6, 2))
  x += (0.3 - 0.02 - np.sum(x * w, axis=(1, 2, 3), keepdims=True)) * w  # ⟨w, x⟩ = 0.28
  x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
  loss = lambda z: jnp.floor(jnp.sum(z * w, axis=(1, 2, 3)) / 0.1)
  assert np.all(np.asarray(jax.grad(lambda z: jnp.sum(loss(z)))(x)) == 0)
  pgd = attacks.pgd(loss, x, 0.5, norm='l2', steps=20, step_size=0.05)
  np.testing.assert_array_equal(np.asarray(loss(pgd)), np.asarray(loss(x)))
  found = square.square(loss, x, 0.5, KEY, norm='l2', queries=300)
  assert (np.asarray(loss(found)) > np.asarray(loss(x))).mean() > 0.9
  np.testing.assert_allclose(np.asarray(attacks.perturbation_norm(found - x, 'l2')), 0.5,
                             rtol=1e-4)


def test_the_meta_pseudo_gaussian_is_the_papers_shape():
  tails = square._tail_sums(12)
  u, v = jnp.arange(7)[:, None], jnp.arange(7)[None, :]
  p = np.asarray(square.meta_pattern(u, v, 7, tails, 12))
  assert np.sum(p ** 2) == pytest.approx(1.0, rel=1e-5)
  assert (p[:3] > 0).all() and (p[3:] < 0).all()       # upper half (7 // 2 rows) up, rest down
  np.testing.assert_allclose(p[:, ::-1], p, rtol=1e-6)  # symmetric across the columns
  # The peak of each half at its centre; values fall off ring by ring (Σ 1/(k+1)² from k = ring).
  assert p[1, 3] == p[:3].max() and p[5, 3] == p[3:].min()  # centres: rows 3//2, 3 + 4//2
  ring = np.asarray(square._rectangle(u, v, 3, 7, tails))
  assert ring[1, 3] == pytest.approx(1 + 1 / 4 + 1 / 9 + 1 / 16)
  assert ring[0, 0] == pytest.approx(1 / 16)
  # Outside the window: zero.
  assert float(square.meta_pattern(jnp.asarray(7), jnp.asarray(0), 7, tails, 12)) == 0.0


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_samples_are_searched_independently(norm):
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 8, 6, 2)), jnp.float32)
  loss = _random_linear_loss(3)
  both = square.square(loss, x, 0.1, KEY, queries=50, norm=norm)
  moved = x.at[1].set(1.0 - x[1])  # Another second sample changes nothing for the others.
  again = square.square(loss, moved, 0.1, KEY, queries=50, norm=norm)
  np.testing.assert_allclose(np.asarray(both[0]), np.asarray(again[0]))
  np.testing.assert_allclose(np.asarray(both[2]), np.asarray(again[2]))


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match='images'):
    square.square(lambda z: z.sum(-1), jnp.zeros((2, 5)), 0.1, KEY)
  with pytest.raises(ValueError, match='queries'):
    square.square(lambda z: z.sum((1, 2, 3)), jnp.zeros((2, 4, 4, 1)), 0.1, KEY, queries=0)


def test_square_joins_the_evaluation_attacks_in_linf_and_l2():
  from robust_med import config_base, evaluate
  from robust_med.errors import ConfigError
  c = config_base.base_config()
  c.eval.norm, c.eval.attacks, c.eval.square_queries = 'linf', ('pgd', 'apgd', 'square'), 50
  config_base.validate(c)
  built = evaluate.evaluation_attacks(c.eval, (0.0, 1.0))
  assert [a.describe()['name'] for a in built] == ['pgd-100', 'apgd-100', 'square-50']
  assert built[2].clip == (0.0, 1.0) and built[2].steps == 49
  assert built[2].p_init == 0.05 and built[2].norm == 'linf'  # the paper's for the norm
  c.eval.norm = 'l2'
  config_base.validate(c)
  assert evaluate.evaluation_attacks(c.eval)[2].p_init == 0.1
  c.eval.square_p_init = 1.5
  with pytest.raises(ConfigError, match='square_p_init'):
    config_base.validate(c)


def test_the_masking_check_flags_a_square_stronger_than_the_gradient_attacks():
  from robust_med import gradient_masking
  rows = lambda *v: [{'eps': e, 'adi': x} for e, x in zip((0.0, 0.1, 0.2), v)]
  common = dict(metric='adi', higher_is_better=True, floor=0.0, clean=0.8,
                strong='pgd-100', weak=rows(0.8, 0.6, 0.5), weak_name='pgd-20',
                random=rows(0.8, 0.79, 0.78), huge={'eps': 9.0, 'adi': 0.0})
  curves = {'pgd-100': rows(0.8, 0.6, 0.5), 'apgd-100': rows(0.8, 0.58, 0.5),
            'worst-case-gradient': rows(0.8, 0.55, 0.45)}
  # Square takes the model to 0.2 at ε = 0.2 where the gradient attacks' worst case stops at 0.45.
  masked = gradient_masking.run_checks(**common, curves=dict(curves, **{'square-1000': rows(
      0.8, 0.5, 0.2)}), gradient_free=rows(0.8, 0.5, 0.2), gradient_free_name='square-1000',
      white_box='worst-case-gradient')
  check = masked[-1]
  assert check['name'] == 'gradient_free_weaker' and not check['passed']
  assert check['figures']['largest_shortfall'] == pytest.approx(0.25)
  assert check['figures']['at_eps'] == 0.2
  (line,) = gradient_masking.warnings_for([check])
  assert 'Square included, is the robust figure' in line
  # A Square weaker than the gradient attacks passes; without Square there are four checks.
  fine = gradient_masking.run_checks(**common, curves=curves, gradient_free=rows(0.8, 0.7, 0.6),
                                     gradient_free_name='square-1000',
                                     white_box='worst-case-gradient')
  assert fine[-1]['passed']
  assert len(gradient_masking.run_checks(**common, curves=curves)) == 4
