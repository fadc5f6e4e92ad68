"""Each head's dataset settings (sizes, grids, ε, CPU and demo variants), one module per head.

`configs/<dataset>_<method>.py` files call a head's preset function, e.g.
`robust_med.presets.segmentation.msd_config('prostate', 'amat', arg)`; a new head adds its own
module here (or keeps its presets beside its own task module) and edits no other.

Configs named after a paper's experiment follow that paper's protocol (`config.protocol =
'paper'`): each head's module lists the settings it takes from the paper or the authors' code in a
`PAPER`-style dict, applied by `apply_protocol`; `,robust_med` after the variant keeps the
library's own defaults instead (docs/fidelity.md has both, setting by setting, with sources).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from robust_med.errors import ConfigError


def check_variant(arg: str, variants: Sequence[str], example: str) -> None:
  """One `ConfigError` naming the known variants when `arg` (what follows the config file's
  colon) is not one of them."""
  if arg not in variants:
    raise ConfigError(f'Unknown config variant {arg!r}: use one of {tuple(variants)} after the '
                      f'colon, e.g. {example}.')


PROTOCOLS = ('paper', 'robust_med')
# Base models for randomized smoothing (issue 33; docs/certified.md), in every head: STD trained on
# Gaussian noise of std σ (Cohen et al. 2019), `configs/<dataset>_std_noise.py`, attacked and
# certified in L2. σ = 0.25 as in Cohen et al.'s and Salman et al.'s CIFAR-10 tables (inputs in
# [0, 1]; robust_med's choice for the other heads' inputs too).
SMOOTHING_SIGMA = 0.25
NOISE_METHOD = 'std_noise'


def noise_base(method: str) -> tuple[str, float]:
  """(the method a config trains, its `method.noise_sigma`): 'std_noise' is STD at
  `SMOOTHING_SIGMA`; any other method trains without noise."""
  if method == NOISE_METHOD:
    return 'std', SMOOTHING_SIGMA
  return method, 0.0
# Square's query budget in the offline demos (the 'synthetic' variants), sized like the rest of a
# demo: with it the segmentation demo's report with Square costs ≤ 2× the report without
# (benchmarks/evaluation.py --ensemble=square); real configs keep the base's 1000.
DEMO_SQUARE_QUERIES = 500


def parse_arg(arg: str, variants: Sequence[str], example: str) -> tuple[str, str]:
  """(variant, protocol) from what follows a config file's colon: a variant ('cpu'), optionally
  followed by ',robust_med' for the library's own settings instead of the paper's, which are the
  default ('cpu,paper' says it explicitly). One `ConfigError` for an unknown part."""
  variant, _, protocol = arg.partition(',')
  check_variant(variant, variants, example)
  protocol = protocol or 'paper'
  if protocol not in PROTOCOLS:
    raise ConfigError(f'Unknown protocol {protocol!r} after the variant: use one of {PROTOCOLS}, '
                      f'e.g. {example},robust_med (docs/fidelity.md).')
  return variant, protocol


def apply_protocol(config, protocol: str, paper: Mapping[str, Any]) -> None:
  """Records `protocol` in `config` and, for 'paper', sets the paper's settings `paper`
  ({'dotted.key': value}, each documented in docs/fidelity.md with its source)."""
  config.protocol = protocol
  if protocol != 'paper':
    return
  for key, value in paper.items():
    node = config
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
