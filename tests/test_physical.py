"""Physical perturbation models (robust_med.physical): identity at zero, budgets, smoothness,
k-space, gradients against finite differences, and the attack against random parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_med import augment, physical
from robust_med.errors import ConfigError

H, W = 24, 28


def _images(seed=0, n=3, lo=0.1, hi=0.9):
  return jax.random.uniform(jax.random.PRNGKey(seed), (n, H, W, 1), minval=lo, maxval=hi)


@pytest.mark.parametrize('kind', physical.KINDS)
def test_zero_parameters_leave_the_images_unchanged(kind):
  model = physical.make(kind)
  x = _images()
  out = physical.perturb(model, x, physical.zeros(model, x), jax.random.PRNGKey(1))
  np.testing.assert_allclose(out, x, atol=2e-6)
  # A zero budget projects any parameters to the identity.
  theta = model.sample(jax.random.PRNGKey(2), jnp.full(3, 0.5), H, W)
  zero = model.project(theta, jnp.zeros(3), H, W)
  np.testing.assert_allclose(physical.perturb(model, x, zero, jax.random.PRNGKey(1)), x,
                             atol=2e-6)


@pytest.mark.parametrize('kind', physical.KINDS)
def test_every_attack_step_stays_inside_the_per_sample_budget(kind):
  model = physical.make(kind)
  x = _images(1)
  budget = jnp.array([0.4, 0.1, 0.0])
  w = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  loss = lambda v: jnp.sum(w * v, axis=(1, 2, 3)) + jnp.sum((v - x) ** 2, axis=(1, 2, 3))
  seen = []

  def spy(theta, b, h, w_):
    out = project(theta, b, h, w_)
    seen.append(out)
    return out

  project = model.project
  spying = physical.dataclasses.replace(model, project=spy)
  adv, theta = physical.attack(loss, x, spying, budget, jax.random.PRNGKey(4), steps=4,
                               restarts=2, unroll=True)
  assert len(seen) >= 8
  for t in seen + [theta]:
    assert np.all(np.asarray(model.strength(t, H, W)) <= np.asarray(budget) * (1 + 1e-5) + 1e-7)
  np.testing.assert_allclose(adv[2], x[2], atol=2e-6)  # budget 0: untouched
  # Random parameters spend the whole budget.
  drawn = model.project(model.sample(jax.random.PRNGKey(5), budget, H, W), budget, H, W)
  np.testing.assert_allclose(model.strength(drawn, H, W), budget, rtol=1e-5, atol=1e-7)


def test_more_restarts_never_weaken_the_attack():
  model = physical.make('bias_field', order=2)
  x = _images(2)
  w = jax.random.normal(jax.random.PRNGKey(6), x.shape)
  loss = lambda v: jnp.sum(w * v ** 2, axis=(1, 2, 3))
  _, t1 = physical.attack(loss, x, model, 0.3, jax.random.PRNGKey(7), steps=3, restarts=1)
  _, t3 = physical.attack(loss, x, model, 0.3, jax.random.PRNGKey(7), steps=3, restarts=3)
  l1 = loss(physical.perturb(model, x, t1))
  l3 = loss(physical.perturb(model, x, t3))
  assert np.all(np.asarray(l3) >= np.asarray(l1) - 1e-6)


@pytest.mark.parametrize('order', [1, 3])
def test_the_bias_field_has_no_energy_outside_its_polynomial_band(order):
  """log(x̃ / x) is a polynomial of degree ≤ order: numpy's Legendre fit of that degree leaves
  no residual, and the field spends exactly the budget."""
  model = physical.make('bias_field', order=order)
  x = jnp.full((2, H, W, 1), 0.4)
  budget = jnp.array([0.3, 0.5])
  theta = model.project(model.sample(jax.random.PRNGKey(8), budget, H, W), budget, H, W)
  out = physical.perturb(model, x, theta, value_range=(0.0, 10.0))
  log_field = np.log(np.asarray(out)[..., 0] / 0.4)
  yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing='ij')
  vander = np.polynomial.legendre.legvander2d(yy.ravel(), xx.ravel(), [order, order])
  for i in range(2):
    coef, *_ = np.linalg.lstsq(vander, log_field[i].ravel(), rcond=None)
    residual = log_field[i].ravel() - vander @ coef
    assert np.sqrt(np.mean(residual ** 2)) < 1e-5 * np.sqrt(np.mean(log_field[i] ** 2)) + 1e-6
    np.testing.assert_allclose(np.max(np.abs(log_field[i])), budget[i], rtol=1e-4)
  # The total degree stays ≤ order: the coefficients of P_i(y)P_j(x) with i + j > order vanish.
  coef = np.linalg.lstsq(vander, log_field[0].ravel(), rcond=None)[0].reshape(order + 1,
                                                                              order + 1)
  high = [coef[i, j] for i in range(order + 1) for j in range(order + 1) if i + j > order]
  assert np.allclose(high, 0.0, atol=1e-5)


def test_the_bspline_field_is_a_convex_combination_of_its_control_values():
  basis = physical.bspline_basis(H, W, 6)
  np.testing.assert_allclose(basis.sum(0), 1.0, atol=1e-6)
  assert basis.min() >= 0
  model = physical.make('bias_field', basis='bspline', points=6)
  theta = jax.random.normal(jax.random.PRNGKey(9), (2, 36))
  assert np.all(np.asarray(model.strength(theta, H, W)) <= np.max(np.abs(theta), axis=1) + 1e-6)


def test_motion_without_rotation_or_translation_leaves_k_space_unchanged():
  model = physical.make('motion', fraction=0.3)
  x = _images(3)
  keys = physical.sample_keys(jax.random.PRNGKey(0), 3)
  same = model.apply(keys, x, jnp.zeros((3, 3)))
  np.testing.assert_allclose(jnp.fft.fft2(same, axes=(1, 2)), jnp.fft.fft2(x, axes=(1, 2)),
                             atol=1e-4)
  # With motion, the lines acquired after it change. The image is the real part, so its k-space
  # is the Hermitian half-sum: every line with |k_y| below the moved band, the centre included
  # (and so where the anatomy sits, the reason no target moves), stays exactly.
  moved = model.apply(keys, x, jnp.array([[4.0, 1.5, -2.0]] * 3))
  k0, k1 = jnp.fft.fft2(x, axes=(1, 2)), jnp.fft.fft2(moved, axes=(1, 2))
  lines = physical.moved_lines(H, 0.3)
  assert abs(lines.sum() - 0.3 * H) <= 1 and not lines[0]
  kept = np.abs(np.fft.fftfreq(H)) < 0.5 - 0.3
  assert kept.sum() >= 0.35 * H
  np.testing.assert_allclose(k1[:, kept], k0[:, kept], atol=2e-3)
  assert float(jnp.max(jnp.abs(k1[:, lines] - k0[:, lines]))) > 0.1
  assert physical.GEOMETRIC == ()
  with pytest.raises(ConfigError, match='fraction'):
    physical.make('motion', fraction=0.6)


def _shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
  """The integer translation taking `a` to `b`, by phase correlation (signed, in pixels)."""
  cross = np.fft.fft2(b) * np.conj(np.fft.fft2(a))
  peak = np.unravel_index(np.argmax(np.real(np.fft.ifft2(cross / (np.abs(cross) + 1e-9)))), a.shape)
  return tuple(int((p + n // 2) % n - n // 2) for p, n in zip(peak, a.shape))


def _anatomy() -> np.ndarray:
  """(1, H, W, 1): two bright squares with sharp edges on a textured background, an "anatomy"
  whose every frequency carries energy (so phase correlation registers it to the pixel)."""
  img = 0.2 + 0.3 * np.random.default_rng(0).random((H, W))
  img[4:11, 5:13] += 0.4
  img[14:21, 16:24] += 0.25
  return img[None, :, :, None].astype(np.float32)


def test_no_model_moves_the_anatomy_so_no_target_moves():
  # The move_targets question: a perturbation that moved image content would have to move the
  # masks, landmarks and boxes with it (as the shift suite's elastic warp does through
  # Task.move_targets). None of the models does, even at its largest budget, so GEOMETRIC is
  # empty and the targets stay; the docstring says so. Phase correlation finds the translation.
  x = _anatomy()
  assert _shift(x[0, ..., 0], np.roll(x[0, ..., 0], (3, -2), axis=(0, 1))) == (3, -2)  # it can fail
  assert physical.GEOMETRIC == ()
  assert 'GEOMETRIC` is empty' in physical.__doc__
  for kind in physical.KINDS:
    model = physical.make(kind)
    budget = jnp.full((4,), physical.BUDGETS[kind][-1], jnp.float32)
    theta = physical.random_parameters(model, jax.random.PRNGKey(3), budget, H, W)
    out = physical.perturb(model, jnp.repeat(jnp.asarray(x), 4, axis=0), theta,
                           jax.random.PRNGKey(4))
    for i in range(4):
      assert _shift(x[0, ..., 0], np.asarray(out[i, ..., 0])) == (0, 0), (kind, theta[i])
  # Motion itself, were the whole acquisition moved, would move the anatomy: the test above
  # holds because the motion comes after the k-space centre.
  warp = physical.rigid_warp(jnp.array([[0.0, 3.0, -2.0]]), H, W)
  moved = augment.warp_images(warp, jnp.asarray(x))
  assert _shift(x[0, ..., 0], np.asarray(moved[0, ..., 0])) == (3, -2)


@pytest.mark.parametrize('kind', physical.KINDS)
def test_every_model_has_a_finite_nonzero_gradient_at_the_identity(kind):
  # PGD starts at θ = 0: a zero gradient there leaves the attack at the identity. The dose
  # model's √d noise had exactly that (its real-data attack never moved; the masking check's
  # random baseline flagged it).
  model = physical.make(kind)
  x = _images()
  weights = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  g = jax.grad(lambda t: jnp.sum(physical.perturb(model, x, t, jax.random.PRNGKey(2)) * weights))(
      physical.zeros(model, x))
  assert np.isfinite(g).all() and float(jnp.max(jnp.abs(g))) > 1e-3, kind


def test_gibbs_truncation_removes_the_high_frequencies():
  model = physical.make('gibbs')
  x = _images(4)
  keys = physical.sample_keys(jax.random.PRNGKey(0), 3)
  out = model.apply(keys, x, jnp.full((3, 1), 0.5))
  k = np.abs(np.fft.fft2(np.asarray(out), axes=(1, 2)))
  fy = np.abs(np.fft.fftfreq(H))
  assert k[:, fy > 0.25 + 1.0 / H].max() < 1e-4
  assert k[:, fy < 0.2].max() > 1.0


@pytest.mark.parametrize('kind', physical.KINDS)
def test_gradients_match_finite_differences(kind):
  model = physical.make(kind)
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.8, (2, H, W, 1)))
    weights = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    keys = physical.sample_keys(jax.random.PRNGKey(0), 2)
    theta = jnp.asarray(model.sample(jax.random.PRNGKey(1), jnp.array([0.2, 0.1]), H, W),
                        jnp.float64)
    theta = theta * 0.7 + (0.05 if kind in ('gibbs', 'rician', 'speckle', 'dose') else 0.0)
    f = lambda t: jnp.sum(weights * model.apply(keys, x, t))
    direction = jnp.asarray(np.random.default_rng(2).normal(size=theta.shape))
    h = 1e-6
    numeric = (f(theta + h * direction) - f(theta - h * direction)) / (2 * h)
    analytic = jnp.sum(jax.grad(f)(theta) * direction)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)


def test_noise_models_draw_each_samples_noise_from_its_own_key():
  model = physical.make('rician')
  x = _images(5)
  keys = physical.sample_keys(jax.random.PRNGKey(3), 3)
  theta = jnp.full((3, 1), 0.1)
  whole = model.apply(keys, x, theta)
  alone = model.apply(keys[1:2], x[1:2], theta[1:2])
  np.testing.assert_allclose(whole[1:2], alone, atol=1e-6)


def test_bad_kinds_modalities_and_budgets_are_one_config_error():
  with pytest.raises(ConfigError, match='Unknown physical perturbation'):
    physical.make('warp_drive')
  with pytest.raises(ConfigError, match='does not fit modality'):
    physical.check('motion', 'us')
  with pytest.raises(ConfigError, match='Unknown modality'):
    physical.check('motion', 'sonar')
  with pytest.raises(ConfigError, match='impossible'):
    physical.check('bias_field', 'mr', budgets=(0.1, -0.2))
  with pytest.raises(ConfigError, match='below 1'):
    physical.check('gibbs', 'mr', budgets=(1.0,))
  with pytest.raises(ConfigError, match='settings'):
    physical.make('gain', order=3)
  physical.check('speckle', 'us', budgets=(0.0, 0.2))


class _Segmenter(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    return nn.Conv(1, (3, 3))(x)[..., 0]


def _disks(key, n):
  """Bright disks of random centre and radius on a darker, noisy background."""
  kc, kr, kn, kb = jax.random.split(key, 4)
  yy, xx = jnp.meshgrid(jnp.arange(H), jnp.arange(W), indexing='ij')
  centre = jax.random.uniform(kc, (n, 2), minval=8, maxval=16)
  radius = jax.random.uniform(kr, (n, 1, 1), minval=4, maxval=7)
  mask = ((yy[None] - centre[:, 0, None, None]) ** 2
          + (xx[None] - centre[:, 1, None, None]) ** 2) < radius ** 2
  bright = jax.random.uniform(kb, (n, 1, 1), minval=0.55, maxval=0.7)
  image = jnp.where(mask, bright, 0.35) + 0.03 * jax.random.normal(kn, mask.shape)
  return jnp.clip(image, 0, 1)[..., None], mask.astype(jnp.float32)


def test_the_adversarial_bias_field_beats_the_best_of_100_random_fields_on_a_trained_model():
  model_def = _Segmenter()
  x, y = _disks(jax.random.PRNGKey(0), 64)
  params = model_def.init(jax.random.PRNGKey(1), x[:1])
  opt = optax.adam(3e-2)
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    loss, g = jax.value_and_grad(
        lambda p: jnp.mean(optax.sigmoid_binary_cross_entropy(model_def.apply(p, x), y)))(params)
    updates, state = opt.update(g, state)
    return optax.apply_updates(params, updates), state, loss

  for _ in range(150):
    params, state, loss = step(params, state)
  xt, yt = _disks(jax.random.PRNGKey(2), 16)

  def dice(images):
    pred = (model_def.apply(params, images) > 0).astype(jnp.float32)
    inter = jnp.sum(pred * yt, axis=(1, 2))
    return 2 * inter / (jnp.sum(pred, axis=(1, 2)) + jnp.sum(yt, axis=(1, 2)) + 1e-6)

  def loss_fn(images):  # what the attack increases: the per-sample cross-entropy
    return jnp.mean(optax.sigmoid_binary_cross_entropy(model_def.apply(params, images), yt),
                    axis=(1, 2))

  clean = float(jnp.mean(dice(xt)))
  assert clean > 0.9, f'the segmenter did not learn the disks (Dice {clean:.3f})'
  field = physical.make('bias_field', order=3)
  budget = 0.3
  adv, theta = physical.attack(loss_fn, xt, field, budget, jax.random.PRNGKey(3), steps=20)
  random_loss = physical.random_worst(loss_fn, xt, field, budget, jax.random.PRNGKey(4),
                                      draws=100)
  attacked_loss = loss_fn(adv)
  assert float(jnp.mean(attacked_loss)) > float(jnp.mean(random_loss))
  assert np.all(np.asarray(field.strength(theta, H, W)) <= budget * (1 + 1e-5))
  assert float(jnp.mean(dice(adv))) < clean - 0.1
