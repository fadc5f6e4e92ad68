"""A run's saved config.json as a config file (`--config=robust_med/saved_config.py:DIR`).

A run's saved config as a config file: `--config=robust_med/saved_config.py:DIR` loads
`DIR/config.json` (keys added to robust_med since take their defaults), so `--config.<key>=<value>`
overrides apply to it as to any config file. `robust_med.evaluate` uses it when no --config is given.
"""


def get_config(workdir: str):
  from robust_med import cli
  return cli.load_workdir_config(workdir)
