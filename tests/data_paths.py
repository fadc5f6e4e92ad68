"""Where tests find the shared (non-repo) data, and the skip-or-fail rule when it is missing.

The shared data lives next to the repository: ``<repo>/../shared/data``; set
``ROBUST_MED_SHARED_DATA`` to that ``shared/data`` folder to override. When a folder is missing,
tests are skipped with the reason, unless ``ROBUST_MED_REQUIRE_DATA=1`` (set in CI), which turns
the skip into a failure so data-dependent tests cannot silently stop running.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# Lets `pytest tests/...` import robust_med without installing it.
if str(REPO_ROOT) not in sys.path:
  sys.path.insert(0, str(REPO_ROOT))


def shared_data_dir() -> Path:
  """The shared data folder: $ROBUST_MED_SHARED_DATA or <repo>/../shared/data."""
  override = os.environ.get('ROBUST_MED_SHARED_DATA')
  if override:
    return Path(override).expanduser()
  return REPO_ROOT.parent / 'shared' / 'data'


def data_required() -> bool:
  """True when missing data must fail tests instead of skipping them (CI)."""
  return os.environ.get('ROBUST_MED_REQUIRE_DATA', '') == '1'


def require_shared(subdir: str) -> Path:
  """Path of shared_data_dir()/subdir; skips (or fails if data is required) when missing."""
  path = shared_data_dir() / subdir
  if not path.is_dir():
    reason = (f'shared data folder {path} not found: expected at <repo>/../shared/data/{subdir} '
              'or under $ROBUST_MED_SHARED_DATA')
    if data_required():
      pytest.fail(f'{reason} (ROBUST_MED_REQUIRE_DATA=1, so this is an error)', pytrace=False)
    pytest.skip(reason)
  return path
