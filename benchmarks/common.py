"""What every benchmark shares: loading a config by path, the machine and versions a figure was
measured on, compile-time accounting through `jax.monitoring`, timing and JSON output.

Benchmarks are scripts, not tests: each prints a table and writes its figures (with the machine,
versions and shapes) as JSON, so a number never travels without what produced it.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Callable

import jax

# Run from a checkout without installing: `python benchmarks/x.py` puts benchmarks/ first on the
# path, not the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# Events `jax.monitoring` records, with a duration, for every function it compiles.
COMPILE_EVENTS = {'trace': '/jax/core/compile/jaxpr_trace_duration',
                  'lower': '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  'compile': '/jax/core/compile/backend_compile_duration'}


class CompileLog:
  """Sums jax's own trace / lowering / XLA-compile durations, per function name.

  One listener for the process (jax offers no way to remove one); `window()` measures a span.
  """
  _instance = None

  def __init__(self):
    self.seconds = collections.defaultdict(float)   # (phase, fun_name) -> seconds
    self.count = collections.Counter()
    names = {v: k for k, v in COMPILE_EVENTS.items()}

    def listener(event, duration, **kwargs):
      if event in names:
        key = (names[event], kwargs.get('fun_name', '?'))
        self.seconds[key] += duration
        self.count[key] += 1
    jax.monitoring.register_event_duration_secs_listener(listener)

  @classmethod
  def get(cls) -> 'CompileLog':
    if cls._instance is None:
      cls._instance = cls()
    return cls._instance

  def total(self, phases=('trace', 'lower', 'compile')) -> float:
    return sum(s for (p, _), s in self.seconds.items() if p in phases)

  @contextlib.contextmanager
  def window(self):
    """Yields a dict filled, on exit, with the compile seconds spent inside the block:
    {'total': s, 'xla': s, 'functions': {name: s}, 'compiles': n}."""
    before, before_n = dict(self.seconds), sum(self.count.values())
    out: dict = {}
    try:
      yield out
    finally:
      spent = {k: v - before.get(k, 0.0) for k, v in self.seconds.items()
               if v - before.get(k, 0.0) > 0}
      per_fun = collections.defaultdict(float)
      for (_, fun), s in spent.items():
        per_fun[fun] += s
      out.update(total=sum(spent.values()),
                 xla=sum(s for (p, _), s in spent.items() if p == 'compile'),
                 functions=dict(sorted(per_fun.items(), key=lambda kv: -kv[1])),
                 compiles=sum(self.count.values()) - before_n)


def load_config(spec: str):
  """`path/to/config.py[:arg]` -> the ConfigDict its `get_config(arg)` returns."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('benchmark_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg)


def fresh_model(spec: str):
  """(config, task, data, mesh, model, params) of a config's evaluation split (capped by
  eval.max_samples) on all local devices, with a fresh initialisation (attack costs do not depend
  on the weights)."""
  from robust_med import evaluate, sharding
  from robust_med.tasks import get_task_class
  config = load_config(spec)
  config.mesh.num_devices = 0
  task = get_task_class(config.task)(config)
  data, info = task.load_split(config.data.eval_split)
  data = evaluate.evaluation_subset(data, config.eval.max_samples)
  model = task.build_model(info)
  params = model.init(jax.random.key(0), data['image'][:1])['params']
  return config, task, data, sharding.make_mesh(0), model, params


def environment() -> dict:
  """The machine and versions a figure was measured on."""
  import flax
  import jaxlib
  import numpy as np
  env = {'python': platform.python_version(), 'platform': platform.platform(),
         'processor': platform.processor() or platform.machine(), 'cpus': os.cpu_count(),
         'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
         'numpy': np.__version__, 'backend': jax.default_backend(),
         'devices': [str(d.device_kind) for d in jax.devices()],
         'xla_flags': os.environ.get('XLA_FLAGS', '')}
  try:
    import torch
    env['torch'] = torch.__version__
    env['torch_threads'] = torch.get_num_threads()
  except ImportError:
    pass
  for name, module in (('torchattacks', 'torchattacks'), ('art', 'art')):
    if importlib.util.find_spec(module) is not None:
      env[name] = getattr(importlib.import_module(module), '__version__', '?')
  return env


def best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
  """Best-of-`repeats` wall seconds of `fn()` (which must block until its work is done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def write_json(path: str, record: dict) -> None:
  """Writes `record` (plus the environment) to `path`, atomically."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({'environment': environment(), **record}, f, indent=1, default=float)
  os.replace(tmp, path)
  print(f'wrote {path}')


def table(rows: list[dict], columns: list[str]) -> str:
  """A Markdown table of `rows` (missing cells blank; floats with 4 significant digits)."""
  fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else ('' if v is None else str(v))
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r.get(c)) for c in columns) + ' |' for r in rows]
  return '\n'.join(lines)
