"""Tests for robust_med.attacks: budgets, identities, strength, clipping and jittability."""

from __future__ import annotations

import functools

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import attack_fixtures as fx
from attack_fixtures import EPS, NORMS, TOL
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks

SHAPE = (4, 3, 3, 2)  # (B, H, W, C): image-like, so the per-sample reshapes are exercised.

# ----------------------------------------------------------------------------- helpers


def _batch(seed=0, shape=SHAPE, lo=-1.0, hi=1.0):
  return fx.batch(seed, shape, lo, hi)


_key = fx.key
_norms = fx.norms
_PARAMS = fx.mlp_params(dim=18)


def mlp_loss(x, params=_PARAMS):
  return fx.mlp_loss(x, params)


def _linear_weights(seed=2, shape=SHAPE):
  """Per-sample weights with no zero entries (so sign(∇) never vanishes)."""
  w = np.random.default_rng(seed).normal(size=shape)
  return jnp.asarray(np.where(np.abs(w) < 0.1, 0.5, w), jnp.float32)


_W = _linear_weights()


def linear_loss(x, w=_W):
  """loss_i = w_i · x_i, whose gradient never vanishes."""
  return jnp.sum((w * x).reshape(x.shape[0], -1), axis=1)


@functools.lru_cache(maxsize=None)
def _jitted(name, loss_name, norm, steps=None, random_start=False, clip=None, unroll=False):
  """A jitted attack `(x, eps, key) -> x̃`, cached so each variant compiles once.

  PGD defaults to the `fori_loop` form here: it compiles faster than the unrolled one.
  """
  loss_fn = {'mlp': mlp_loss, 'linear': linear_loss}[loss_name]
  if name == 'pgd':
    def run(x, eps, key):
      return attacks.pgd(loss_fn, x, eps, norm=norm, steps=steps, key=key if random_start else None,
                         clip=clip, unroll=unroll)
  else:
    def run(x, eps, key):
      del key
      return attacks.ATTACKS[name](loss_fn, x, eps, norm=norm, clip=clip)
  return jax.jit(run)


ATTACK_VARIANTS = [('pgd', False), ('pgd', True), ('fgsm', False), ('inverse_fgsm', False)]
VARIANT_IDS = ['pgd', 'pgd_random_start', 'fgsm', 'inverse_fgsm']


def _attack(name, random_start, loss_name, norm, x, eps, *, steps=10, clip=None, seed=3):
  steps = steps if name == 'pgd' else None
  fn = _jitted(name, loss_name, norm, steps, random_start, clip)
  return fn(x, jnp.asarray(eps, jnp.float32), _key(seed))


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('name,random_start', ATTACK_VARIANTS, ids=VARIANT_IDS)
def test_per_sample_budget_respected(name, random_start, norm):
  """‖x̃_i − x_i‖ ≤ eps_i for every sample, with a per-sample eps vector."""
  x = _batch()
  x_adv = _attack(name, random_start, 'mlp', norm, x, EPS)
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  n = _norms(x_adv, x, norm)
  assert np.all(n <= EPS + TOL), (n, EPS)
  # The attack does move the samples with a budget (the bound is not met trivially).
  assert np.all(n[1:] > 0.1 * EPS[1:]), n


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('name,random_start', ATTACK_VARIANTS, ids=VARIANT_IDS)
def test_budget_attained_on_linear_loss(name, random_start, norm):
  """Where the gradient never vanishes, the attacks end on the sphere of radius eps_i."""
  x = _batch()
  x_adv = _attack(name, random_start, 'linear', norm, x, EPS)
  n = _norms(x_adv, x, norm)
  assert np.all(n <= EPS + TOL), (n, EPS)
  assert np.all(n >= 0.99 * EPS), (n, EPS)


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('name,random_start', ATTACK_VARIANTS, ids=VARIANT_IDS)
def test_zero_budget_is_identity(name, random_start, norm):
  """Samples with eps_i = 0 come back bit-for-bit unchanged, random start included."""
  x = _batch()
  x_adv = np.asarray(_attack(name, random_start, 'mlp', norm, x, EPS))
  np.testing.assert_array_equal(x_adv[0], np.asarray(x)[0])
  assert not np.array_equal(x_adv[1:], np.asarray(x)[1:])
  x_zero = _attack(name, random_start, 'mlp', norm, x, np.zeros(4, np.float32))
  np.testing.assert_array_equal(np.asarray(x_zero), np.asarray(x))


def test_scalar_eps_matches_vector_eps():
  """A scalar budget acts like the same value repeated for every sample."""
  x = _batch()
  scalar = attacks.pgd(mlp_loss, x, 0.3, steps=2, unroll=False)
  vector = attacks.pgd(mlp_loss, x, jnp.full((4,), 0.3), steps=2, unroll=False)
  np.testing.assert_allclose(scalar, vector, rtol=0, atol=1e-6)


@pytest.mark.parametrize('norm', NORMS)
def test_pgd_init_random_start_inside_ball(norm):
  """The random start lies inside each ball (spread over it), is zero for eps_i = 0 and respects
  the clip range; without a key it is zero."""
  x = _batch(seed=4, lo=0.0, hi=1.0)
  init = jax.jit(lambda x, e, k: attacks.pgd_init(x, e, norm=norm, key=k))
  init_clip = jax.jit(lambda x, e, k: attacks.pgd_init(x, e, norm=norm, key=k, clip=(0.0, 1.0)))
  delta = np.asarray(init(x, jnp.asarray(EPS), _key(0)))
  n = np.asarray(attacks.perturbation_norm(delta, norm))
  assert np.all(n <= EPS + TOL), (n, EPS)
  np.testing.assert_array_equal(delta[0], 0.0)
  if norm == 'l2':  # Uniform in an 18-dimensional ball: the radius is mostly close to eps.
    assert np.all(n[1:] >= 0.7 * EPS[1:]), n
  else:  # Uniform in the cube: mean |δ| is about eps / 2.
    ratio = np.abs(delta[1:]).reshape(3, -1).mean(axis=1) / EPS[1:]
    assert np.all((ratio > 0.25) & (ratio < 0.75)), ratio
  clipped = np.asarray(init_clip(x, jnp.asarray(EPS), _key(0)))
  x_start = np.asarray(x) + clipped
  assert x_start.min() >= -1e-6 and x_start.max() <= 1.0 + 1e-6
  assert np.all(np.asarray(attacks.perturbation_norm(clipped, norm)) <= EPS + TOL)
  np.testing.assert_array_equal(attacks.pgd_init(x, EPS, norm=norm), np.zeros(x.shape))


# ----------------------------------------------------------------------------- strength


@pytest.mark.parametrize('norm', NORMS)
def test_pgd_beats_random_noise_of_same_norm(norm):
  """PGD finds a higher loss than random noise on the ε-sphere, which beats nothing much."""
  x = _batch(seed=5)
  eps = 0.5 if norm == 'l2' else 0.15
  x_pgd = _jitted('pgd', 'mlp', norm, 10)(x, jnp.full((4,), eps), _key(0))
  pgd_loss = float(jnp.mean(mlp_loss(x_pgd)))
  clean_loss = float(jnp.mean(mlp_loss(x)))
  # Five random draws at once: the batch tiled five times, one draw per copy.
  x5 = jnp.tile(x, (5, 1, 1, 1))
  random_loss = float(jnp.mean(mlp_loss(attacks.random_on_sphere(_key(7), x5, eps, norm))))
  assert pgd_loss > clean_loss + 1e-3, (pgd_loss, clean_loss)
  assert pgd_loss > random_loss + 1e-3, (pgd_loss, random_loss)
  # Per sample, too: PGD never ends below the clean loss.
  assert np.all(np.asarray(mlp_loss(x_pgd)) >= np.asarray(mlp_loss(x)) - 1e-6)


@pytest.mark.parametrize('norm', NORMS)
def test_random_on_sphere_has_exact_norm(norm):
  """The random baseline lies on the sphere of radius eps_i."""
  x = _batch()
  x_rand = attacks.random_on_sphere(_key(0), x, EPS, norm)
  np.testing.assert_allclose(_norms(x_rand, x, norm), EPS, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('name,random_start', ATTACK_VARIANTS, ids=VARIANT_IDS)
def test_clip_keeps_data_range_and_ball(name, random_start, norm):
  """With clip=(0, 1) on inputs in [0, 1], the result stays in [0, 1] and in the ball."""
  x = _batch(seed=4, lo=0.0, hi=1.0)
  x = x.at[:, 0].set(0.0).at[:, 1].set(1.0)  # Some pixels on the range's edges.
  x_adv = np.asarray(_attack(name, random_start, 'mlp', norm, x, EPS, clip=(0.0, 1.0)))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, (x_adv.min(), x_adv.max())
  n = _norms(x_adv, x, norm)
  assert np.all(n <= EPS + TOL), (n, EPS)
  # The large budgets would leave the range without clipping: clipping really happened.
  unclipped = np.asarray(_attack(name, random_start, 'mlp', norm, x, EPS))
  assert unclipped.min() < 0.0 or unclipped.max() > 1.0


# ----------------------------------------------------------------------------- loop forms


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('random_start', [False, True])
def test_unrolled_matches_fori_loop(norm, random_start):
  """`unroll=True` and `unroll=False` compute the same PGD."""
  x = _batch()
  key = _key(3)
  out = {}
  for unroll in (True, False):
    fn = _jitted('pgd', 'mlp', norm, 2, random_start, None, unroll)
    out[unroll] = np.asarray(fn(x, jnp.asarray(EPS), key))
  np.testing.assert_allclose(out[True], out[False], rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[True][1:], np.asarray(x)[1:])


# ----------------------------------------------------------------------------- exact values


@pytest.mark.parametrize('norm,dual', [('linf', 1), ('l2', 2)])
def test_fgsm_and_inverse_on_linear_loss(norm, dual):
  """On loss w·x, FGSM adds exactly ε‖w‖_dual and inverse FGSM subtracts it."""
  x = _batch()
  eps = jnp.asarray(EPS)
  clean = np.asarray(linear_loss(x), np.float64)
  w_dual = np.linalg.norm(np.asarray(_W, np.float64).reshape(4, -1), ord=dual, axis=1)
  up = np.asarray(linear_loss(attacks.fgsm(linear_loss, x, eps, norm=norm)), np.float64)
  down = np.asarray(linear_loss(attacks.inverse_fgsm(linear_loss, x, eps, norm=norm)), np.float64)
  np.testing.assert_allclose(up - clean, EPS * w_dual, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(clean - down, EPS * w_dual, rtol=1e-4, atol=1e-5)


def test_fgsm_linf_is_signed_gradient_step():
  """L∞ FGSM is x ± ε·sign(w) on a linear loss, coordinate by coordinate."""
  x = _batch()
  eps = EPS.reshape(4, 1, 1, 1)
  expected_up = np.asarray(x) + eps * np.sign(np.asarray(_W))
  expected_down = np.asarray(x) - eps * np.sign(np.asarray(_W))
  np.testing.assert_allclose(attacks.fgsm(linear_loss, x, EPS), expected_up, rtol=0, atol=1e-6)
  np.testing.assert_allclose(attacks.inverse_fgsm(linear_loss, x, EPS), expected_down,
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize('norm', NORMS)
def test_inverse_fgsm_lowers_nonlinear_loss(norm):
  """On the nonlinear model, small-ε FGSM raises and inverse FGSM lowers every sample's loss."""
  x = _batch()
  eps = 0.05
  clean = np.asarray(mlp_loss(x))
  assert np.all(np.asarray(mlp_loss(attacks.fgsm(mlp_loss, x, eps, norm=norm))) > clean)
  assert np.all(np.asarray(mlp_loss(attacks.inverse_fgsm(mlp_loss, x, eps, norm=norm))) < clean)


# ----------------------------------------------------------------------------- independence


@pytest.mark.parametrize('norm', NORMS)
@pytest.mark.parametrize('name', ['pgd', 'fgsm', 'inverse_fgsm'])
def test_samples_attacked_independently(name, norm):
  """Attacking the batch gives, per sample, what attacking that sample alone gives."""
  x = _batch()
  fn = _jitted(name, 'mlp', norm, 5 if name == 'pgd' else None)
  key = _key(0)
  batched = np.asarray(fn(x, jnp.asarray(EPS), key))
  for i in range(4):
    alone = np.asarray(fn(x[i:i + 1], jnp.asarray(EPS[i:i + 1]), key))
    np.testing.assert_allclose(batched[i:i + 1], alone, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- jit, errors


def test_pgd_jits_with_traced_eps_vector():
  """PGD compiles with a traced (B,) budget and agrees with the eager call."""
  fn = jax.jit(lambda x, e: attacks.pgd(mlp_loss, x, e, steps=3))
  x = _batch()
  traced = np.asarray(fn(x, jnp.asarray(EPS)))
  eager = np.asarray(attacks.pgd(mlp_loss, x, EPS, steps=3))
  np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-6)
  assert np.all(_norms(traced, x, 'l2') <= EPS + TOL)
  # A second budget reuses the compiled function and gives a different result.
  other = np.asarray(fn(x, jnp.asarray(EPS[::-1].copy())))
  assert not np.allclose(other, traced)


@pytest.mark.parametrize('call', [
    lambda x: attacks.pgd(mlp_loss, x, 0.1, norm='l1', steps=1),
    lambda x: attacks.fgsm(mlp_loss, x, 0.1, norm='l1'),
    lambda x: attacks.inverse_fgsm(mlp_loss, x, 0.1, norm='L2'),
    lambda x: attacks.perturbation_norm(x, 'inf'),
    lambda x: attacks.random_on_sphere(jax.random.PRNGKey(0), x, 0.1, 'l0'),
], ids=['pgd', 'fgsm', 'inverse_fgsm', 'perturbation_norm', 'random_on_sphere'])
def test_unknown_norm_raises(call):
  """An unknown norm name is a ValueError, not a silent fallback."""
  with pytest.raises(ValueError, match='norm'):
    call(_batch())


# ----------------------------------------------------------------------------- step size


def test_default_step_size_rule():
  """The default step is 2.5·ε/steps per sample."""
  x = _batch()
  np.testing.assert_allclose(attacks.default_step_size(EPS, x, 10), 0.25 * EPS, rtol=1e-6)
  np.testing.assert_allclose(attacks.default_step_size(0.4, x, 4), np.full(4, 0.25), rtol=1e-6)
  np.testing.assert_allclose(attacks.default_step_size(EPS, x, 5, factor=1.0), 0.2 * EPS,
                             rtol=1e-6)


def test_step_size_caps_the_budget_at_the_data_range():
  """With a data range, a budget past the range's diameter steps as if it were the diameter
  (hi − lo in L∞, (hi − lo)·√D in L2); budgets inside it keep 2.5·ε/steps."""
  x = _batch(lo=0.0, hi=1.0)
  eps = jnp.asarray([0.1, 0.5, 10.0, 100.0])
  np.testing.assert_allclose(attacks.default_step_size(eps, x, 20, clip=(0., 1.), norm='linf'),
                             2.5 * np.array([0.1, 0.5, 1.0, 1.0]) / 20, rtol=1e-6)
  diameter = np.sqrt(np.prod(SHAPE[1:]))  # ≈ 4.24 for 18 values in [0, 1]
  np.testing.assert_allclose(attacks.default_step_size(eps, x, 20, clip=(0., 1.), norm='l2'),
                             2.5 * np.array([0.1, 0.5, diameter, diameter]) / 20, rtol=1e-6)
  np.testing.assert_allclose(attacks.default_step_size(eps, x, 20), 2.5 * eps / 20, rtol=1e-6)


@pytest.mark.parametrize('norm', NORMS)
def test_pgd_past_the_data_range_equals_pgd_at_its_diameter(norm):
  """The huge-budget masking check's attack: on [0, 1] data, PGD at ε = 10·diameter searches the
  same set as at the diameter and, with the capped step, takes exactly the same path (uncapped, its
  L∞ sign steps of 1.25 would only visit the corners of the cube)."""
  x = _batch(lo=0.0, hi=1.0)
  diameter = attacks.range_diameter(x, (0., 1.), norm)
  run = lambda eps: attacks.PGDSettings(norm=norm, steps=20, clip=(0., 1.))(mlp_loss, x, eps)
  huge, at_diameter = run(10.0 * diameter), run(diameter)
  np.testing.assert_allclose(huge, at_diameter, atol=1e-6)
  assert float(jnp.min(mlp_loss(huge) - mlp_loss(x))) > 0.0
  uncapped = attacks.pgd(mlp_loss, x, 10.0 * diameter, norm=norm, steps=20, clip=(0., 1.),
                         step_size=attacks.default_step_size(10.0 * diameter, x, 20))
  assert float(jnp.max(jnp.abs(uncapped - at_diameter))) > 0.1


def test_the_description_names_the_capped_step_only_past_the_range():
  x = _batch(lo=0.0, hi=1.0)
  pgd = attacks.PGDSettings(norm='linf', steps=20, clip=(0., 1.))
  assert attacks.describe_at(pgd, 0.5, x)['step_size'] == '2.5*eps/20' == pgd.describe()[
      'step_size']
  huge = attacks.describe_at(pgd, 10.0, x)
  assert huge['eps'] == 10.0 and huge['step_size'].startswith('2.5*1/20 (ε past')
  assert attacks.describe_at(attacks.PGDSettings(norm='linf', steps=20), 10.0, x)[
      'step_size'] == '2.5*eps/20'  # unbounded data: no cap


def test_first_linf_step_moves_quarter_eps_with_ten_steps():
  """With steps=10, one L∞ `pgd_update` from zero moves every coordinate by exactly 0.25·ε."""
  x = _batch()
  alpha = attacks.default_step_size(EPS, x, 10)
  delta = attacks.pgd_update(linear_loss, x, jnp.zeros_like(x), EPS, alpha, norm='linf')
  expected = 0.25 * EPS.reshape(4, 1, 1, 1) * np.sign(np.asarray(_W))
  np.testing.assert_allclose(delta, expected, rtol=1e-6, atol=1e-7)


def test_first_l2_step_moves_quarter_eps_with_ten_steps():
  """With steps=10, one L2 `pgd_update` from zero moves 0.25·ε along w/‖w‖."""
  x = _batch()
  alpha = attacks.default_step_size(EPS, x, 10)
  delta = np.asarray(attacks.pgd_update(linear_loss, x, jnp.zeros_like(x), EPS, alpha, norm='l2'))
  w = np.asarray(_W).reshape(4, -1)
  expected = 0.25 * EPS[:, None] * w / np.linalg.norm(w, axis=1, keepdims=True)
  np.testing.assert_allclose(delta.reshape(4, -1), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('norm', NORMS)
def test_pgd_default_step_is_2p5_eps_over_steps(norm):
  """pgd(step_size=None) equals pgd with step 2.5·ε/steps and differs from other steps."""
  x = _batch()
  steps = 4

  @jax.jit
  def run(step_size):
    return attacks.pgd(mlp_loss, x, EPS, norm=norm, steps=steps, step_size=step_size,
                       unroll=False)

  default = attacks.pgd(mlp_loss, x, EPS, norm=norm, steps=steps, unroll=False)
  explicit = run(2.5 * EPS / steps)
  smaller = run(0.5 * EPS / steps)
  np.testing.assert_allclose(default, explicit, rtol=1e-6, atol=1e-7)
  assert not np.allclose(default, smaller, atol=1e-4)


@pytest.mark.parametrize('norm', NORMS)
def test_single_step_pgd_moves_exactly_eps(norm):
  """steps=1 with the default step moves min(2.5·ε, ε) = ε after projection, on a linear loss."""
  x = _batch()
  x_adv = attacks.pgd(linear_loss, x, EPS, norm=norm, steps=1)
  np.testing.assert_allclose(_norms(x_adv, x, norm), EPS, rtol=1e-5, atol=1e-7)
  if norm == 'linf':
    expected = np.asarray(x) + EPS.reshape(4, 1, 1, 1) * np.sign(np.asarray(_W))
    np.testing.assert_allclose(x_adv, expected, rtol=0, atol=1e-6)


def test_project_onto_balls():
  """`project` leaves short perturbations alone and scales/clips long ones onto the sphere."""
  delta = jnp.asarray([[3.0, 4.0], [0.3, 0.4], [-2.0, 0.5]])
  eps = jnp.asarray([1.0, 1.0, 1.0]).reshape(3, 1)
  np.testing.assert_allclose(attacks.project(delta, eps, 'l2'),
                             [[0.6, 0.8], [0.3, 0.4], [-2.0 / np.sqrt(4.25), 0.5 / np.sqrt(4.25)]],
                             rtol=1e-6)
  np.testing.assert_allclose(attacks.project(delta, eps, 'linf'),
                             [[1.0, 1.0], [0.3, 0.4], [-1.0, 0.5]], rtol=1e-6)


# ----------------------------------------------------------------------------- boundary PGD


def _linear_terms(x0, base, w):
  """One term per sample, L_i(z) = base_i + <w_i, z_i − x0_i>: it crosses ξ at distance
  ε*_i = (ξ − base_i) / ‖w_i‖ along w_i, PGD's L2 direction."""
  return lambda z: (base + jnp.sum(w * (z - x0), axis=(1, 2, 3)))[:, None]


@pytest.mark.parametrize('unroll', [True, False])
def test_boundary_pgd_returns_the_first_iterate_past_the_known_crossing(unroll):
  rng = np.random.default_rng(0)
  b = 6
  x = jnp.asarray(rng.normal(size=(b, 4, 4, 1)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(b, 4, 4, 1)), jnp.float32)
  w_norm = np.linalg.norm(np.asarray(w).reshape(b, -1), axis=1)
  xi = np.float32(2.0)
  crossing = np.array([0.0, 0.3, 0.55, 0.95, 1.5, 0.7])  # ε*; the last sample has ε = 0.
  eps = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], np.float32)
  base = jnp.asarray(xi - crossing * w_norm, jnp.float32)
  steps, alpha = 20, 0.125
  x_final, x_b, crossed = attacks.boundary_pgd(
      _linear_terms(x, base, w), x, jnp.asarray(eps), jnp.asarray([xi]), norm='l2', steps=steps,
      step_size=alpha, unroll=unroll)
  b_norm = np.asarray(attacks.perturbation_norm(x_b - x, 'l2'))
  final_norm = np.asarray(attacks.perturbation_norm(x_final - x, 'l2'))
  # Iterate t has norm min(t·α, ε); the first t with t·α ≥ ε* is ceil(ε*/α).
  want = np.minimum(np.ceil(crossing / alpha) * alpha, eps)
  np.testing.assert_array_equal(np.asarray(crossed), [True, True, True, True, False, False])
  np.testing.assert_allclose(b_norm[:4], want[:4], atol=1e-4)
  assert (b_norm[:4] >= crossing[:4] - 1e-5).all() and (b_norm[:4] < crossing[:4] + alpha).all()
  # A sample that never crosses returns the final iterate; ε = 0 leaves the sample unchanged.
  np.testing.assert_allclose(np.asarray(x_b[4]), np.asarray(x_final[4]))
  np.testing.assert_allclose(final_norm[:5], 1.0, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(x_final[5]), np.asarray(x[5]))
  np.testing.assert_array_equal(np.asarray(x_b[5]), np.asarray(x[5]))
  # The final iterate is plain PGD's.
  plain = attacks.pgd(lambda z: _linear_terms(x, base, w)(z)[:, 0], x, jnp.asarray(eps),
                      norm='l2', steps=steps, step_size=alpha, unroll=unroll)
  np.testing.assert_allclose(np.asarray(x_final), np.asarray(plain), atol=1e-5)


@pytest.mark.parametrize('steps', [8, 20])
def test_boundary_finish_on_the_callers_last_terms_equals_the_full_boundary_pgd(steps):
  # With 8 steps of 0.125 the sample crossing at 0.95 crosses only at the last iterate: the case
  # the caller's last check (AMAT reuses its noisy loss terms) must get right.
  rng = np.random.default_rng(1)
  b = 5
  x = jnp.asarray(rng.normal(size=(b, 4, 4, 1)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(b, 4, 4, 1)), jnp.float32)
  w_norm = np.linalg.norm(np.asarray(w).reshape(b, -1), axis=1)
  crossing = np.array([0.3, 0.95, 1.5, 0.0, 0.6])
  terms = _linear_terms(x, jnp.asarray(2.0 - crossing * w_norm, jnp.float32), w)
  eps = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0], jnp.float32)
  kw = dict(norm='l2', steps=steps, step_size=0.125)
  full = attacks.boundary_pgd(terms, x, eps, jnp.asarray([2.0]), **kw)
  partial = attacks.boundary_pgd(terms, x, eps, jnp.asarray([2.0]), check_last=False, **kw)
  finished = attacks.boundary_finish(*partial, terms(partial[0]), jnp.asarray([2.0]))
  for a, f in zip(full, finished):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(f))
  if steps == 8:
    assert not bool(partial[2][1]) and bool(full[2][1])  # Crossed at the last iterate only.


def test_boundary_pgd_any_term_crosses():
  x = jnp.zeros((2, 2, 2, 1))
  w = jnp.ones((2, 2, 2, 1)) / 2  # Unit norm per sample (4 pixels).
  # Term 0 never crosses; term 1 crosses at 0.5 for sample 0 and never for sample 1.
  terms = lambda z: jnp.stack([jnp.zeros(2), jnp.array([0.5, -5.0]) + jnp.sum(w * z, (1, 2, 3))],
                              axis=1)
  _, x_b, crossed = attacks.boundary_pgd(terms, x, 1.0, jnp.array([1.0, 1.0]), steps=10,
                                         step_size=0.1)
  assert np.asarray(crossed).tolist() == [True, False]
  assert float(attacks.perturbation_norm(x_b - x)[0]) == pytest.approx(0.5, abs=0.1 + 1e-5)


@pytest.mark.parametrize('choice', ['auto', 'unrolled', 'loop'])
def test_the_training_attack_loop_is_configurable_and_gives_the_same_perturbation(choice):
  import ml_collections
  c = ml_collections.ConfigDict({'norm': 'l2', 'steps': 4, 'step_size_factor': 2.5,
                                 'random_start': False, 'unroll': choice})
  settings = attacks.PGDSettings.from_config(c)
  assert settings.unroll is attacks.UNROLL_CHOICES[choice]
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
  loss = lambda z: jnp.sum(jnp.sin(z) * z, axis=1)
  reference = attacks.pgd(loss, x, 0.5, steps=4, unroll=True)
  np.testing.assert_allclose(settings(loss, x, 0.5), reference, atol=1e-6)
