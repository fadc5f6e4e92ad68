"""Noise budgets in a paper's units: one conversion between a paper's network input and this model's.

A budget ε means different noise on different inputs. Two inputs agree on a perturbation's size
when its per-pixel magnitude, relative to the intensity range, is the same. For an L2 budget spread
evenly over n values, each value moves by ε/√n; relative to an intensity span s that is ε/(s·√n).
So a paper's ε_paper on n_paper values of span s_paper is this model's

    ε_model = ε_paper · (n_model / n_paper)^(1/2) / r,      r = s_paper / s_model,

and for L∞ (per value already) ε_model = ε_paper / r. n counts every value of the network input
(channels × height × width). Example: the AMAT authors feed cephalograms as 3 × 200 × 160 images in
[-1, 1]; robust_med's landmark head feeds 1 × 200 × 160 in [0, 1] (r = 2), so ε_model =
0.289·ε_paper, and at the CPU variant's 1 × 96 × 80, 0.141·ε_paper.

A config states its budgets in the paper's units with `config.units.budgets = 'paper'`,
`units.paper_shape` = (C, H, W) of the paper's input and `units.paper_per_model_intensity` = r.
`resolve` converts them once (the run keeps the user's config; reports show both values).
"""

from __future__ import annotations

import math
from typing import Sequence

import ml_collections

from robust_med.errors import ConfigError

BUDGETS = ('model', 'paper')
# The exponent of n_model / n_paper for each norm (an Lp norm of n equal values is n^(1/p)·value).
NORM_EXPONENT = {'l2': 0.5, 'linf': 0.0}


def model_per_paper(norm: str, model_shape: Sequence[int], paper_shape: Sequence[int],
                    paper_per_model_intensity: float) -> float:
  """The factor f with ε_model = f · ε_paper for budgets in `norm`."""
  if norm not in NORM_EXPONENT:
    raise ConfigError(f'No unit conversion for the {norm!r} norm: use one of '
                      f'{tuple(NORM_EXPONENT)}.')
  n_model, n_paper = math.prod(model_shape), math.prod(paper_shape)
  return (n_model / n_paper) ** NORM_EXPONENT[norm] / paper_per_model_intensity


def to_model(eps, norm: str, model_shape, paper_shape, paper_per_model_intensity: float):
  """A budget (or a sequence of them) stated in the paper's units, in this model's."""
  f = model_per_paper(norm, model_shape, paper_shape, paper_per_model_intensity)
  return tuple(e * f for e in eps) if isinstance(eps, (tuple, list)) else eps * f


def to_paper(eps, norm: str, model_shape, paper_shape, paper_per_model_intensity: float):
  """A budget (or a sequence of them) in this model's units, in the paper's."""
  f = model_per_paper(norm, model_shape, paper_shape, paper_per_model_intensity)
  return tuple(e / f for e in eps) if isinstance(eps, (tuple, list)) else eps / f


def check(config) -> None:
  """One `ConfigError` for a `units` section that cannot convert."""
  u = config.units
  if u.budgets not in BUDGETS:
    raise ConfigError(f'config.units.budgets = {u.budgets!r}: use model (budgets in this '
                      "model's input units) or paper (in the paper's, converted).")
  if u.budgets == 'paper':
    shape = tuple(u.paper_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
      raise ConfigError(f'config.units.paper_shape = {shape}: budgets in the paper\'s units need '
                        'the (channels, height, width) of the paper\'s network input, e.g. '
                        '(3, 200, 160).')
    if not u.paper_per_model_intensity > 0:
      raise ConfigError(f'config.units.paper_per_model_intensity = {u.paper_per_model_intensity}'
                        ' must be > 0: the paper\'s intensity span per unit of this model\'s '
                        '(e.g. 2.0 for [-1, 1] against [0, 1]).')


def method_norm(config) -> str:
  """The norm of `config.method.eps`: the FGSM augmentations' own, else the training attack's."""
  from robust_med import methods  # Local import keeps this module light.
  if config.method.name in methods.AUGMENTATION_ATTACKS:
    return config.method.fgsm_norm
  return config.attack.norm


def resolve(config, image_shape: Sequence[int]) -> ml_collections.ConfigDict:
  """`config` with every budget in this model's units, for inputs of `image_shape` (one sample,
  any axis order). A config already in model units comes back as it is; otherwise a copy with the
  budgets converted, `units.budgets = 'model'`, and the conversion recorded in
  `units.model_per_paper` (for the evaluation's norm) and `units.paper_noise_levels`, which
  reports print beside the model's values."""
  if config.units.budgets != 'paper':
    return config
  check(config)
  c = ml_collections.ConfigDict(config.to_dict())
  u = c.units
  args = (tuple(image_shape), tuple(u.paper_shape), u.paper_per_model_intensity)
  train_norm, eval_norm = method_norm(c), c.eval.norm
  if c.attack.get('kind', 'pixel') == 'pixel':  # A physical attack's budgets are in its own unit.
    c.method.eps = to_model(c.method.eps, train_norm, *args)
    c.method.delta_eps = to_model(c.method.delta_eps, c.attack.norm, *args)
    c.method.max_margin = to_model(c.method.max_margin, c.attack.norm, *args)
  u.paper_noise_levels = tuple(c.eval.noise_levels)
  c.eval.noise_levels = to_model(tuple(c.eval.noise_levels), eval_norm, *args)
  c.eval.huge_eps = to_model(c.eval.huge_eps, eval_norm, *args)
  c.interpret.eps = to_model(c.interpret.eps, eval_norm, *args)
  u.model_per_paper = model_per_paper(eval_norm, *args)
  u.budgets = 'model'
  if config.is_locked:
    c.lock()
  return c


def report(config) -> dict:
  """What a report says about units: {} for budgets stated in the model's units; else the factor
  and the evaluation's levels in the paper's units beside the model's."""
  u = config.get('units', {})
  if 'model_per_paper' not in u:
    return {}
  return {'budgets_stated_in': 'paper', 'paper_shape': list(u.paper_shape),
          'paper_per_model_intensity': u.paper_per_model_intensity,
          'model_per_paper': u.model_per_paper,
          'noise_levels_paper': list(u.paper_noise_levels),
          'noise_levels_model': list(config.eval.noise_levels)}
