"""Task heads, looked up by name: `config.task = 'segmentation'` imports `robust_med.tasks.segmentation`.

A head is one module that defines `Task`, a subclass of `robust_med.tasks.base.Task`. Adding a head
means adding that module and a config; nothing in the trainer, the methods or the attacks changes.
"""

from __future__ import annotations

import importlib

from robust_med.errors import ConfigError
from robust_med.tasks.base import Task

KNOWN_TASKS = ('segmentation',)


def get_task_class(name: str) -> type[Task]:
  """The `Task` class of the head called `name`."""
  try:
    module = importlib.import_module(f'robust_med.tasks.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'robust_med.tasks.{name}':
      raise
    raise ConfigError(f'Unknown task {name!r}: set config.task to one of {KNOWN_TASKS}.') from None
  return module.Task
