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
