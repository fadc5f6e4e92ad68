"""Training with a physical perturbation as the attack (config.attack.kind): SAT, AMAT (margins
in the perturbation's unit) and AdvBias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import config_base, methods, physical, train
from robust_med.errors import ConfigError
from tiny import tiny_config


def _objective(target):
  def terms(x):
    return {'ce': jnp.mean((x - target) ** 2, axis=(1, 2, 3))}
  return methods.Objective(terms, lambda x: terms(x)['ce'],
                           attack_outputs=lambda x: x,
                           divergence=lambda a, b: jnp.mean((a - b) ** 2, axis=(1, 2, 3)))


def _build(name, kind='bias_field', **method):
  c = config_base.base_config()
  c.method.name = name
  for k, v in method.items():
    c.method[k] = v
  c.attack.kind, c.attack.steps = kind, 3
  return methods.build_method(c.method, c.attack, physical.SETTINGS[kind])


def test_amat_margins_live_in_the_perturbations_unit():
  amat = _build('amat', delta_eps=0.1)
  assert isinstance(amat.attack, physical.PhysicalPGD) and amat.attack.kind == 'bias_field'
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 12, 12, 1), minval=0.2, maxval=0.8)
  margins = jnp.array([0.0, 0.1, 0.3, 0.3])
  target = x + jnp.array([0.0, 0.0, 0.0, 0.3])[:, None, None, None]
  # ξ between the easy samples' noisy loss and the last one's: samples 0–2 grow, 3 is refined.
  xi = jnp.array([0.02])
  _, new, _ = amat(_objective(target), x, margins, xi, jax.random.PRNGKey(1))
  new = np.asarray(new)
  np.testing.assert_allclose(new[:3], np.asarray(margins[:3]) + 0.1, rtol=1e-6)
  # Refined: the mean of the margin and the field strength the attack spent (≤ the margin).
  _, spent = amat.attack.sized(_objective(target).attack_loss, x, margins, jax.random.PRNGKey(1))
  assert float(spent[3]) <= 0.3 + 1e-6
  np.testing.assert_allclose(new[3], (0.3 + float(spent[3])) / 2, rtol=1e-5)


def test_advbias_attacks_the_divergence_within_its_budget():
  adv = _build('advbias', eps=0.3)
  x = jax.random.uniform(jax.random.PRNGKey(2), (3, 12, 12, 1), minval=0.2, maxval=0.8)
  seen = []
  attack = adv.attack

  def spy(loss_fn, z, eps, key):
    out, spent = attack.sized(loss_fn, z, eps, key)
    seen.append((out, spent))
    return out

  spying = methods.AdvBias(eps=0.3, attack=spy)
  loss, margins, metrics = spying(_objective(x), x, jnp.zeros(3), None, jax.random.PRNGKey(3))
  out, spent = seen[0]
  assert np.all(np.asarray(spent) <= 0.3 + 1e-6) and float(jnp.max(spent)) > 0.1
  assert float(jnp.max(jnp.abs(out - x))) > 0.01 and 'noisy/ce' in metrics


def test_physical_training_is_refused_where_it_does_not_apply():
  with pytest.raises(ConfigError, match='trains with sat, amat, advbias only'):
    _build('rtda', eps=1.0)
  with pytest.raises(ConfigError, match='boundary'):
    _build('amat', delta_eps=0.1, refine='boundary')
  c = tiny_config('sat', **{'attack.kind': 'motion', 'data.modality': 'us'})
  with pytest.raises(ConfigError, match='does not fit modality'):
    config_base.validate(c)
  c = tiny_config('sat', **{'attack.kind': 'gibbs', 'method.eps': 1.5})
  with pytest.raises(ConfigError, match='below 1'):
    config_base.validate(c)


@pytest.mark.parametrize('method', ['amat'])
def test_training_with_a_bias_field_attack(tmp_path, method):
  config = tiny_config(method, **{'attack.kind': 'bias_field', 'method.eps': 0.3,
                                  'method.delta_eps': 0.1, 'num_epochs': 2,
                                  'physical.settings.bias_field.order': 2})
  config_base.validate(config)
  state = train.Trainer(config, str(tmp_path)).train()
  lines = (tmp_path / 'metrics.jsonl').read_text()
  assert '"noisy/' in lines
  if method == 'amat':  # margins in the bias field's unit, grown by Δε = 0.1 at a time
    margins = np.asarray(jax.device_get(state.margins))
    assert margins.min() >= 0 and margins.max() >= 0.1
