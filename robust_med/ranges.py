"""The values each config key accepts, and the check run on a config at start-up.

A `Range` for numbers, a tuple of choices for names.

`config_base.RANGES` and `config_base.choices()` state the base keys' beside their defaults, and
each head states its own in `Task.config_ranges`; `config_base.validate` checks them all for every
entry point, so no value outside its range reaches numpy, JAX or matplotlib.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from robust_med.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
  """The values a numeric config key accepts: lo ≤ v ≤ hi (strict where `open_lo`/`open_hi`;
  None = unbounded); `note` says what an edge value means (e.g. '0 = every sample'). A tuple
  value (e.g. eval.noise_levels) is checked element by element."""
  lo: float | None = None
  hi: float | None = None
  open_lo: bool = False
  open_hi: bool = False
  note: str = ''

  def holds(self, v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and (self.lo is None or (v > self.lo if self.open_lo else v >= self.lo))
            and (self.hi is None or (v < self.hi if self.open_hi else v <= self.hi)))

  def __str__(self) -> str:
    if self.lo is None and self.hi is None:
      return ''
    if self.hi is None:
      return f'{">" if self.open_lo else "≥"} {self.lo:g}'
    if self.lo is None:
      return f'{"<" if self.open_hi else "≤"} {self.hi:g}'
    return (f'in {"(" if self.open_lo else "["}{self.lo:g}, {self.hi:g}'
            f'{")" if self.open_hi else "]"}')


def check(given: dict[str, Any], ranges: dict[str, Range | tuple]) -> None:
  """ConfigError (one line: the key, its value, what it accepts) for the first key of `ranges` in
  `given` (flat keys 'a.b' → value) whose value, or an element of it, lies outside its `Range` or
  is not one of its choices (a tuple)."""
  for key, allowed in ranges.items():
    if key not in given:
      continue
    value = given[key]
    values = value if isinstance(value, (tuple, list)) else (value,)
    if isinstance(allowed, tuple):
      wrong = [v for v in values if v not in allowed]
      if wrong:
        shown = tuple(value) if isinstance(value, list) else value
        raise ConfigError(f'config.{key} = {shown!r}: {wrong[0]!r} is not one of '
                          f'{", ".join(map(str, allowed))}; use one of them.')
      continue
    if not all(allowed.holds(v) for v in values):
      which = 'each value' if isinstance(value, (tuple, list)) else 'it'
      note = f' ({allowed.note})' if allowed.note else ''
      shown = tuple(value) if isinstance(value, list) else value
      bound = f' {allowed}' if str(allowed) else ''
      raise ConfigError(f'config.{key} = {shown!r}: {which} must be a finite number{bound}'
                        f'{note}; set it to one.')
