"""config.model.compute_dtype: a bfloat16 network inside float32 training and attacks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import attacks, config_base, precision, train
from robust_med.errors import ConfigError
from robust_med.models.unet import UNet
from tiny import tiny_config


def _model_and_params():
  model = UNet(num_classes=3, features=(8, 16))
  x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1))
  params = model.init(jax.random.key(0), x)['params']
  return model, params, x


def test_bf16_outputs_are_float32_and_close_to_float32_outputs():
  model, params, x = _model_and_params()
  low = precision.compute_dtype(model, 'bfloat16')
  assert precision.compute_dtype(model, 'float32') is model
  want = model.apply({'params': params}, x)
  got = low.apply({'params': params}, x)
  assert got.dtype == jnp.float32 and got.shape == want.shape
  scale = float(jnp.max(jnp.abs(want)))
  err = float(jnp.max(jnp.abs(got - want))) / scale
  # The stated tolerance (README): within 5e-2 of the float32 outputs' scale, and really lower.
  assert 0 < err < 5e-2, err
  # init is the float32 model's: the same parameters, so checkpoints are interchangeable.
  same = low.init(jax.random.key(0), x)['params']
  jax.tree.map(np.testing.assert_array_equal, same, params)


def test_gradients_and_attacks_stay_float32():
  model, params, x = _model_and_params()
  low = precision.compute_dtype(model, 'bfloat16')
  loss = lambda p, z: jnp.mean(low.apply({'params': p}, z) ** 2, axis=(1, 2, 3))
  grads = jax.grad(lambda p: loss(p, x).sum())(params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  x_adv = attacks.pgd(lambda z: loss(params, z), x, 0.5, norm='l2', steps=3)
  assert x_adv.dtype == jnp.float32
  norms = jnp.sqrt(jnp.sum((x_adv - x) ** 2, axis=(1, 2, 3)))
  assert float(norms.max()) <= 0.5 + 1e-5 and float(norms.min()) > 0.1
  assert float(loss(params, x_adv).mean()) > float(loss(params, x).mean())


def test_training_in_bf16_keeps_float32_state(tmp_path):
  config = tiny_config('amat', **{'model.compute_dtype': 'bfloat16', 'num_epochs': 2})
  trainer = train.Trainer(config, str(tmp_path))
  state = trainer.train()
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  assert state.margins.dtype == jnp.float32
  losses = [json.loads(line)['loss'] for line in open(tmp_path / 'metrics.jsonl')
            if '"type": "train"' in line]
  assert losses and np.all(np.isfinite(losses))


def test_unknown_compute_dtype_is_refused():
  config = tiny_config('std', **{'model.compute_dtype': 'float16'})
  with pytest.raises(ConfigError, match='compute_dtype.*bfloat16'):
    config_base.validate(config)
