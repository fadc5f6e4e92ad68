"""Each head's dataset settings (sizes, grids, ε, CPU and demo variants), one module per head.

`configs/<dataset>_<method>.py` files call a head's preset function, e.g.
`robust_med.presets.segmentation.msd_config('prostate', 'amat', arg)`; a new head adds its own
module here (or keeps its presets beside its own task module) and edits no other.
"""

from __future__ import annotations

from typing import Sequence

from robust_med.errors import ConfigError


def check_variant(arg: str, variants: Sequence[str], example: str) -> None:
  """One `ConfigError` naming the known variants when `arg` (what follows the config file's
  colon) is not one of them."""
  if arg not in variants:
    raise ConfigError(f'Unknown config variant {arg!r}: use one of {tuple(variants)} after the '
                      f'colon, e.g. {example}.')
