"""Sanity checks that catch gradient masking in a robustness evaluation.

Sanity checks that catch gradient masking in a robustness evaluation (Carlini et al. 2019,
"On Evaluating Adversarial Robustness", §5 and appendix checklist).

A model that hides its gradients (quantised or saturated inputs, non-differentiable layers) looks
robust to gradient attacks without being robust. Each check compares curves a correct evaluation
must order in a known way; a violation larger than the tolerance fails the check. The checks only
read metric curves (rows `{'eps': e, <metric>: value}`), so they apply unchanged to every task head.

Tolerances are fractions of the span between the clean metric and the metric's floor, so they mean
the same for a Dice score and for a landmark error in millimetres.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Rows = Sequence[dict]

CHECKS = {
    'monotone_in_eps': 'the metric does not improve as the noise budget grows',
    'more_steps_not_weaker': 'the long attack is at least as damaging as the same attack with '
                             'fewer steps',
    'random_noise_weaker': 'random noise of the same norm and size is less damaging than the '
                           'attack',
    'huge_eps_reaches_floor': 'a very large budget drives the metric close to its floor (or '
                              'past it)',
}
# Run only when the report has a gradient-free curve (config.eval.attacks with 'square') or a
# transfer curve (config.eval.transfer_from).
OPTIONAL_CHECKS = {
    'gradient_free_weaker': 'the gradient attacks\' per-sample worst case is at least as '
                            'damaging as the gradient-free search (Square)',
    'transfer_weaker': 'the white-box gradient attacks\' per-sample worst case is at least as '
                       'damaging as the same attack crafted on another model (transfer)',
}
# The physical report's checks (robust_med.physical_report).
PHYSICAL_CHECKS = {
    'random_parameters_weaker': 'the worst of random parameters spending the same budget is less '
                                'damaging than the attack on the parameters',
    'stronger_attack_not_better': 'an attack with more steps and random restarts, at the largest '
                                  'budget, is not more damaging than the reported worst case (the '
                                  'search has converged)',
}


def _damage(value: float, clean: float, higher_is_better: bool) -> float:
  """How much worse than clean a metric value is (positive = worse), whatever its direction."""
  return clean - value if higher_is_better else value - clean


def _curve(rows: Rows, metric: str) -> tuple[list[float], list[float]]:
  rows = sorted(rows, key=lambda r: r['eps'])
  return [float(r['eps']) for r in rows], [float(r[metric]) for r in rows]


def _entry(name: str, passed: bool, **figures) -> dict:
  return {'name': name, 'passed': bool(passed),
          'description': {**CHECKS, **OPTIONAL_CHECKS, **PHYSICAL_CHECKS}[name],
          'figures': figures}


def compare_curves(check: str, reference: Rows, reference_name: str, other: Rows,
                   other_name: str, *, metric: str, clean: float, higher_is_better: bool,
                   tolerance: float) -> dict:
  """Check `check` passes when, at every nonzero budget both curves have, `other` is at most
  `tolerance` (absolute, in the metric's unit) more damaging than `reference`."""
  eps, values = _curve(reference, metric)
  other_by_eps = dict(zip(*_curve(other, metric)))
  gaps = []
  for e, v in zip(eps, values):
    if e > 0 and e in other_by_eps:
      # > 0 when the reference is the less damaging one.
      gap = _damage(other_by_eps[e], clean, higher_is_better) - _damage(v, clean,
                                                                        higher_is_better)
      gaps.append((gap, e, v, other_by_eps[e]))
  worst = max(gaps, default=(0.0, None, None, None))
  return _entry(check, worst[0] <= tolerance, tolerance=tolerance,
                largest_shortfall=round(worst[0], 6), at_eps=worst[1],
                **{reference_name: worst[2], other_name: worst[3]})


def run_checks(*, metric: str, higher_is_better: bool, floor: float, clean: float,
               curves: dict[str, Rows], strong: str, weak: Rows, weak_name: str,
               random: Rows, huge: dict, tolerance: float = 0.02,
               floor_tolerance: float = 0.1, floor_metric: str = '',
               floor_clean: float | None = None, gradient_free: Rows | None = None,
               gradient_free_name: str = '', white_box: str = '',
               transfer: Rows | None = None, transfer_name: str = '') -> list[dict]:
  """The four named checks, each `{'name', 'passed', 'description', 'figures'}`, then
  `gradient_free_weaker` when the report has a gradient-free curve (`gradient_free`, named
  `gradient_free_name`) and `transfer_weaker` when it has a transfer curve (`transfer`, named
  `transfer_name`), each compared with the white-box attacks' worst case (`curves[white_box]`).

  Args:
    metric: the primary metric's name in the rows.
    higher_is_better: its direction (Dice: True; landmark error: False).
    floor: the metric of a useless model.
    clean: the metric without noise.
    curves: every attack curve of the report by name (each checked for monotonicity, except the
      gradient-free and transfer curves).
    strong: the name in `curves` of the long attack (e.g. 'pgd-100').
    weak: the same attack with fewer steps, at the same noise levels.
    weak_name: its name (e.g. 'pgd-20').
    random: random noise of norm exactly ε at the same noise levels.
    huge: `{'eps': e, metric: value}` under the attack at a very large budget.
    tolerance: allowed violation, as a fraction of |clean − floor|.
    floor_tolerance: how close to the floor `huge` must get, as a fraction of |clean − floor|.
    floor_metric: the metric the huge-budget check reads, when not `metric` (a head whose primary
      metric has no input-independent floor names one that has; `floor` is then its floor, in
      the same direction as `metric`).
    floor_clean: that metric without noise (needed with `floor_metric`).
  """
  span = abs(clean - floor)
  tol = tolerance * span + 1e-6
  checks = []

  # A white-box attack searches a larger ball at least as well as a smaller one, so its curve
  # (and the worst case over every attack) must not improve as ε grows. Square at a fixed
  # query budget and a perturbation crafted on another model promise no such thing: their dips
  # say nothing about this model's gradients, and both are held to the white-box worst case by
  # their own checks below.
  exempt = [n for n in (gradient_free_name, transfer_name) if n and n in curves]
  rises = {}
  for name, rows in curves.items():
    if name in exempt:
      continue
    eps, values = _curve(rows, metric)
    damage = [_damage(v, clean, higher_is_better) for v in values]
    steps = [(damage[i] - damage[i + 1], eps[i + 1]) for i in range(len(damage) - 1)]
    worst = max(steps, default=(0.0, None))
    rises[name] = {'largest_improvement': round(worst[0], 6), 'at_eps': worst[1]}
  checks.append(_entry('monotone_in_eps',
                       all(r['largest_improvement'] <= tol for r in rises.values()),
                       tolerance=tol, curves=rises,
                       **({'not_checked': exempt} if exempt else {})))

  def compare(other: Rows, other_name: str, check: str, reference: str = strong) -> dict:
    return compare_curves(check, curves[reference], reference, other, other_name, metric=metric,
                          clean=clean, higher_is_better=higher_is_better, tolerance=tol)

  checks.append(compare(weak, weak_name, 'more_steps_not_weaker'))
  checks.append(compare(random, 'random noise', 'random_noise_weaker'))

  name = floor_metric or metric
  start = clean if not floor_metric else float(floor_clean)
  value = float(huge[name])
  # One-sided: an unbounded error (e.g. landmark MRE in mm) may go past a useless model's value.
  distance = max(0.0, _damage(floor, start, higher_is_better) - _damage(value, start,
                                                                       higher_is_better))
  allowed = floor_tolerance * abs(start - floor)
  figures = {'metric_name': name} if floor_metric else {}
  checks.append(_entry('huge_eps_reaches_floor', distance <= allowed + 1e-6,
                       eps=huge['eps'], **figures, metric=value, floor=floor, clean=start,
                       allowed_distance=allowed))
  if gradient_free is not None:
    checks.append(compare(gradient_free, gradient_free_name, 'gradient_free_weaker',
                          white_box or strong))
  if transfer is not None:
    checks.append(compare(transfer, transfer_name, 'transfer_weaker', white_box or strong))
  return checks


def warnings_for(checks: list[dict]) -> list[str]:
  """One line per failed check, for the report and the console."""
  out = []
  for c in checks:
    if not c['passed']:
      figures = ', '.join(f'{k}={v}' for k, v in c['figures'].items() if k != 'curves')
      if c['name'] == 'monotone_in_eps':
        tol = c['figures']['tolerance']
        figures = ', '.join(f'{k}: {v["largest_improvement"]:+} at ε={v["at_eps"]}'
                            for k, v in c['figures']['curves'].items()
                            if v['largest_improvement'] > tol) + f' (tolerance {tol:.6g})'
      line = (f'gradient-masking check {c["name"]} failed ({c["description"]} does not hold: '
              f'{figures}); the robustness numbers may overstate robustness.')
      if c['name'] in OPTIONAL_CHECKS:
        what = 'Square' if c['name'] == 'gradient_free_weaker' else 'the transfer attack'
        line = line[:-1] + f': the per-sample worst case over every attack, {what} included, ' \
            'is the robust figure.'
      out.append(line)
  return out


def auto_huge_eps(images: np.ndarray, norm: str, clip=None) -> float:
  """A budget that can replace an image by anything of ten times its own scale: 10·s per pixel
  for L∞ and 10·s·√D for L2, where s is the data range (`clip`) or the pixel standard deviation."""
  scale = (clip[1] - clip[0]) if clip else float(np.std(images))
  scale = 10.0 * max(scale, 1e-6)
  if norm == 'l2':
    return float(scale * np.sqrt(np.prod(images.shape[1:])))
  return float(scale)
