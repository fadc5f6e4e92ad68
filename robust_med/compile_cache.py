"""JAX's persistent compilation cache, switched on for robust_med's command-line runs.

Compiling the unrolled attack loops that are fastest on CPU takes tens of seconds per step
function; with the cache a second run of the same model (a resume, an evaluation, a sweep's next
ε) loads the executables instead (`benchmarks/compile_time.py` measures both). Entries are keyed
by JAX on the program, the compiler version and the device, so a stale entry is never used.
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
  JAX_COMPILATION_CACHE_DIR, when set, wins. Returns the folder in use, or None."""
  global _enabled
  directory = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.expanduser(directory or '')
  if not directory:
    return None
  if _enabled != directory:
    os.makedirs(directory, exist_ok=True)
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
    jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
    _enabled = directory
  return directory
