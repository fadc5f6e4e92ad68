"""The physical-perturbation report (robust_med.physical_report) for every head, and its config
checks."""

import json

import jax
import numpy as np
import pytest

import tiny
from robust_med import config_base, evaluate, physical, physical_report, sharding
from robust_med.errors import ConfigError
from robust_med.presets import classification as classification_presets
from robust_med.tasks import get_task_class

SMALL = {'eval.batch_size': 8, 'eval.max_samples': 8, 'physical.steps': 3,
         'physical.random_draws': 2, 'physical.check_steps': 2}


def small(head: str, **overrides):
  assert head == 'classification'
  c = classification_presets.classification_config('busi', 'std', 'synthetic')
  tiny.set_keys(c, {'data.num_train': 16, 'data.num_val': 8, 'data.image_size': 16,
                    'model.base_width': 4, 'model.stages': 2, **SMALL, **overrides})
  return c


def evaluator_for(config):
  task = get_task_class(config.task)(config)
  data, info = task.load_split('val')
  model = task.build_model(info)
  params = model.init(jax.random.key(0), data['image'][:1])['params']
  return data, params, evaluate.make_evaluator(task, model, sharding.make_mesh(1), config)


def test_the_report_has_each_kinds_curves_worst_case_and_checks(tmp_path):
  config = small('classification', **{'physical.kinds': ('gamma',),
                                      'physical.budgets.gamma': (0.2, 0.5)})
  data, params, evaluator = evaluator_for(config)
  report = physical_report.evaluate_and_write(evaluator, params, data, config, str(tmp_path),
                                              {'split': 'val', 'method': 'std'})
  assert list(report['kinds']) == ['gamma']
  gamma = report['kinds']['gamma']
  assert gamma['budgets'] == [0.0, 0.2, 0.5] and gamma['unit'] == '|log γ|'
  assert gamma['moves_targets'] is False  # the targets are scored where they were
  names = ['gamma-pgd-3', 'gamma-random-2', 'worst-case']
  assert list(gamma['curves']) == names
  for name in names:
    assert [r['eps'] for r in gamma['curves'][name]] == [0.0, 0.2, 0.5]
  # The worst case is per sample, so never better than either attack.
  for i in (1, 2):
    worst = gamma['curves']['worst-case'][i]['accuracy']
    assert worst <= min(gamma['curves'][n][i]['accuracy'] for n in names[:2]) + 1e-9
  assert [c['name'] for c in gamma['checks']] == ['random_parameters_weaker',
                                                  'stronger_attack_not_better']
  assert gamma['check_attack']['steps'] == 6 and gamma['check_attack']['restarts'] == 3
  on_disk = json.loads((tmp_path / 'physical.json').read_text())
  assert on_disk['kinds']['gamma']['curves'] == json.loads(json.dumps(gamma['curves']))
  assert (tmp_path / 'physical.png').stat().st_size > 1000
  assert report['value_range'] == [0.0, 1.0]
  assert list((tmp_path / 'tb' / 'physical').iterdir())  # TensorBoard events
  # The worst perturbation found, per kind, beside the prediction.
  evaluate.write_physical_examples(evaluator, params, data, config, report, str(tmp_path), num=2)
  assert (tmp_path / 'physical_gamma.png').stat().st_size > 1000


def test_bad_physical_settings_are_one_config_error():
  c = small('classification', **{'physical.kinds': ('modality',), 'data.modality': ''})
  with pytest.raises(ConfigError, match='modality is not set'):
    config_base.validate(c)
  c = small('classification', **{'physical.kinds': ('motion',), 'data.modality': 'us'})
  with pytest.raises(ConfigError, match='does not fit modality'):
    config_base.validate(c)
  c = small('classification', **{'physical.kinds': ('gain',), 'physical.budgets.gain': (-1.0,)})
  with pytest.raises(ConfigError, match=r'physical.budgets.gain = \(-1.0,\).* ≥ 0'):
    config_base.validate(c)
  c = small('classification', **{'physical.kinds': ('gibbs',), 'physical.budgets.gibbs': (1.0,),
                                 'data.modality': ''})
  with pytest.raises(ConfigError, match='below 1'):
    config_base.validate(c)
  # Every kind's budgets have their range stated.
  assert sorted(k.split('.')[-1] for k in config_base.RANGES
                if k.startswith('physical.budgets.')) == sorted(physical.KINDS)
  c = small('classification', **{'physical.kinds': ('sonar',)})
  with pytest.raises(ConfigError, match='Unknown physical perturbation'):
    config_base.validate(c)
  c = small('classification', **{'data.modality': 'sonar'})
  with pytest.raises(ConfigError, match='modality'):
    config_base.validate(c)
  c = small('classification', **{'physical.kinds': ('modality',), 'data.modality': 'us'})
  config_base.validate(c)
  assert config_base.physical_kinds(c) == ('speckle', 'gain', 'gamma')


def test_the_shift_suite_draws_physical_perturbations_by_modality():
  from robust_med import corruptions, shift
  config = small('classification', **{'shift.corruptions': ('contrast', 'modality'),
                                      'data.modality': 'us'})
  assert config_base.corruption_names(config) == ('contrast', 'speckle', 'gain', 'gamma')
  assert corruptions.parameters('gain') == (0.0, 0.5, 1.0, 2.0, 4.0, 6.0)
  task = get_task_class(config.task)(config)
  data, _ = task.load_split('val')
  distances = []
  for severity in (0, 2, 5):
    out = shift.corrupted_split(task, data, 'gain', severity, seed=0, chunk=4, lo_hi=(0.0, 1.0))
    assert np.array_equal(out['label'], data['label'])
    assert out['image'].min() >= 0.0 and out['image'].max() <= 1.0
    distances.append(float(np.abs(out['image'] - data['image']).mean()))
  assert distances[0] == 0.0 and 0 < distances[1] < distances[2]
  config.data.modality = ''
  with pytest.raises(ConfigError, match="has 'modality'"):
    config_base.corruption_names(config)
