"""Tests for robust_med.apgd: budgets, closed-form optima, the step-size schedule, determinism and
the chunked (evaluator) form of the iterative-attack protocol."""

from __future__ import annotations

import functools

import data_paths  # noqa: F401  Puts the repo root on sys.path; keep before robust_med imports.
import attack_fixtures as fx
from attack_fixtures import EPS, NORMS, TOL
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from robust_med import apgd, attacks

SHAPE = (4, 8, 8, 1)  # (B, H, W, C): image-like, so the per-sample reshapes are exercised.

# ----------------------------------------------------------------------------- helpers


def _batch(seed=0, shape=SHAPE, lo=-1.0, hi=1.0):
  return fx.batch(seed, shape, lo, hi)


_key = fx.key
_norms = fx.norms
_PARAMS = fx.mlp_params(dim=64)


def mlp_loss(x, params=_PARAMS):
  return fx.mlp_loss(x, params)


@functools.lru_cache(maxsize=None)
def _jitted_apgd(norm, steps=10, clip=None, random_start=True):
  """A jitted APGD on the MLP loss `(x, eps, key) -> x̃`, cached so each variant compiles once."""
  settings = apgd.APGDSettings(norm=norm, steps=steps, clip=clip, random_start=random_start)
  return jax.jit(lambda x, eps, key: settings(mlp_loss, x, eps, key=key, unroll=False))


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize('clip', [None, (0.0, 1.0)], ids=['unclipped', 'clip01'])
@pytest.mark.parametrize('norm', NORMS)
def test_per_sample_budget_and_clip_respected(norm, clip):
  """‖x̃_i − x_i‖ ≤ eps_i for a per-sample eps vector, eps_i = 0 leaves sample i bit-for-bit
  unchanged (random start included), and with clip the result stays in the data range."""
  x = _batch(lo=0.0, hi=1.0) if clip else _batch()
  eps = EPS if norm == 'l2' else EPS / 4
  x_adv = _jitted_apgd(norm, clip=clip)(x, jnp.asarray(eps), _key(3))
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  n = _norms(x_adv, x, norm)
  assert np.all(n <= eps + TOL), (n, eps)
  assert np.all(n[1:] > 0.1 * eps[1:]), n  # The bound is not met trivially.
  np.testing.assert_array_equal(np.asarray(x_adv)[0], np.asarray(x)[0])
  if clip:
    assert float(x_adv.min()) >= clip[0] and float(x_adv.max()) <= clip[1]


@pytest.mark.parametrize('norm', NORMS)
def test_never_below_start_and_beats_clean(norm):
  """The result is the best point seen, so from x (no random start) its loss is never below the
  clean loss; and APGD does increase it. A scalar eps acts like the same value per sample."""
  x = _batch(seed=5)
  eps = 0.5 if norm == 'l2' else 0.1
  run = _jitted_apgd(norm, random_start=False)
  x_adv = run(x, jnp.full((4,), eps), None)
  clean, adv = np.asarray(mlp_loss(x)), np.asarray(mlp_loss(x_adv))
  assert np.all(adv >= clean), (adv, clean)
  assert np.all(adv > clean + 1e-3), (adv, clean)
  # Jitted as the per-sample run is, so that both are compiled alike.
  scalar = jax.jit(lambda x: apgd.apgd(mlp_loss, x, eps, norm=norm, steps=10, unroll=False))(x)
  np.testing.assert_allclose(scalar, x_adv, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- closed-form optima


def _linear_weights(seed=2, shape=SHAPE):
  """Per-sample weights with no zero entries (so sign(∇) never vanishes)."""
  w = np.random.default_rng(seed).normal(size=shape)
  return jnp.asarray(np.where(np.abs(w) < 0.1, 0.5, w), jnp.float32)


_W = _linear_weights()


def linear_loss(x, w=_W):
  """loss_i = ⟨w_i, x_i⟩, maximised over the ball at x_i + eps_i·sign(w_i) (L∞) or
  x_i + eps_i·w_i/‖w_i‖ (L2)."""
  return jnp.sum((w * x).reshape(x.shape[0], -1), axis=1)


@pytest.mark.parametrize('random_start', [False, True], ids=['from_x', 'random_start'])
@pytest.mark.parametrize('norm', NORMS)
def test_linear_loss_reaches_optimum(norm, random_start):
  """On a linear loss APGD ends at the closed-form optimum, at least as high as PGD.

  In L2 the loss is flat to second order around the optimum along the sphere, and APGD keeps the
  best point by comparing float32 losses, so the point is pinned down only to ~sqrt(float eps)
  (a few 1e-4 here) while its loss is optimal to float precision.
  """
  x = _batch()
  eps = jnp.asarray(EPS)
  eps_b = eps.reshape(-1, 1, 1, 1)
  if norm == 'linf':
    opt = x + eps_b * jnp.sign(_W)
  else:
    opt = x + eps_b * _W / jnp.linalg.norm(_W.reshape(4, -1), axis=1).reshape(-1, 1, 1, 1)
  key = _key(1) if random_start else None
  x_adv = apgd.apgd(linear_loss, x, eps, norm=norm, steps=20, key=key, unroll=False)
  x_pgd = attacks.pgd(linear_loss, x, eps, norm=norm, steps=20, key=key, unroll=False)
  np.testing.assert_allclose(x_adv, opt, rtol=0, atol=1e-3 if norm == 'l2' else 1e-6)
  f_apgd, f_pgd, f_opt = (np.asarray(linear_loss(v)) for v in (x_adv, x_pgd, opt))
  np.testing.assert_allclose(f_apgd, f_opt, rtol=1e-6, atol=1e-6)
  assert np.all(f_apgd >= f_pgd - 1e-6), (f_apgd, f_pgd)


def _quadratic_case(norm, seed=0, batch=6, dim=20):
  """f_i(z) = −‖z − c_i‖² with c_i outside the ball, and its maximiser over the ball, the
  projection of c_i onto it.

  L2: c_i − x_i = 1.02·eps_i·u_i (unit u_i), just outside the sphere, where a fixed step of size
  η multiplies the angle to the optimum by about 1 − η/(0.02·eps) per step: unstable for PGD's
  2.5·eps/30 ≈ 0.08·eps as for APGD's initial 2·eps, stable only once η < 0.04·eps.
  L∞: c_i − x_i uniform in [−2, 2]·eps_i per coordinate, so about half the coordinates of the
  optimum are interior; sign steps of a fixed size oscillate around those by up to the step.
  """
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (batch, dim))
  eps = rng.uniform(0.3, 1.0, batch)
  if norm == 'l2':
    u = rng.normal(size=(batch, dim))
    c = x + 1.02 * eps[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)
    opt = x + eps[:, None] * (c - x) / np.linalg.norm(c - x, axis=1, keepdims=True)
  else:
    c = x + rng.uniform(-2, 2, (batch, dim)) * eps[:, None]
    opt = np.clip(c, x - eps[:, None], x + eps[:, None])
  x, eps, c, opt = (jnp.asarray(v, jnp.float32) for v in (x, eps, c, opt))
  assert np.all(_norms(c, x, norm) > np.asarray(eps))
  return x, eps, c, opt


@pytest.mark.parametrize('norm', NORMS)
def test_quadratic_optimum_where_fixed_step_pgd_is_off(norm):
  """On −‖z − c‖² with c outside the ball, APGD's halved steps converge to the projection of c;
  PGD with a fixed step (2.5·eps/steps, as many steps) stays off it. Without the halving, APGD
  misses too (gaps up to 4e-2·eps² in L2, ~1·eps² in L∞), so this checks the schedule."""
  x, eps, c, opt = _quadratic_case(norm)

  def loss(z):
    return -jnp.sum(jnp.square(z - c), axis=1)

  steps, key = 30, _key(1)
  x_adv = apgd.apgd(loss, x, eps, norm=norm, steps=steps, key=key, unroll=False)
  x_pgd = attacks.pgd(loss, x, eps, norm=norm, steps=steps, key=key, unroll=False)
  assert np.all(_norms(x_adv, x, norm) <= np.asarray(eps) + TOL)
  # The gaps to the optimal loss, in units of eps² (APGD: ~1e-8 in L2, ~1e-3 in L∞).
  f_opt = loss(opt)
  gap_apgd = np.asarray((f_opt - loss(x_adv)) / eps**2)
  gap_pgd = np.asarray((f_opt - loss(x_pgd)) / eps**2)
  tol = 1e-4 if norm == 'l2' else 5e-3
  assert np.all(gap_apgd <= tol), gap_apgd
  assert np.all(gap_pgd > tol), gap_pgd  # The case is hard for a fixed step.
  assert np.all(gap_apgd <= gap_pgd + 1e-6), (gap_apgd, gap_pgd)


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize('norm', NORMS)
def test_deterministic_under_key(norm):
  """The same key gives bit-identical results; another key another random start and result."""
  x = _batch(seed=6)
  eps = jnp.asarray(EPS if norm == 'l2' else EPS / 4)
  run = _jitted_apgd(norm)
  a, b = np.asarray(run(x, eps, _key(7))), np.asarray(run(x, eps, _key(7)))
  np.testing.assert_array_equal(a, b)
  other = np.asarray(run(x, eps, _key(8)))
  assert not np.array_equal(a[1:], other[1:])
  np.testing.assert_array_equal(other[0], np.asarray(x)[0])


@pytest.mark.parametrize('norm', NORMS)
def test_unrolled_loop_and_chunks_agree(norm):
  """The unrolled loop, the fori_loop and the evaluator's form (init, then a host loop over one
  jitted chunk of steps whose start index is traced) are the same attack.

  All three are jitted: APGD's decisions compare float losses, and near convergence (where losses
  tie to the last bit) eager and compiled rounding can decide differently, moving the result by
  ~sqrt(float eps) with the same loss.
  """
  x = _batch(seed=8)
  eps = jnp.asarray(EPS if norm == 'l2' else EPS / 4)
  settings = apgd.APGDSettings(norm=norm, steps=8)
  key = _key(9)
  run = jax.jit(lambda key: settings(mlp_loss, x, eps, key=key, unroll=False))
  run_unrolled = jax.jit(lambda key: settings(mlp_loss, x, eps, key=key, unroll=True))
  looped, unrolled = run(key), run_unrolled(key)
  np.testing.assert_allclose(unrolled, looped, rtol=0, atol=1e-5)

  @functools.partial(jax.jit, static_argnames='k')
  def chunk(state, start, k):
    for j in range(k):
      state = settings.step(mlp_loss, x, state, eps, start + j)
    return state

  state = jax.jit(lambda key: settings.init(mlp_loss, x, eps, key))(key)
  done = 0
  while done < settings.steps:
    k = min(3, settings.steps - done)  # 3 + 3 + 2 steps; the first two share one compilation.
    state = chunk(state, jnp.int32(done), k)
    done += k
  np.testing.assert_allclose(settings.result(x, state), looped, rtol=0, atol=1e-5)


def test_checkpoint_schedule_reference_convention():
  """The reference implementation's integer schedule: for N = 100 the intervals are 22, 19, 16,
  13, 10, 7 and then the minimum 6, so checks follow iterations 22, 41, 57, 70, 80, 87, 93, 99 —
  the paper's w_j = ⌈p_j·N⌉ with p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99."""
  schedule = apgd.checkpoint_schedule(100)
  assert len(schedule) == 100
  checks = {i + 1: length for i, length in enumerate(schedule) if length}
  assert checks == {22: 22, 41: 19, 57: 16, 70: 13, 80: 10, 87: 7, 93: 6, 99: 6}
  # Few steps: intervals of at least one iteration (N = 20: 4, 3, 2, then 1 each).
  checks_20 = [i + 1 for i, length in enumerate(apgd.checkpoint_schedule(20)) if length]
  assert checks_20 == [4, 7, 9] + list(range(10, 21))
  assert apgd.checkpoint_schedule(1) == (1,)
  assert apgd.checkpoint_schedule(0) == ()


def test_bad_norm_raises():
  with pytest.raises(ValueError, match='norm'):
    apgd.APGDSettings(norm='l1')
  with pytest.raises(ValueError, match='norm'):
    apgd.apgd(mlp_loss, _batch(), 0.1, norm='l3', steps=1)


def test_describe_and_from_config():
  c = ml_collections.ConfigDict({'norm': 'linf', 'apgd_steps': 50, 'random_start': False})
  settings = apgd.APGDSettings.from_config(c, clip=[0.0, 1.0])
  assert settings == apgd.APGDSettings(norm='linf', steps=50, clip=(0.0, 1.0))
  assert settings.describe() == {
      'name': 'apgd-50', 'norm': 'linf', 'steps': 50,
      'step_size': 'adaptive: 2*eps halved at checkpoints (rho=0.75, momentum=0.75)',
      'restarts': 1, 'random_start': True, 'data_range': [0.0, 1.0]}
  assert set(settings.describe()) == set(attacks.PGDSettings().describe())
  assert apgd.APGDSettings.from_config(c).describe()['data_range'] == 'unbounded (no clipping)'
