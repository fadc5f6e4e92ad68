"""nnU-Net's deep supervision in the U-Net and the segmentation head: the coarser outputs, their
weighted loss terms, the training model that asks for them, and a run that trains with them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import config_base
from robust_med.errors import ConfigError
from robust_med.models.sliding import SlidingWindow
from robust_med.models.unet import UNet
from robust_med.tasks import segmentation
from test_segmentation3d import volume_config


def _paths(tree):
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize('shape, features, n', [((2, 16, 16, 1), (4, 8, 16, 32), 2),
                                                ((2, 8, 8, 8, 1), (4, 8, 16), 1)])
def test_coarser_outputs_and_unchanged_parameters(shape, features, n):
  x = jax.random.normal(jax.random.key(1), shape)
  plain = UNet(num_classes=3, features=features)
  deep = UNet(num_classes=3, features=features, deep_supervision=n)
  p0 = plain.init(jax.random.key(0), x)['params']
  p1 = deep.init(jax.random.key(0), x)['params']
  # The plain U-Net's parameters keep their names and values; the heads are added beside them.
  assert _paths(p1) - _paths(p0) == {f"['deep_{s}']['{k}']" for s in range(1, n + 1)
                                     for k in ('kernel', 'bias')}
  for path in _paths(p0):
    get = lambda t: [v for q, v in jax.tree_util.tree_leaves_with_path(t)
                     if jax.tree_util.keystr(q) == path][0]
    np.testing.assert_array_equal(get(p0), get(p1))
  out = deep.apply({'params': p1}, x, aux=True)
  spatial = shape[1:-1]
  assert out['logits'].shape == (2, *spatial, 3)
  assert [o.shape for o in out['deep']] == [(2, *(v // 2 ** s for v in spatial), 3)
                                            for s in range(1, n + 1)]
  np.testing.assert_array_equal(deep.apply({'params': p1}, x), out['logits'])
  np.testing.assert_array_equal(plain.apply({'params': p0}, x), out['logits'])


def test_loss_terms_are_nnunets_weighted_sum_over_scales():
  task = segmentation.Task(config_base.task_config('segmentation'))
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, 3, (2, 8, 8)))
  valid = jnp.asarray(rng.random((2, 8, 8)) > 0.2)
  scales = [jnp.asarray(rng.normal(size=(2, 8 // 2 ** s, 8 // 2 ** s, 3)), jnp.float32)
            for s in range(3)]
  got = task.loss_terms({'logits': scales[0], 'deep': tuple(scales[1:])},
                        {'label': labels, 'in_image': valid})
  weights = np.array([4, 2, 1]) / 7
  np.testing.assert_allclose(segmentation.deep_supervision_weights(2), weights)
  for name in ('ce', 'dice'):
    want = 0.0
    for w, s in zip(weights, range(3)):
      sub = {'label': labels[:, ::2 ** s, ::2 ** s], 'in_image': valid[:, ::2 ** s, ::2 ** s]}
      want = want + w * np.asarray(task.loss_terms(scales[s], sub)[name])
    assert got[name].shape == (2,)
    np.testing.assert_allclose(np.asarray(got[name]), want, rtol=1e-5)
  # Evaluation and ξ read the full-resolution logits of either form.
  batch = {'label': labels}
  np.testing.assert_array_equal(task.xi_score({'logits': scales[0], 'deep': ()}, batch),
                                task.xi_score(scales[0], batch))


def test_the_training_model_asks_for_them_on_patches_only():
  config = volume_config(**{'model.depth': 3, 'model.deep_supervision': 1})
  task = segmentation.Task(config)
  arrays, info = task.load_split('val')
  model = task.build_model(info)
  assert isinstance(model, SlidingWindow)
  train_model = task.training_model(model)
  x = jnp.asarray(arrays['image'][:2])
  params = model.init(jax.random.key(0), x)['params']
  patch = x[:, :8]
  out = train_model.apply({'params': params}, patch)
  assert set(out) == {'logits', 'deep'} and out['deep'][0].shape == (2, 4, 8, 8, 3)
  whole = train_model.apply({'params': params}, x)  # stitched: the logits alone
  np.testing.assert_array_equal(whole, model.apply({'params': params}, x))
  assert segmentation.Task(volume_config()).training_model(model) is model  # off by default


def test_a_3d_vaft_run_trains_with_deep_supervision(tmp_path):
  """One run for two of issue 32's pieces: VAFT (tests/test_vaft.py has its loss) on a U-Net
  with deep supervision, whose outputs (a dict) every part of the method handles."""
  from robust_med import train
  config = volume_config(**{
      'model.depth': 3, 'model.deep_supervision': 1, 'method.name': 'vaft',
      'method.vafa_steps': 2, 'method.vafa_block': (8,), 'num_epochs': 1, 'log_every_steps': 1,
      'checkpoint_every_steps': 2, 'eval.noise_levels': (0.0, 1.0), 'eval.steps': 1,
      'eval.attacks': ('pgd',), 'eval.masking_checks': False, 'shift.corruptions': (),
      'eval.batch_size': 8})
  config.lock()
  report = train.train_and_evaluate(config, str(tmp_path))
  assert report['method'] == 'vaft'
  records = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  steps = [r for r in records if r.get('type') == 'train']
  assert steps and all(np.isfinite(r['loss']) and r['frequency_consistency'] > 0 and
                       r['perturbation_l2'] > 0 for r in steps)
  assert np.isfinite(report['curves']['pgd-1'][1]['adi'])


def _one_train_step(config, method_name):
  """The task, the training model, the initial parameters, a training batch and the metrics
  of one jitted train step of `method_name` on `config` (one device)."""
  from robust_med import methods, sharding, train
  task = segmentation.Task(config)
  data, info = task.load_split('train')
  model = task.build_model(info)
  batch = task.training_batch({k: v[:8] for k, v in data.items()}, np.random.default_rng(0))
  tx = train.make_optimizer(config.optimizer, 10)
  mesh = sharding.make_mesh(1)
  state = train.init_state(model, tx, batch['image'], num_train=len(data['id']),
                           num_xi=len(task.loss_term_names), initial_margin=0.5, seed=0,
                           mesh=mesh)
  params = jax.device_get(state.params)  # the step donates the state
  state = state.replace(xi=jnp.full_like(state.xi, 10.0))  # AMAT's thresholds, measured or not
  method = methods.build_method(config.method, config.attack)
  step = train.jit_train_step(train.make_train_step(task, model, method, tx), state, mesh)
  _, metrics = step(state, sharding.put_batch(batch, mesh))
  return task, task.training_model(model), params, batch, metrics


@pytest.mark.parametrize('method, ndim', [('std', 2)])  # the 3-D run above covers VAFT
def test_every_method_trains_on_the_weighted_terms(method, ndim):
  """The train step applies the head's training model: its loss is the weighted sum over the
  scales (checked exactly for STD), finite for the methods with attacks, on slices and on patches
  of volumes."""
  overrides = {'model.depth': 3, 'model.deep_supervision': 1, 'method.name': method,
               'method.eps': 0.5, 'method.delta_eps': 0.5, 'attack.steps': 2}
  if ndim == 2:
    config = config_base.task_config('segmentation')
    config.data.name, config.data.patch_size = 'synthetic', (16, 16)
    config.data.num_train, config.data.num_val = 8, 8
    config.model.base_width = 4
    from tiny import set_keys
    set_keys(config, overrides)
  else:
    config = volume_config(**overrides)
  config_base.validate(config)
  task, train_model, params, batch, metrics = _one_train_step(config, method)
  assert np.isfinite(float(metrics['loss']))
  out = train_model.apply({'params': params}, jnp.asarray(batch['image']))
  assert isinstance(out, dict)  # training batches are patches: the coarser outputs are there
  if method == 'std':
    terms = task.loss_terms(out, batch)
    np.testing.assert_allclose(float(metrics['loss']), float(jnp.mean(terms['ce'] + terms['dice'])),
                               rtol=1e-5)
    plain = task.loss_terms(out['logits'], batch)
    assert abs(float(jnp.mean(plain['ce'] + plain['dice'])) - float(metrics['loss'])) > 1e-4
  if method == 'amat':
    assert 'grow_fraction' in metrics


def test_xi_is_measured_in_the_units_of_the_training_terms():
  """On 2-D data the ξ pass (`per_sample_clean_terms`) sees the training model's weighted terms,
  the ones AMAT compares with ξ."""
  from robust_med import sharding, train
  config = config_base.task_config('segmentation')
  config.data.name, config.data.patch_size = 'synthetic', (16, 16)
  config.data.num_train, config.data.num_val = 8, 8
  config.model.base_width, config.model.depth, config.model.deep_supervision = 4, 4, 2
  task = segmentation.Task(config)
  data, info = task.load_split('train')
  model = task.build_model(info)
  params = model.init(jax.random.key(0), jnp.asarray(data['image'][:1]))['params']
  got = train.per_sample_clean_terms(task, model, params, data, sharding.make_mesh(1), 8)
  want = task.loss_terms(task.training_model(model).apply({'params': params},
                                                          jnp.asarray(data['image'])), data)
  for name in task.loss_term_names:
    np.testing.assert_allclose(got[name], np.asarray(want[name]), rtol=1e-5)


@pytest.mark.parametrize('value', [2, -1])
def test_impossible_deep_supervision_is_a_config_error(value):
  c = volume_config(**{'model.depth': 3})
  c.model.deep_supervision = value
  with pytest.raises(ConfigError, match='deep_supervision'):
    config_base.validate(c)
  # A 2-D model on volumes trains slice by slice on whole volumes: no coarser outputs to use.
  c = volume_config(**{'model.depth': 3, 'model.ndim': 2, 'data.patch_size': (16, 16)})
  c.model.deep_supervision = 1
  with pytest.raises(ConfigError, match='slice by slice'):
    config_base.validate(c)
  c = config_base.task_config('classification')
  c.model.deep_supervision = 1
  with pytest.raises(ConfigError, match="no deep supervision"):  # other heads refuse it
    config_base.validate(c)
