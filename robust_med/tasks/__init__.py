"""Task heads, looked up by name (a built-in head or the dotted path of your own).

Task heads, looked up by name: `config.task = 'segmentation'` imports `robust_med.tasks.segmentation`;
a dotted path (`config.task = 'mypkg.heads.blobs'`) imports a head that lives outside robust_med.

A head is one module that defines `Task`, a subclass of `robust_med.tasks.base.Task`. Adding a head
means adding that module and a config; nothing in the trainer, the methods or the attacks changes.
"""

from __future__ import annotations

import importlib

from robust_med.errors import ConfigError
from robust_med.tasks.base import Task

KNOWN_TASKS = ('segmentation', 'landmarks', 'detection', 'classification')


def get_task_class(name: str) -> type[Task]:
  """The `Task` class of the head called `name` (a built-in head, or a module's dotted path)."""
  dotted = '.' in name
  path = name if dotted else f'robust_med.tasks.{name}'
  try:
    module = importlib.import_module(path)
  except ModuleNotFoundError as e:
    if not (path == e.name or path.startswith(f'{e.name}.')):  # The head imports a missing module.
      raise
    if dotted:
      raise ConfigError(f'Cannot import the task module {name!r} ({e}): put its package on '
                        'PYTHONPATH (or install it), or fix config.task.') from None
    raise ConfigError(f'Unknown task {name!r}: set config.task to one of {KNOWN_TASKS}, or to '
                      'the dotted path of your own module that defines Task.') from None
  task = getattr(module, 'Task', None)
  if not (isinstance(task, type) and issubclass(task, Task)):
    raise ConfigError(f'The task module {path} defines no class Task(robust_med.tasks.base.Task): '
                      'add one (see docs/bring_your_own_head.md).')
  return task
