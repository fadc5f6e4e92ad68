"""The gradient-masking checks pass on a normal model and flag models that hide their gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_med import gradient_masking, methods, sharding
from robust_med.evaluate import (Evaluator, TransferAttack, evaluation_attacks,
                                 robustness_report)
from robust_med.models.unet import UNet
from robust_med.tasks import segmentation
from tiny import tiny_config


class QuantisedInput(nn.Module):
  """Rounds the input to a coarse grid first: its input gradient is exactly zero."""
  inner: nn.Module

  def __call__(self, x):
    return self.inner(jnp.round(4.0 * x) / 4.0)


class SaturatedInput(nn.Module):
  """Squashes the input through a steep tanh: its input gradient underflows to zero."""
  inner: nn.Module

  def __call__(self, x):
    return self.inner(jnp.tanh(200.0 * x))


WRAPPERS = {'normal': lambda m: m, 'quantised': QuantisedInput, 'saturated': SaturatedInput}


def eval_config(**changes):
  c = tiny_config('std').eval
  c.unlock()
  c.noise_levels = (0.0, 2.0, 5.0, 10.0)
  c.steps, c.apgd_steps, c.weak_steps = 10, 10, 2
  c.batch_size = 32
  c.update(changes)
  return c


def discs(n: int, seed: int, size: int = 16) -> dict:
  """Bright discs on a dark noisy background: a task a tiny U-Net learns in a few steps."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  c = rng.uniform(5, size - 5, (n, 2))
  r = rng.uniform(2.5, 4.5, (n, 1, 1))
  label = ((yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2 < r ** 2).astype(np.int32)
  noise = 0.3 * rng.standard_normal(label.shape)
  image = (2.0 * label - 1.0 + noise).astype(np.float32)[..., None]
  return {'image': image, 'label': label, 'id': np.arange(n, dtype=np.int32)}


@pytest.fixture(scope='module')
def trained():
  """Each model trained on clean discs (seconds on CPU)."""
  train, val = discs(64, seed=1), discs(32, seed=2)
  task = segmentation.Task(tiny_config('std'))
  out = {}
  for name, wrap in WRAPPERS.items():
    model = wrap(UNet(num_classes=2, features=(4, 8)))
    params = model.init(jax.random.key(0), train['image'][:1])['params']
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, model=model):
      def loss(p):
        return methods.total(task.loss_terms(model.apply({'params': p}, train['image']),
                                             train)).mean()
      g = jax.grad(loss)(params)
      updates, opt = tx.update(g, opt)
      return optax.apply_updates(params, updates), opt
    for _ in range(80):
      params, opt = step(params, opt)
    out[name] = (task, model, params, val)
  return out


def report_for(trained, name, transfer_from=None, remaining_only=False, **changes):
  task, model, params, val = trained[name]
  cfg = eval_config(**changes)
  mesh = sharding.make_mesh(2)
  evaluator = Evaluator(task, model, mesh, evaluation_attacks(cfg),
                        batch_size=cfg.batch_size, progress=False,
                        square_remaining_only=remaining_only)
  transfer = None
  if transfer_from:
    _, source_model, source_params, _ = trained[transfer_from]
    transfer = lambda base: TransferAttack(
        base, Evaluator(task, source_model, mesh, base, batch_size=cfg.batch_size,
                        progress=False), source_params, transfer_from)
  return robustness_report(evaluator, params, val, cfg, transfer=transfer)


def by_name(report):
  return {c['name']: c for c in report['checks']}


def test_checks_pass_on_a_normal_model(trained):
  report = report_for(trained, 'normal')
  clean = report['results'][0]['adi']
  assert clean > 0.6, 'the fixture model should segment the phantoms'
  assert report['curves']['pgd-10'][-1]['adi'] < clean - 0.2, 'the attack should bite'
  checks = by_name(report)
  assert set(checks) == set(gradient_masking.CHECKS)
  assert all(c['passed'] for c in checks.values()), checks
  assert report['warnings'] == []
  # The figures behind each check travel with it.
  assert checks['huge_eps_reaches_floor']['figures']['metric'] < 0.1 * clean
  assert checks["random_noise_weaker"]["figures"]["at_eps"] in (2.0, 5.0, 10.0)
  # Every curve's per-sample Dice at every level, for paired comparisons; the worst case is
  # per sample at most each attack's value.
  per, val = report['per_sample'], trained['normal'][3]
  assert per['ids'] == val['id'].tolist() and per['eps'] == [r['eps'] for r in report['results']]
  assert set(per['values']) == set(report['curves'])
  values = {k: np.asarray(v) for k, v in per['values'].items()}
  assert all(v.shape == (len(per['eps']), len(val['id'])) for v in values.values())
  attacks_ = [k for k in values if k != 'worst-case']
  assert np.all(values['worst-case'] <= np.min([values[k] for k in attacks_], axis=0) + 1e-9)
  assert values['pgd-10'][-1].mean() < values['pgd-10'][0].mean() - 0.2


@pytest.mark.parametrize('name', ['quantised', 'saturated'])
def test_checks_flag_a_model_that_masks_its_gradients(trained, name):
  task, model, params, val = trained[name]
  few = {k: v[:4] for k, v in val.items()}
  x = jnp.asarray(few['image'])
  grad = jax.grad(lambda z: methods.total(task.loss_terms(model.apply({'params': params}, z),
                                                          few)).sum())(x)
  # The premise: the wrapped model's input gradient (almost) vanishes.
  assert float(jnp.abs(grad).mean()) < 1e-3 * float(jnp.abs(x).mean())
  report = report_for(trained, name)
  assert report['results'][0]['adi'] > 0.5, 'the masked model still segments clean phantoms'
  checks = by_name(report)
  assert not checks['huge_eps_reaches_floor']['passed']
  assert not checks['random_noise_weaker']['passed']
  assert len(report['warnings']) >= 2
  assert all('may overstate robustness' in w for w in report['warnings'])


def curve(values, eps=(0.0, 1.0, 2.0)):
  return [{'eps': e, 'm': v} for e, v in zip(eps, values)]


def check(curves_values, *, weak, random, huge, higher_is_better=True, floor=0.0):
  curves = {k: curve(v) for k, v in curves_values.items()}
  clean = curves_values['pgd'][0]
  return {c['name']: c['passed'] for c in gradient_masking.run_checks(
      metric='m', higher_is_better=higher_is_better, floor=floor, clean=clean, curves=curves,
      strong='pgd', weak=curve(weak)[1:], weak_name='pgd-2', random=curve(random)[1:],
      huge={'eps': 99.0, 'm': huge})}


def test_each_check_fails_on_its_own_violation():
  good = check({'pgd': [0.9, 0.5, 0.2]}, weak=[0.9, 0.6, 0.3], random=[0.9, 0.85, 0.8], huge=0.0)
  assert all(good.values())
  assert check({'pgd': [0.9, 0.5, 0.6]}, weak=[0.9, 0.6, 0.7], random=[0.9, 0.85, 0.8],
               huge=0.0) == {**good, 'monotone_in_eps': False}
  assert check({'pgd': [0.9, 0.5, 0.2]}, weak=[0.9, 0.4, 0.2], random=[0.9, 0.85, 0.8],
               huge=0.0) == {**good, 'more_steps_not_weaker': False}
  assert check({'pgd': [0.9, 0.5, 0.2]}, weak=[0.9, 0.6, 0.3], random=[0.9, 0.85, 0.1],
               huge=0.0) == {**good, 'random_noise_weaker': False}
  assert check({'pgd': [0.9, 0.5, 0.2]}, weak=[0.9, 0.6, 0.3], random=[0.9, 0.85, 0.8],
               huge=0.3) == {**good, 'huge_eps_reaches_floor': False}
  # Every curve of the report is checked for monotonicity, not only PGD's.
  assert not check({'pgd': [0.9, 0.5, 0.2], 'apgd': [0.9, 0.3, 0.35]}, weak=[0.9, 0.6, 0.3],
                   random=[0.9, 0.85, 0.8], huge=0.0)['monotone_in_eps']


def test_square_and_transfer_curves_may_dip_as_eps_grows_but_white_box_curves_may_not():
  """A random search at a fixed query budget and a perturbation crafted on another model need not
  get stronger with ε; only the white-box curves and the worst case are held to monotonicity."""
  def monotone(pgd):
    curves = {'pgd': curve(pgd), 'square-9': curve([0.9, 0.3, 0.6]),
              'transfer-pgd': curve([0.9, 0.4, 0.8])}
    (entry,) = [c for c in gradient_masking.run_checks(
        metric='m', higher_is_better=True, floor=0.0, clean=0.9, curves=curves, strong='pgd',
        weak=curve([0.9, 0.6, 0.3])[1:], weak_name='pgd-2',
        random=curve([0.9, 0.85, 0.8])[1:], huge={'eps': 99.0, 'm': 0.0},
        gradient_free=curves['square-9'], gradient_free_name='square-9',
        transfer=curves['transfer-pgd'], transfer_name='transfer-pgd')
        if c['name'] == 'monotone_in_eps']
    return entry

  entry = monotone([0.9, 0.2, 0.1])
  assert entry['passed'] and entry['figures']['not_checked'] == ['square-9', 'transfer-pgd']
  assert set(entry['figures']['curves']) == {'pgd'}
  entry = monotone([0.9, 0.1, 0.5])
  assert not entry['passed']
  (line,) = gradient_masking.warnings_for([entry])
  assert 'pgd: +0.4 at ε=2.0' in line and 'square' not in line


def test_checks_follow_the_metric_direction():
  # A landmark error in mm: lower is better, the floor is a large error.
  good = check({'pgd': [2.0, 10.0, 30.0]}, weak=[2.0, 8.0, 25.0], random=[2.0, 3.0, 4.0],
               huge=95.0, higher_is_better=False, floor=100.0)
  assert all(good.values())
  bad = check({'pgd': [2.0, 10.0, 8.0]}, weak=[2.0, 12.0, 25.0], random=[2.0, 3.0, 40.0],
              huge=20.0, higher_is_better=False, floor=100.0)
  assert not any(bad.values())
  # An error past the useless model's passes (the check is one-sided); short of it fails.
  past = check({'pgd': [2.0, 10.0, 30.0]}, weak=[2.0, 8.0, 25.0], random=[2.0, 3.0, 4.0],
               huge=180.0, higher_is_better=False, floor=100.0)
  assert past['huge_eps_reaches_floor']
  short = check({'pgd': [2.0, 10.0, 30.0]}, weak=[2.0, 8.0, 25.0], random=[2.0, 3.0, 4.0],
                huge=85.0, higher_is_better=False, floor=100.0)
  assert not short['huge_eps_reaches_floor']


def test_the_huge_budget_check_can_read_another_metric():
  # Detection: average IoU stays at 0.11 under a huge budget (a flood of false boxes overlaps the
  # cells), while mAP, the head's floor metric, is gone; the check reads mAP.
  def huge_check(map_value):
    curves = {'pgd': [{'eps': 0.0, 'm': 0.6, 'map': 0.3}, {'eps': 1.0, 'm': 0.5, 'map': 0.2}]}
    weak = [{'eps': 1.0, 'm': 0.55}]
    random = [{'eps': 1.0, 'm': 0.6}]
    checks = gradient_masking.run_checks(
        metric='m', higher_is_better=True, floor=0.0, clean=0.6, curves=curves, strong='pgd',
        weak=weak, weak_name='pgd-2', random=random, huge={'eps': 99.0, 'm': 0.11,
                                                            'map': map_value},
        floor_metric='map', floor_clean=0.3)
    return {c['name']: c for c in checks}['huge_eps_reaches_floor']
  passed = huge_check(0.0001)
  assert passed['passed'] and passed['figures']['metric_name'] == 'map'
  assert passed['figures']['allowed_distance'] == pytest.approx(0.03)  # 10 % of mAP's span.
  assert not huge_check(0.1)['passed']
  # The same report judged by average IoU (no floor metric) fails: 0.11 is far from 0.
  assert not check({'pgd': [0.6, 0.5, 0.4]}, weak=[0.6, 0.55, 0.45], random=[0.6, 0.6, 0.6],
                   huge=0.11)['huge_eps_reaches_floor']


def test_auto_huge_eps_scales_with_the_data():
  images = np.random.default_rng(0).normal(0, 2.0, (8, 16, 16, 1))
  assert gradient_masking.auto_huge_eps(images, 'linf') == pytest.approx(20.0, rel=0.05)
  assert gradient_masking.auto_huge_eps(images, 'l2') == pytest.approx(20.0 * 16, rel=0.05)
  assert gradient_masking.auto_huge_eps(images, 'linf', clip=(0.0, 1.0)) == 10.0


def test_square_finds_what_the_gradients_hide_and_its_check_fires(trained):
  """The quantised model's input gradient is exactly zero: PGD and APGD leave it untouched, the
  gradient-free Square search does not, and `gradient_free_weaker` says so; on the normal model
  the gradient attacks stay at least as strong as Square."""
  changes = dict(norm='linf', noise_levels=(0.0, 0.5), attacks=('pgd', 'apgd', 'square'),
                 square_queries=100, square_p_init=0.3)
  report = report_for(trained, 'quantised', **changes)
  clean = report['results'][0]['adi']
  curves = report['curves']
  assert list(curves) == ['pgd-10', 'apgd-10', 'square-100', 'worst-case', 'worst-case-gradient']
  assert curves['worst-case-gradient'][-1]['adi'] <= min(curves['pgd-10'][-1]['adi'],
                                                          curves['apgd-10'][-1]['adi'])
  # Only APGD's random start moves the gradient attacks at all.
  assert curves['worst-case-gradient'][-1]['adi'] > clean - 0.05
  assert curves['square-100'][-1]['adi'] < curves['worst-case-gradient'][-1]['adi'] - 0.05
  assert curves['worst-case'][-1]['adi'] <= curves['square-100'][-1]['adi']  # the robust figure
  check = by_name(report)['gradient_free_weaker']
  assert not check['passed'] and any('Square included' in w for w in report['warnings'])
  normal = by_name(report_for(trained, 'normal', **changes))['gradient_free_weaker']
  assert normal['passed'], normal


def test_perturbations_crafted_on_a_normal_model_expose_a_masked_one(trained):
  """The quantised model's zero gradient stops PGD, not PGD's perturbations crafted on the normal
  model: the transfer curve is far below the white-box attacks' worst case and `transfer_weaker`
  fails, naming the worst case over every attack as the robust figure."""
  report = report_for(trained, 'quantised', transfer_from='normal', noise_levels=(0.0, 5.0))
  curves = report['curves']
  assert list(curves) == ['pgd-10', 'apgd-10', 'transfer-pgd-10', 'worst-case',
                          'worst-case-gradient']
  assert curves['transfer-pgd-10'][-1]['adi'] < curves['worst-case-gradient'][-1]['adi'] - 0.1
  assert curves['worst-case'][-1]['adi'] <= curves['transfer-pgd-10'][-1]['adi']
  check = by_name(report)['transfer_weaker']
  assert not check['passed'] and any('the transfer attack included' in w
                                     for w in report['warnings'])
  # The other way round, the masked model's useless gradients make a weak transfer: passes.
  normal = report_for(trained, 'normal', transfer_from='quantised', noise_levels=(0.0, 5.0))
  assert by_name(normal)['transfer_weaker']['passed']


def test_square_attacks_only_the_samples_the_gradient_attacks_left_above_the_floor(trained):
  """AutoAttack's protocol: at a budget where PGD and APGD drive some phantoms' Dice to 0, Square
  runs on the others only; the skipped keep their worst case (Dice 0) in Square's curve."""
  report = report_for(trained, 'normal', remaining_only=True, noise_levels=(0.0, 25.0),
                      attacks=('pgd', 'apgd', 'square'), square_queries=20)
  values = {k: np.asarray(v) for k, v in report['per_sample']['values'].items()}
  gradient_worst = values['worst-case-gradient'][-1]
  alive = gradient_worst > 0
  assert 0 < alive.sum() < len(alive), 'the fixture should break some samples, not all'
  row = report['curves']['square-20'][-1]
  assert row['attacked'] == alive.sum()
  assert (values['square-20'][-1][~alive] == 0).all()
  assert 'attacked' not in report['curves']['square-20'][0]  # clean: nothing attacked
  assert 'attacked' not in report['curves']['pgd-10'][-1]
