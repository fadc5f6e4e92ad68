"""A tiny synthetic config that trains in seconds, shared by the training tests."""

from robust_med import config_base


def tiny_config(method: str = 'amat', **overrides):
  c = config_base.base_config()
  c.data.name = 'synthetic'
  c.data.patch_size = (16, 16)
  c.data.num_train, c.data.num_val = 32, 16
  c.model.base_width, c.model.depth = 4, 2
  c.method.name = method
  c.method.delta_eps = 0.5
  c.method.eps = 0.5 if method != 'std' else 0.0
  c.method.xi_warmup_epochs = 1
  c.attack.steps = 2
  c.batch_size = 8
  c.num_epochs = 3
  c.log_every_steps = 2
  c.checkpoint_every_steps = 4
  c.keep_checkpoints = 10
  c.progress_bar = False
  c.eval.noise_levels = (0.0, 0.5)
  c.eval.steps = 3
  c.eval.batch_size = 8
  c.eval.apgd_steps = 3
  c.eval.weak_steps = 1
  set_keys(c, overrides)
  c.lock()
  return c


def set_keys(config, overrides: dict) -> None:
  """Sets dotted keys ('eval.steps': 3) of `config` in place."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value


def assert_xi_from_the_training_split_only(config, num_terms: int) -> None:
  """ξ of an AMAT `config` (xi_stat mean+2std) is a vector with one entry per loss term, computed
  from the training split's clean per-sample losses; the validation split, made very different
  here, would change it if it leaked in."""
  import numpy as np
  from robust_med import methods, train
  trainer = train.Trainer(config, '/tmp/unused_xi_workdir')
  trainer.eval_data = dict(trainer.eval_data, image=np.ones_like(trainer.eval_data['image']))
  params = trainer.fresh_state().params
  xi = trainer.measure_xi(params)
  assert xi.shape == (num_terms,)
  terms = train.per_sample_clean_terms(trainer.task, trainer.model, params, trainer.train_data,
                                       trainer.mesh, 8)
  assert sorted(terms) == sorted(trainer.task.loss_term_names)
  expected = [np.mean(terms[k]) + 2 * np.std(terms[k]) for k in sorted(terms)]
  np.testing.assert_allclose(xi, expected, rtol=1e-5)
  val_terms = train.per_sample_clean_terms(trainer.task, trainer.model, params, trainer.eval_data,
                                           trainer.mesh, 8)
  both = {k: np.concatenate([terms[k], val_terms[k]]) for k in terms}
  assert not np.allclose(methods.estimate_xi(both, 'mean+2std'), xi, rtol=1e-3)
