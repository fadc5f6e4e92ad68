"""Auto-PGD (APGD, Croce & Hein 2020) for the L2 and L∞ norms, with per-sample budgets.

APGD is PGD with momentum and a step size that adapts itself, so it needs no step-size tuning
("Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks", ICML 2020, Algorithm 1). For each sample, with P the projection onto the ε-ball around
the clean input x followed by the clip to the data range:

* start at x⁽⁰⁾ (x, or a uniform random point in the ball), step size η = 2ε;
* first step without momentum: x⁽¹⁾ = P(x⁽⁰⁾ + η·s(∇f(x⁽⁰⁾)));
* then z = P(x⁽ᵏ⁾ + η·s(∇f(x⁽ᵏ⁾))) and x⁽ᵏ⁺¹⁾ = P(x⁽ᵏ⁾ + α(z − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾)),
  with s = sign for L∞ and g/‖g‖₂ for L2, and momentum α (0.75);
* keep the best point seen (highest loss, the start point included) and count the successful
  steps, f(x⁽ᵏ⁺¹⁾) > f(x⁽ᵏ⁾), since the last checkpoint;
* at each checkpoint (see `checkpoint_schedule`), with L the number of steps since the previous
  one, halve η and move the iterate back to the best point when
  1. fewer than ρ·L of those L steps were successful (ρ = 0.75), or
  2. η was not halved at the previous checkpoint and the best loss has not increased since then
     (never at the first checkpoint).

Guarantees, for every sample i, as for the attacks of `robust_med.attacks`:

* ``‖x̃_i − x_i‖ ≤ eps_i`` in the attack's norm (up to float rounding): every iterate, the one
  after momentum included, is re-projected onto the ball;
* ``eps_i == 0`` leaves sample i unchanged, and the result lies in the clip range when one is given;
* the result is the best point found, so its loss is never below the start point's.

Conventions where the paper and the reference implementation (the `autoattack` package) leave a
choice:

* `steps` is the number of iterations (gradient steps); the loss and gradient are evaluated
  steps + 1 times, the start point included.
* Checkpoints follow the reference implementation's integer schedule (see `checkpoint_schedule`).
  It equals the paper's w_j = ⌈p_j·N⌉ (in exact arithmetic) when N is a multiple of 100, rounds
  the interval decrements down otherwise, and avoids float rounding in the ceiling (in floats,
  ⌈0.57·100⌉ = 58). The check with interval length L runs right after the step
  that completes those L steps, so condition 1 counts exactly L step outcomes.
* Condition 1 uses the paper's strict inequality, successes < ρ·L (the reference uses ≤).
* When η is halved, the previous iterate moves to the best point too, so no momentum from before
  the reset carries over (the reference keeps the pre-reset previous iterate).
* The random start is uniform in the ball (`attacks.random_in_ball`), as PGD's here is.
* `restarts` is only recorded (in `describe`); the caller runs and combines restarts.

The attack follows the iterative-attack protocol of `attacks.run_iterative` (`init`, `step`,
`result`); its state is an `APGDState` pytree, and `step` takes the iteration index as a possibly
traced int32, so the evaluator can run it as a host loop over jitted chunks of steps. Everything
is pure and jittable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from robust_med import attacks
from robust_med.attacks import LossFn, Norm


def checkpoint_schedule(steps: int) -> tuple[int, ...]:
  """Where APGD checks its progress: entry i is the interval length L when a checkpoint follows
  iteration i (0-based), else 0. Length `steps`.

  The reference implementation's integer version of the paper's checkpoints: the first interval
  is max(⌊0.22·N⌋, 1) iterations, each next one is shorter by max(⌊0.03·N⌋, 1), down to a minimum
  of max(⌊0.06·N⌋, 1). For N = 100: intervals 22, 19, 16, 13, 10, 7, 6, 6, that is checks after
  iterations 22, 41, 57, 70, 80, 87, 93 and 99 (1-based), the paper's w_j = ⌈p_j·N⌉.
  """
  steps = int(steps)
  interval = max(int(0.22 * steps), 1)
  decrease = max(int(0.03 * steps), 1)
  minimum = max(int(0.06 * steps), 1)
  schedule = [0] * steps
  done = interval
  while done <= steps:
    schedule[done - 1] = interval
    interval = max(interval - decrease, minimum)
    done += interval
  return tuple(schedule)


class APGDState(NamedTuple):
  """APGD's per-sample state; perturbations are relative to the clean batch x."""
  delta: jax.Array               # the current iterate x⁽ᵏ⁾ − x
  delta_prev: jax.Array          # the previous iterate x⁽ᵏ⁻¹⁾ − x (for the momentum)
  grad: jax.Array                # ∇f(x⁽ᵏ⁾)
  loss: jax.Array                # f(x⁽ᵏ⁾), (B,)
  delta_best: jax.Array          # the best point seen, − x
  grad_best: jax.Array           # the gradient there
  loss_best: jax.Array           # the loss there, (B,)
  eta: jax.Array                 # step size, (B,)
  successes: jax.Array           # successful steps since the last checkpoint, (B,) int32
  reduced_last: jax.Array        # η halved at the last checkpoint, (B,) bool
  loss_best_last_check: jax.Array  # best loss at the last checkpoint, (B,)


def _loss_and_grad(loss_fn: LossFn, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-sample losses (B,) and the input gradient of their sum."""
  def total(z):
    losses = loss_fn(z)
    return jnp.sum(losses), losses
  (_, losses), grad = jax.value_and_grad(total, has_aux=True)(x)
  return losses, grad


def _where(cond: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-sample select with a (B,) condition."""
  return jnp.where(cond.reshape(cond.shape[:1] + (1,) * (a.ndim - 1)), a, b)


@dataclasses.dataclass(frozen=True)
class APGDSettings:
  """A configured APGD (the budget is given per call); the protocol of `attacks.PGDSettings`."""
  norm: str = 'l2'
  steps: int = 100
  rho: float = 0.75        # checkpoint threshold on the fraction of successful steps
  momentum: float = 0.75   # α in the paper
  restarts: int = 1        # recorded only; the caller loops over restarts
  random_start: bool = True
  clip: tuple[float, float] | None = None
  # For the evaluator: the per-sample objective its loss_fn maximises ('loss': the task's loss;
  # else `Task.attack_objective`, e.g. 'dlr'), and for APGD-T the number of target classes, each
  # run once against the next most likely wrong class (0: untargeted).
  objective: str = 'loss'
  targets: int = 0

  def __post_init__(self):
    attacks._check_norm(self.norm)

  @classmethod
  def from_config(cls, c, clip=None) -> 'APGDSettings':
    """From a config section with norm and apgd_steps; APGD always starts at a random point."""
    clip = tuple(clip) if clip else None
    return cls(norm=c.norm, steps=c.apgd_steps, clip=clip)

  def _project(self, x: jax.Array, delta: jax.Array, eps_b: jax.Array) -> jax.Array:
    """P: onto the ε-ball, then into the data range; returns the new perturbation."""
    delta = attacks.project(delta, eps_b, self.norm)
    return attacks._apply(x, delta, self.clip) - x

  # The iterative-attack protocol of `attacks.run_iterative`.
  def init(self, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None) -> APGDState:
    attacks._check_norm(self.norm)
    eps_v = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    if self.random_start and key is not None:
      delta = attacks.random_in_ball(key, x, attacks.per_sample_eps(eps_v, x), self.norm)
      delta = attacks._apply(x, delta, self.clip) - x
    else:
      delta = jnp.zeros_like(x)
    loss, grad = _loss_and_grad(loss_fn, x + delta)
    b = x.shape[:1]
    return APGDState(delta=delta, delta_prev=delta, grad=grad, loss=loss, delta_best=delta,
                     grad_best=grad, loss_best=loss, eta=2.0 * eps_v,
                     successes=jnp.zeros(b, jnp.int32), reduced_last=jnp.ones(b, bool),
                     loss_best_last_check=loss)

  def step(self, loss_fn: LossFn, x: jax.Array, state: APGDState, eps, i) -> APGDState:
    s = state
    eps_b = attacks.per_sample_eps(eps, x)
    eta = attacks.per_sample_eps(s.eta, x)
    # The step: a projected gradient step, then momentum (none on the first step), re-projected.
    z = self._project(x, s.delta + eta * attacks.steepest_direction(s.grad, self.norm), eps_b)
    alpha = jnp.where(i == 0, 1.0, self.momentum).astype(x.dtype)
    delta = s.delta + alpha * (z - s.delta) + (1 - alpha) * (s.delta - s.delta_prev)
    delta = self._project(x, delta, eps_b)
    loss, grad = _loss_and_grad(loss_fn, x + delta)
    successes = s.successes + (loss > s.loss).astype(jnp.int32)
    better = loss > s.loss_best
    delta_best = _where(better, delta, s.delta_best)
    grad_best = _where(better, grad, s.grad_best)
    loss_best = jnp.where(better, loss, s.loss_best)
    delta_prev = s.delta

    # The checkpoint after iteration i, if there is one (L = 0: none).
    schedule = jnp.asarray(checkpoint_schedule(self.steps) + (0,), jnp.int32)
    length = schedule[i]
    check = length > 0
    too_few = successes.astype(jnp.float32) < self.rho * length.astype(jnp.float32)
    stalled = ~s.reduced_last & (loss_best <= s.loss_best_last_check)
    reduce = check & (too_few | stalled)
    return APGDState(
        delta=_where(reduce, delta_best, delta),
        delta_prev=_where(reduce, delta_best, delta_prev),
        grad=_where(reduce, grad_best, grad),
        loss=jnp.where(reduce, loss_best, loss),
        delta_best=delta_best, grad_best=grad_best, loss_best=loss_best,
        eta=jnp.where(reduce, 0.5 * s.eta, s.eta),
        successes=jnp.where(check, 0, successes),
        reduced_last=jnp.where(check, reduce, s.reduced_last),
        loss_best_last_check=jnp.where(check, loss_best, s.loss_best_last_check))

  def result(self, x: jax.Array, state: APGDState) -> jax.Array:
    return x + state.delta_best


  def __call__(self, loss_fn: LossFn, x: jax.Array, eps, key: jax.Array | None = None,
               unroll: bool | None = None) -> jax.Array:
    return attacks.run_iterative(self, loss_fn, x, eps, key=key, unroll=unroll)

  def describe(self) -> dict[str, Any]:
    """What a report records so a number never travels without the attack that produced it."""
    name = 'apgd' + ('-t' if self.targets else '') + (
        f'-{self.objective}' if self.objective != 'loss' else '') + f'-{self.steps}'
    extra = {'objective': self.objective, 'targets': self.targets} if (
        self.targets or self.objective != 'loss') else {}
    return {'name': name, 'norm': self.norm, 'steps': self.steps, **extra,
            'step_size': (f'adaptive: 2*eps halved at checkpoints (rho={self.rho}, '
                          f'momentum={self.momentum})'),
            'restarts': self.restarts, 'random_start': self.random_start,
            'data_range': list(self.clip) if self.clip else 'unbounded (no clipping)'}


# A pytree of static fields only (the checkpoint schedule needs `steps` at trace time), so that
# the evaluator can pass any iterative attack to its jitted loop as an argument.
jax.tree_util.register_dataclass(APGDSettings, data_fields=[],
                                 meta_fields=[f.name for f in dataclasses.fields(APGDSettings)])


def apgd(loss_fn: LossFn,
         x: jax.Array,
         eps,
         *,
         norm: Norm = 'l2',
         steps: int = 100,
         key: jax.Array | None = None,
         clip: tuple[float, float] | None = None,
         rho: float = 0.75,
         momentum: float = 0.75,
         unroll: bool | None = None) -> jax.Array:
  """APGD on `loss_fn` inside per-sample ε-balls (see the module docstring).

  Args:
    loss_fn: maps a batch (B, ...) to per-sample losses (B,) to increase.
    x: the clean batch.
    eps: budget, a scalar or a (B,) vector; must be ≥ 0.
    norm: 'l2' or 'linf'.
    steps: number of iterations.
    key: when given, start from a uniform random point in the ball; else start at `x`.
    clip: optional (lo, hi) data range the perturbed batch is clipped to.
    rho: checkpoint threshold on the fraction of successful steps.
    momentum: α, the weight of the new projected step against the previous step.
    unroll: Python-unrolled loop (True) or `lax.fori_loop` (False); default
      `attacks.default_unroll()`.

  Returns:
    The best perturbed batch found, same shape and dtype as `x`.
  """
  settings = APGDSettings(norm=norm, steps=steps, rho=rho, momentum=momentum,
                          random_start=key is not None, clip=clip)
  return settings(loss_fn, x, eps, key=key, unroll=unroll)
