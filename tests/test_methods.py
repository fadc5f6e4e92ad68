"""Tests for robust_med.methods: the AMAT rule, ξ estimation, the methods' losses and gradients."""

from __future__ import annotations

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks, methods
from robust_med import config_base
from robust_med.config_base import base_config
from robust_med.errors import ConfigError

B, D = 6, 5
KEY = jax.random.key(0, impl='rbg')  # 'rbg' keys compile much faster than threefry on CPU.

# ----------------------------------------------------------------------------- helpers


def _x(seed=0):
  """A random (B, D) batch, drawn with NumPy (no threefry compile)."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=(B, D)), jnp.float32)


_W = jnp.asarray([0.7, -1.2, 0.4, 0.9, -0.5])
_V = jnp.asarray([-0.3, 0.8, 1.1, -0.6, 0.2])


def make_objective(w=_W, v=_V):
  """A tiny two-term "model": 'b_quad' = (w·x)²/2 and 'a_soft' = softplus(v·x), per sample.

  The names are deliberately not in insertion order, so the sorted order (a_soft, b_quad) matters.
  """
  def terms(x):
    return {'b_quad': 0.5 * (x @ w) ** 2, 'a_soft': jax.nn.softplus(x @ v)}

  def attack_loss(x):
    t = terms(x)
    return t['a_soft'] + t['b_quad']

  return methods.Objective(terms, attack_loss)


def _np_total(objective, x):
  t = objective.terms(x)
  return np.asarray(t['a_soft'], np.float64) + np.asarray(t['b_quad'], np.float64)


def _reference_pgd(objective, x, eps, settings, key):
  """The attack the methods should run, called through `attacks.pgd` directly."""
  eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), x.shape[:1])
  step = settings.step_size_factor * eps / settings.steps
  return attacks.pgd(objective.attack_loss, x, eps, norm=settings.norm, steps=settings.steps,
                     step_size=step, key=key if settings.random_start else None,
                     clip=settings.clip, unroll=False)


def _call(method, objective, x, margins, xi, key=KEY):
  return jax.jit(lambda x, m, xi, k: method(objective, x, m, xi, k))(x, margins, xi, key)


# ----------------------------------------------------------------------------- AMAT rule


def reference_margin_update(margins, noisy_terms, xi, norms, delta_eps):
  """AMAT's rule, one sample at a time in NumPy."""
  out = np.empty(len(margins), np.float64)
  for i in range(len(margins)):
    if all(noisy_terms[i, k] < xi[k] for k in range(len(xi))):
      out[i] = margins[i] + delta_eps
    else:
      out[i] = (norms[i] + margins[i]) / 2
  return out


def _check_rule(margins, noisy, xi, norms, delta_eps):
  got = np.asarray(methods.amat_margin_update(jnp.asarray(margins, jnp.float32),
                                              jnp.asarray(noisy, jnp.float32),
                                              jnp.asarray(xi, jnp.float32),
                                              jnp.asarray(norms, jnp.float32), delta_eps))
  want = reference_margin_update(margins, noisy, xi, norms, delta_eps)
  assert got.shape == (len(margins),)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  return got


def test_amat_rule_random_inputs_k1_and_k2():
  """The vectorised rule matches the per-sample reference on random inputs, K = 1 and 2."""
  rng = np.random.default_rng(0)
  for k in (1, 2):
    for _ in range(5):
      n = 32
      margins = rng.uniform(0, 5, n).astype(np.float32)
      noisy = rng.uniform(0, 1, (n, k)).astype(np.float32)
      xi = rng.uniform(0.2, 0.8, k).astype(np.float32)
      norms = (margins * rng.uniform(0, 1, n)).astype(np.float32)
      _check_rule(margins, noisy, xi, norms, 0.75)
      grow = (noisy < xi).all(axis=1)
      assert 0 < grow.sum() < n  # Both branches are exercised.


def test_amat_rule_ties_do_not_grow():
  """A term exactly equal to its threshold refines (strict <)."""
  margins = np.array([2.0, 2.0, 2.0, 0.0], np.float32)
  noisy = np.array([[0.5], [0.49999997], [0.50000006], [0.5]], np.float32)
  xi = np.array([0.5], np.float32)
  norms = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
  got = _check_rule(margins, noisy, xi, norms, 1.0)
  np.testing.assert_array_equal(got, [1.5, 3.0, 1.5, 0.0])


def test_amat_rule_needs_every_term_under_its_own_threshold():
  """With K = 2 a margin grows only when both terms are under their own ξ_k."""
  margins = np.full(5, 4.0, np.float32)
  xi = np.array([1.0, 10.0], np.float32)
  noisy = np.array([[0.5, 5.0],    # Both under: grow.
                    [0.5, 10.0],   # Second on its threshold: refine.
                    [1.5, 5.0],    # First over: refine.
                    [5.0, 0.5],    # Both under only if the thresholds were swapped: refine.
                    [0.9, 9.9]],   # Both just under: grow.
                   np.float32)
  norms = np.array([4.0, 2.0, 0.0, 4.0, 3.0], np.float32)
  got = _check_rule(margins, noisy, xi, norms, 0.5)
  np.testing.assert_array_equal(got, [4.5, 3.0, 2.0, 4.0, 4.5])


# ----------------------------------------------------------------------------- ξ estimation


@pytest.mark.parametrize('stat', ['mean', 'mean+2std'])
def test_estimate_xi_scalar_term(stat):
  """K = 1: ξ is the mean (plus twice the population std) of the clean losses."""
  v = np.random.default_rng(1).gamma(2.0, 0.3, 50)
  xi = methods.estimate_xi({'dice': v}, stat)
  want = v.mean() + (2 * v.std(ddof=0) if stat == 'mean+2std' else 0.0)
  assert xi.shape == (1,) and xi.dtype == np.float32
  np.testing.assert_allclose(xi, [want], rtol=1e-6)


@pytest.mark.parametrize('stat', ['mean', 'mean+2std'])
def test_estimate_xi_per_term_in_sorted_order(stat):
  """K = 2: one ξ per term, in sorted name order whatever the dict's insertion order."""
  rng = np.random.default_rng(2)
  ce, dice = rng.uniform(0, 1, 40), rng.uniform(5, 9, 40)
  one = methods.estimate_xi({'dice': dice, 'ce': ce}, stat)
  other = methods.estimate_xi({'ce': ce, 'dice': dice}, stat)
  factor = 2.0 if stat == 'mean+2std' else 0.0
  want = [ce.mean() + factor * ce.std(), dice.mean() + factor * dice.std()]
  np.testing.assert_allclose(one, want, rtol=1e-6)
  np.testing.assert_array_equal(one, other)
  if stat == 'mean+2std':  # Population std (ddof=0), not the sample std.
    sample = [ce.mean() + 2 * ce.std(ddof=1), dice.mean() + 2 * dice.std(ddof=1)]
    assert not np.allclose(one, sample, rtol=1e-6)


def test_estimate_xi_unknown_stat():
  """An unknown statistic is a ConfigError naming it."""
  with pytest.raises(ConfigError, match='median'):
    methods.estimate_xi({'ce': np.ones(3)}, 'median')


# ----------------------------------------------------------------------------- AMAT end to end


@pytest.mark.parametrize('norm,random_start,factor', [('l2', False, 2.5), ('linf', True, 1.5)])
def test_amat_end_to_end(norm, random_start, factor):
  """Amat attacks with the margins, averages clean and noisy losses and applies its rule."""
  settings = methods.AttackSettings(norm=norm, steps=3, random_start=random_start,
                                    step_size_factor=factor)
  delta_eps = 0.25
  amat = methods.Amat(delta_eps=delta_eps, attack=settings)
  objective = make_objective()
  x = _x()
  margins = jnp.asarray([0.0, 0.1, 0.3, 0.6, 1.0, 2.0], jnp.float32)

  # The expected values, computed independently of `Amat`.
  x_adv = _reference_pgd(objective, x, margins, settings, KEY)
  t = objective.terms(x_adv)
  noisy = np.stack([np.asarray(t['a_soft']), np.asarray(t['b_quad'])], axis=1)
  norms = np.asarray(attacks.perturbation_norm(x_adv - x, norm))
  np.testing.assert_allclose(norms[1:], np.asarray(margins)[1:], rtol=1e-3)  # Attack moved.
  # Thresholds halfway between sorted noisy values: no ties, and a mix of outcomes.
  xi = np.array([np.sort(noisy[:, 0])[3:5].mean(), np.sort(noisy[:, 1])[2:4].mean()], np.float32)
  under = noisy < xi
  grow = under.all(axis=1)
  assert grow.any() and not grow.all() and (under.any(axis=1) & ~grow).any(), under
  want_margins = reference_margin_update(np.asarray(margins), noisy, xi, norms, delta_eps)

  loss, new_margins, metrics = _call(amat, objective, x, margins, jnp.asarray(xi))
  np.testing.assert_allclose(new_margins, want_margins, rtol=1e-5, atol=1e-6)
  grown = np.asarray(new_margins)[grow]
  np.testing.assert_array_equal(grown, np.asarray(margins)[grow] + np.float32(delta_eps))
  want_loss = (_np_total(objective, x).mean() + _np_total(objective, x_adv).mean()) / 2
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['grow_fraction'], grow.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics['margin_mean'], np.mean(margins), rtol=1e-6)
  # Telemetry: the refined fraction and the mean change of a refined margin, by NumPy.
  np.testing.assert_allclose(metrics['refine_fraction'], 1 - grow.mean(), rtol=1e-6)
  change = (want_margins - np.asarray(margins))[~grow].mean()
  np.testing.assert_allclose(metrics['refine_delta'], change, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- other methods


def test_std_is_clean_loss():
  """Std returns the mean clean loss summed over terms, margins untouched."""
  objective = make_objective()
  x, margins = _x(), jnp.arange(B, dtype=jnp.float32)
  loss, new_margins, metrics = _call(methods.Std(), objective, x, margins, jnp.zeros(2))
  np.testing.assert_allclose(loss, _np_total(objective, x).mean(), rtol=1e-6)
  np.testing.assert_array_equal(new_margins, margins)
  np.testing.assert_allclose(metrics['clean/a_soft'],
                             np.mean(objective.terms(x)['a_soft']), rtol=1e-6)


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_sat_averages_clean_and_pgd_losses(norm):
  """Sat's loss is (L(x) + L(PGD(x, ε))) / 2 with a fixed ε; margins pass through."""
  settings = methods.AttackSettings(norm=norm, steps=3)
  eps = 0.4
  objective = make_objective()
  x, margins = _x(1), jnp.asarray([3.0, 1.0, 0.0, 2.0, 5.0, 7.0])
  loss, new_margins, _ = _call(methods.Sat(eps=eps, attack=settings), objective, x, margins,
                               jnp.zeros(2))
  # PGD with its own default step (2.5·ε/steps), which AttackSettings' default must match.
  x_adv = attacks.pgd(objective.attack_loss, x, eps, norm=norm, steps=3, unroll=False)
  clean, noisy = _np_total(objective, x).mean(), _np_total(objective, x_adv).mean()
  assert noisy > clean + 1e-3  # The attack matters, so the check below is not just L(x).
  np.testing.assert_allclose(loss, (clean + noisy) / 2, rtol=1e-5)
  np.testing.assert_array_equal(new_margins, margins)


@pytest.mark.parametrize('names,count', [(('fgsm',), 2), (('inverse_fgsm',), 2),
                                         (('fgsm', 'inverse_fgsm'), 3)])
def test_attack_augmentation_averages(names, count):
  """The augmentations average the clean loss with 1 or 2 one-step (inverse) FGSM copies."""
  eps = 0.3
  objective = make_objective()
  x, margins = _x(2), jnp.linspace(0, 1, B)
  method = methods.AttackAugmentation(eps=eps, attack_names=names)
  loss, new_margins, metrics = _call(method, objective, x, margins, jnp.zeros(2))
  losses = [_np_total(objective, x)]
  for name in names:
    x_aug = attacks.ATTACKS[name](objective.attack_loss, x, eps, norm='linf')
    np.testing.assert_allclose(np.abs(np.asarray(x_aug - x)), eps, rtol=1e-5)
    losses.append(_np_total(objective, x_aug))
  assert len(losses) == count
  np.testing.assert_allclose(loss, np.mean(sum(losses)) / count, rtol=1e-5)
  np.testing.assert_array_equal(new_margins, margins)
  for name in names:
    assert f'{name}/a_soft' in metrics and f'{name}/b_quad' in metrics


@pytest.mark.parametrize('names,shift', [(('fgsm',), 0.5), (('inverse_fgsm',), -0.5),
                                         (('fgsm', 'inverse_fgsm'), 0.0)])
def test_attack_augmentation_on_linear_loss(names, shift):
  """On L = w·x, FGSM adds ε‖w‖₁ and inverse FGSM subtracts it, so the mean shifts exactly."""
  eps = 0.2
  w = _W

  def terms(x):
    return {'lin': x @ w}

  objective = methods.Objective(terms, lambda x: x @ w)
  x = _x(3)
  loss, _, _ = _call(methods.AttackAugmentation(eps=eps, attack_names=names), objective, x,
                     jnp.zeros(B), jnp.zeros(1))
  clean = float(np.mean(np.asarray(x, np.float64) @ np.asarray(w, np.float64)))
  want = clean + shift * eps * float(np.sum(np.abs(np.asarray(w))))
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- build_method


def _configs(name, **method_overrides):
  config = base_config()
  config.method.name = name
  for k, val in method_overrides.items():
    config.method[k] = val
  return config.method, config.attack


def test_build_method_each_name():
  """Every known name builds the right class, configured from the config."""
  method_config, attack_config = _configs('std')
  assert isinstance(methods.build_method(method_config, attack_config), methods.Std)

  method_config, attack_config = _configs('sat', eps=3.0)
  attack_config.steps, attack_config.norm, attack_config.clip = 7, 'linf', (0.0, 1.0)
  sat = methods.build_method(method_config, attack_config)
  assert isinstance(sat, methods.Sat) and sat.eps == 3.0
  assert sat.attack == methods.AttackSettings(norm='linf', steps=7, step_size_factor=2.5,
                                              random_start=False, clip=(0.0, 1.0))

  method_config, attack_config = _configs('amat', delta_eps=0.5)
  attack_config.random_start, attack_config.step_size_factor = True, 1.5
  amat = methods.build_method(method_config, attack_config)
  assert isinstance(amat, methods.Amat) and amat.delta_eps == 0.5
  assert amat.attack.random_start and amat.attack.step_size_factor == 1.5
  assert amat.attack.clip is None  # The default clip=() means no clipping.
  assert amat.uses_margins and amat.needs_xi

  expected = {'fgsm_aug': ('fgsm',), 'inverse_fgsm_aug': ('inverse_fgsm',),
              'fgsm_both_aug': ('fgsm', 'inverse_fgsm')}
  for name, attack_names in expected.items():
    method_config, attack_config = _configs(name, eps=2.0, fgsm_norm='l2')
    aug = methods.build_method(method_config, attack_config)
    assert isinstance(aug, methods.AttackAugmentation)
    assert aug.attack_names == attack_names and aug.eps == 2.0 and aug.norm == 'l2'
    assert not aug.uses_margins


def test_build_method_covers_methods_list():
  """Every name in METHODS builds; an unknown one raises ConfigError naming it."""
  for name in methods.METHODS:
    method_config, attack_config = _configs(name, eps=1.0)
    if name == 'advbias':  # a physical method: a pixel attack is refused
      with pytest.raises(ConfigError, match='attack.kind'):
        methods.build_method(method_config, attack_config)
      attack_config.kind = 'bias_field'
    assert callable(methods.build_method(method_config, attack_config))
  method_config, attack_config = _configs('std')
  method_config.name = 'madry'
  with pytest.raises(ConfigError, match='madry'):
    methods.build_method(method_config, attack_config)


# ----------------------------------------------------------------------------- gradients


def test_sat_gradient_treats_attack_as_constant():
  """∇_w of Sat's loss on L = w·x is mean(x + x̃)/2: no gradient flows through the attack.

  The attack ascends (c⊙w)·x, so a gradient leaking through x̃ would add a nonzero term.
  """
  settings = methods.AttackSettings(norm='l2', steps=3)
  eps = 0.5
  c = jnp.asarray([1.0, 2.0, 0.5, 3.0, 1.5])
  x = _x(4)

  def objective_for(w):
    return methods.Objective(lambda z: {'lin': z @ w}, lambda z: z @ (c * w))

  def sat_loss(w):
    return methods.Sat(eps=eps, attack=settings)(objective_for(w), x, jnp.zeros(B), None, KEY)[0]

  grad = np.asarray(jax.jit(jax.grad(sat_loss))(_W))
  x_adv = _reference_pgd(objective_for(_W), x, eps, settings, KEY)
  want = np.mean((np.asarray(x) + np.asarray(x_adv)) / 2, axis=0)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)

  # The same loss with the attack differentiated through is measurably different.
  def leaky_loss(w):
    u = c * w
    x_tilde = x + eps * u / jnp.linalg.norm(u)  # Where PGD ends on this linear loss.
    return jnp.mean(x @ w + x_tilde @ w) / 2

  np.testing.assert_allclose(x_adv, x + eps * (c * _W) / jnp.linalg.norm(c * _W),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(np.asarray(jax.grad(leaky_loss)(_W)), want, rtol=1e-3, atol=1e-4)


def test_amat_gradient_treats_attack_as_constant():
  """The same holds for Amat, whose budgets are the (non-differentiable) margins."""
  settings = methods.AttackSettings(norm='l2', steps=3)
  c = jnp.asarray([1.0, 2.0, 0.5, 3.0, 1.5])
  x = _x(5)
  margins = jnp.linspace(0.0, 1.0, B)

  def objective_for(w):
    return methods.Objective(lambda z: {'lin': z @ w}, lambda z: z @ (c * w))

  def amat_loss(w):
    amat = methods.Amat(delta_eps=1.0, attack=settings)
    return amat(objective_for(w), x, margins, jnp.zeros(1), KEY)[0]

  grad = np.asarray(jax.jit(jax.grad(amat_loss))(_W))
  x_adv = _reference_pgd(objective_for(_W), x, margins, settings, KEY)
  want = np.mean((np.asarray(x) + np.asarray(x_adv)) / 2, axis=0)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_augmentation_gradient_treats_attack_as_constant():
  """L2 FGSM augmentation on L = w·x: ∇_w is mean(x + x̃)/2 with x̃ = x + ε·u/‖u‖, u = c⊙w."""
  eps = 0.3
  c = jnp.asarray([1.0, -2.0, 0.5, 3.0, 1.5])
  x = _x(6)

  def aug_loss(w):
    objective = methods.Objective(lambda z: {'lin': z @ w}, lambda z: z @ (c * w))
    method = methods.AttackAugmentation(eps=eps, attack_names=('fgsm',), norm='l2')
    return method(objective, x, jnp.zeros(B), None, None)[0]

  grad = np.asarray(jax.jit(jax.grad(aug_loss))(_W))
  u = np.asarray(c * _W)
  x_up = np.asarray(x) + eps * u / np.linalg.norm(u)
  want = np.mean((np.asarray(x) + x_up) / 2, axis=0)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- AMAT refine rules


def _linear_amat_setup():
  """Samples x_i = c_i·w with a unit w and one term L(z) = z·w, so L(x_i) = c_i and L crosses
  ξ = 1 at distance ε*_i = 1 − c_i along PGD's L2 direction."""
  w = jnp.asarray([0.6, 0.0, 0.8, 0.0, 0.0])
  c = jnp.asarray([0.7, 0.95, -1.0, 0.5, 1.2])
  x = c[:, None] * w[None]
  margins = jnp.asarray([1.0, 1.0, 1.0, 0.2, 1.0])
  terms = lambda z: {'lin': z @ w}
  return methods.Objective(terms, lambda z: z @ w, terms), x, margins, jnp.asarray([1.0])


def _amat(**kwargs):
  return methods.Amat(delta_eps=0.5, attack=attacks.PGDSettings(norm='l2', steps=20), **kwargs)


def test_boundary_refine_shrinks_to_the_crossing_and_paper_refine_cannot():
  objective, x, margins, xi = _linear_amat_setup()
  _, new, metrics = _call(_amat(refine='boundary'), objective, x, margins, xi)
  # Steps of 2.5·E/20 = 0.125·E. Sample 0 crosses at 0.3: first iterate 3·0.125 = 0.375.
  # Sample 1 at 0.05: 0.125. Sample 2 (ε* = 2) and sample 3 (ε* = 0.5 > E = 0.2) never cross:
  # they grow by Δε. Sample 4 is past ξ on clean data: its distance is 0.
  np.testing.assert_allclose(np.asarray(new), [0.375, 0.125, 1.5, 0.7, 0.0], atol=1e-5)
  refined = np.array([True, True, False, False, True])
  assert (np.asarray(new)[refined] <= np.asarray(margins)[refined]).all()  # Never grows.
  assert float(metrics['grow_fraction']) == pytest.approx(0.4)
  assert float(metrics['refine_delta']) == pytest.approx((-0.625 - 0.875 - 1.0) / 3, abs=1e-5)
  # The paper's rule refines to (‖x̃ − x‖ + E) / 2 with x̃ on the ball's boundary: no change.
  _, paper, _ = _call(_amat(refine='paper'), objective, x, margins, xi)
  np.testing.assert_allclose(np.asarray(paper), [1.0, 1.0, 1.5, 0.7, 1.0], atol=1e-5)


def test_max_margin_clamps():
  objective, x, margins, xi = _linear_amat_setup()
  for refine in methods.REFINE_RULES:
    _, new, _ = _call(_amat(refine=refine, max_margin=1.1), objective, x, margins, xi)
    assert float(np.max(new)) == pytest.approx(1.1) and float(np.min(new)) >= 0


def test_adv_only_correct_keeps_wrong_samples_out_of_the_noisy_loss_and_their_margins():
  objective, x, margins, xi = _linear_amat_setup()
  method = _amat(refine='boundary', adv_only_correct=True)
  loss, new, metrics = _call(method, objective, x, margins, xi)
  # Sample 4 (clean loss 1.2 ≥ ξ) keeps its margin instead of collapsing to 0.
  np.testing.assert_allclose(np.asarray(new), [0.375, 0.125, 1.5, 0.7, 1.0], atol=1e-5)
  a = method.attack
  x_adv, _, _ = attacks.boundary_pgd(lambda z: methods.stack_terms(objective.attack_terms(z)),
                                     x, margins, xi, norm='l2', steps=a.steps,
                                     step_size=a.step_size(margins, x))
  clean, noisy = np.asarray(objective.attack_loss(x)), np.asarray(objective.attack_loss(x_adv))
  want = (clean.mean() + noisy[:4].mean()) / 2
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics['correct_fraction']) == pytest.approx(0.8)


def test_refine_options_are_validated():
  c = base_config()
  c.method.refine = 'halve'
  with pytest.raises(ConfigError, match='halve'):
    config_base.validate(c)
  c.method.refine, c.method.max_margin = 'boundary', -1.0
  with pytest.raises(ConfigError, match='max_margin'):
    config_base.validate(c)


# ----------------------------------------------------------------------------- what passes ξ


def test_xi_on_the_summed_loss_grows_a_sample_the_per_term_rule_refines():
  # Clean training losses of the STD model: CE 0.2 and 0.4 (mean 0.3), Dice 0.4 and 0.6 (mean
  # 0.5); their sum has mean 0.8. A noisy sample with CE 0.2 (under its mean), Dice 0.55 (over
  # its mean), sum 0.75 (under 0.8) passes the paper's one threshold and fails the per-term test.
  clean = {'dice': np.array([0.4, 0.6]), 'ce': np.array([0.2, 0.4])}
  np.testing.assert_allclose(methods.estimate_xi(clean, 'mean', 'per_term'), [0.3, 0.5])
  np.testing.assert_allclose(methods.estimate_xi(clean, 'mean', 'sum'), [0.8])
  noisy = {'ce': jnp.asarray([0.2]), 'dice': jnp.asarray([0.55])}
  margins, norms = jnp.asarray([2.0]), jnp.asarray([2.0])
  for mode, want in (('sum', 2.5), ('per_term', 2.0)):
    xi = jnp.asarray(methods.estimate_xi(clean, 'mean', mode))
    new = methods.amat_margin_update(margins, methods.xi_values(noisy, mode), xi, norms, 0.5)
    assert float(new[0]) == pytest.approx(want), mode


def test_amat_xi_modes_end_to_end():
  # Terms that the tiny budget barely moves: sample 0 sits at CE 0.2, Dice 0.55 (as above);
  # sample 1 at CE 0.35, Dice 0.4 (CE over its ξ, sum 0.75 under). E = 1e-3, Δε = 0.5.
  w = jnp.asarray([0.6, 0.0, 0.8, 0.0, 0.0])
  base = jnp.asarray([[0.2, 0.55], [0.35, 0.4]])
  terms = lambda z: {'ce': base[:, 0] + z @ w, 'dice': base[:, 1] + z @ w}
  objective = methods.Objective(terms, lambda z: methods.total(terms(z)), terms)
  x, margins = jnp.zeros((2, 5)), jnp.full((2,), 1e-3)
  # Not grown: the paper's refine keeps E ((E + E) / 2); boundary refine drops it to the
  # crossing, 0 (the clean sample is already past a threshold).
  grown = 1e-3 + 0.5
  for mode, xi, want in (('sum', [0.8], {'paper': grown, 'boundary': grown}),
                         ('per_term', [0.3, 0.5], {'paper': 1e-3, 'boundary': 0.0})):
    for refine in methods.REFINE_RULES:
      _, new, metrics = _call(_amat(refine=refine, xi_mode=mode), objective, x, margins,
                              jnp.asarray(xi))
      np.testing.assert_allclose(np.asarray(new), [want[refine]] * 2, atol=2e-5,
                                 err_msg=f'{mode} {refine}')
      assert float(metrics['grow_fraction']) == (1.0 if mode == 'sum' else 0.0)


def test_amat_score_mode_grows_samples_scoring_above_the_mean_score():
  # outputs = x·w; one loss term; the head's score is 1 − outputs (higher is better). Training
  # scores 0.6 and 0.8: ξ holds −0.7; a sample grows when its noisy score is above 0.7.
  w = jnp.asarray([0.6, 0.0, 0.8, 0.0, 0.0])
  outputs = lambda z: z @ w
  terms_of = lambda out: {'l': out}
  objective = methods.Objective(lambda z: terms_of(outputs(z)), outputs, outputs=outputs,
                                terms_of=terms_of, score_of=lambda out: 1.0 - out)
  xi = methods.estimate_xi({'l': np.zeros(2)}, 'mean', 'score', scores=np.array([0.6, 0.8]))
  np.testing.assert_allclose(xi, [-0.7])
  assert methods.xi_display(xi, 'score') == pytest.approx([0.7])
  x = jnp.asarray([0.1, 0.5])[:, None] * w[None]         # clean scores 0.9 and 0.5
  _, new, metrics = _call(_amat(xi_mode='score'), objective, x, jnp.full((2,), 0.1),
                          jnp.asarray(xi))
  # PGD raises x·w by the full margin 0.1: noisy scores 0.8 (grows) and 0.4 (refined: stays).
  np.testing.assert_allclose(np.asarray(new), [0.6, 0.1], atol=1e-5)
  assert float(metrics['noisy/score']) == pytest.approx((0.8 + 0.4) / 2, abs=1e-5)
  with pytest.raises(ConfigError, match='refine'):
    _call(_amat(xi_mode='score', refine='boundary'), objective, x, jnp.full((2,), 0.1),
          jnp.asarray(xi))


def test_xi_mode_is_validated():
  c = base_config()
  c.method.xi_mode = 'both'
  with pytest.raises(ConfigError, match='xi_mode'):
    config_base.validate(c)
  c.method.xi_mode, c.method.refine = 'score', 'boundary'
  with pytest.raises(ConfigError, match="refine='paper'"):
    config_base.validate(c)
