"""JAX's persistent compilation cache, switched on for robust_med's command-line runs.

Compiling the unrolled attack loops that are fastest on CPU takes tens of seconds per step
function; with the cache a second run of the same model (a resume, an evaluation, a sweep's next
ε) loads the executables instead (`benchmarks/demo_compile.py` and `benchmarks/evaluation.py`
measure both). Entries are keyed by JAX on the program, the compiler version and the device, so a
stale entry is never used.
"""

from __future__ import annotations

import os

import jax

#: Above this size the least recently used entries are evicted (the eviction is file-locked, so
#: concurrent runs share the folder safely).
MAX_BYTES = 4 * 2**30
#: Compilations shorter than this are not worth a file.
MIN_COMPILE_SECONDS = 0.5

_enabled: str | None = None


def enable(directory: str) -> str | None:
  """Caches compiled programs in `directory` ('' = leave JAX's setting alone); the environment's
  JAX_COMPILATION_CACHE_DIR, when set, wins. Returns the folder in use, or None.

  robust_med's own folder is kept under `MAX_BYTES` (least recently used entries evicted). A
  folder from the environment is left at JAX's defaults (no size limit): other JAX processes
  share it (a notebook, a test run, another program) and write entries without the eviction's
  bookkeeping, which an evicting process would trip over with a warning on every compile."""
  global _enabled
  from_env = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  directory = from_env or os.path.expanduser(directory or '')
  if not directory:
    return None
  if _enabled != directory:
    os.makedirs(directory, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
    if not from_env:
      jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
    _enabled = directory
  return directory


#: XLA options for a program that runs once per run.
RUN_ONCE_OPTIONS = {'xla_backend_optimization_level': 1}


def run_once(fn, *args):
  """`jax.jit(fn)(*args)` for a program run once per run, such as a model's initialisation:
  compiled with XLA's backend optimisations at level 1 instead of the default, which buy nothing
  for one call and take most of its compile (the demo U-Net's initializers on CPU: 17.9 s at the
  default level, 3.0 s at level 1; eagerly, each initializer compiling per parameter shape, 28 s).
  The values are the eager initialisation's bits (level 0 compiles in 2.6 s but rounds some
  parameters 1 ulp differently): tests/test_train.py::
  test_fresh_state_is_the_eager_initialisation_bit_for_bit."""
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=RUN_ONCE_OPTIONS)
  return compiled(*args)
