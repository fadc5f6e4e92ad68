"""Per-patch attacks: the cheaper variant of a whole-volume attack.

A whole-volume attack on a model that predicts through a sliding window follows the gradient of
a loss on the stitched prediction: every step runs the model on every overlapping window (with
nnU-Net's half-window overlap, about 2^d windows per patch-sized tile of a d-dimensional volume)
and back. The per-patch variant cuts each sample into non-overlapping `patch`-sized tiles (the
last ones padded, the padding never perturbed), attacks each tile on its own — the model applied
to the tile alone, the loss on the tile's own labels — and puts the perturbed tiles back. It
costs one model pass per tile and step, and its gradients ignore the windows' overlap and the
context a tile lends its neighbours, so it is weaker than the whole-volume attack: a lower
bound on what the budget can do, reported under its own name (`patch-pgd-…`).

The budget stays the sample's: under L∞ every voxel moves at most ε; under L2 the tile holding
n_t of the sample's N perturbable voxels gets ε·√(n_t / N), so the tiles' perturbations together
have norm at most ε (Σ_t ε²·n_t/N = ε²).

Tiling works on any batch: arrays whose dims after the first are the images' spatial dims
(labels, masks) are cut like the images; every other array (ids, targets) is repeated per tile.
A batch without an `in_image` mask gets one (True on the sample, False on the tiles' padding).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import attacks
from robust_med.errors import ConfigError

MASK = 'in_image'  # The batch key of the perturbable-voxel mask (tasks.base.within_image's).


def grid(spatial: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
  """Tiles per spatial axis: ⌈size / patch⌉."""
  if len(spatial) != len(patch) or min(patch) < 1:
    raise ConfigError(f'a per-patch attack with tiles {tuple(patch)} on inputs of spatial shape '
                      f'{tuple(spatial)}: set config.eval.patch_attack_size to {len(spatial)} '
                      'positive sizes, or () for the model\'s training patch.')
  return tuple(-(-int(s) // int(p)) for s, p in zip(spatial, patch))


def to_tiles(a: jax.Array, patch: Sequence[int]) -> jax.Array:
  """(B, *spatial, *rest) → (B·T, *patch, *rest), the T tiles of each sample in row-major order,
  the last tiles of each axis padded with zeros (False)."""
  nd = len(patch)
  spatial, rest = a.shape[1:1 + nd], a.shape[1 + nd:]
  counts = grid(spatial, patch)
  pad = [(0, 0)] + [(0, n * p - s) for n, p, s in zip(counts, patch, spatial)]
  a = jnp.pad(a, pad + [(0, 0)] * len(rest))
  split = [a.shape[0]] + [v for n, p in zip(counts, patch) for v in (n, p)] + list(rest)
  a = a.reshape(split)
  order = [0] + [1 + 2 * i for i in range(nd)] + [2 + 2 * i for i in range(nd)]
  order += list(range(1 + 2 * nd, a.ndim))
  return a.transpose(order).reshape((-1, *patch, *rest))


def from_tiles(t: jax.Array, spatial: Sequence[int]) -> jax.Array:
  """The inverse of `to_tiles`: (B·T, *patch, *rest) → (B, *spatial, *rest), padding cropped."""
  patch = t.shape[1:1 + len(spatial)]
  rest = t.shape[1 + len(spatial):]
  counts = grid(spatial, patch)
  nd = len(patch)
  a = t.reshape((-1, *counts, *patch, *rest))
  order = [0] + [v for i in range(nd) for v in (1 + i, 1 + nd + i)]
  order += list(range(1 + 2 * nd, a.ndim))
  a = a.transpose(order).reshape((a.shape[0], *(n * p for n, p in zip(counts, patch)), *rest))
  return a[(slice(None), *(slice(0, s) for s in spatial))]


def tile_batch(batch: dict, patch: Sequence[int]) -> dict:
  """`batch` cut into tiles (module docstring), with the perturbable-voxel mask."""
  x = batch['image']
  spatial = x.shape[1:1 + len(patch)]
  tiles = int(np.prod(grid(spatial, patch)))
  mask = batch.get(MASK)
  if mask is None:
    mask = jnp.ones(x.shape[:1 + len(patch)], bool)
  out = {MASK: to_tiles(mask, patch)}
  for key, value in batch.items():
    if key == MASK:
      continue
    if value.ndim > len(patch) and tuple(value.shape[1:1 + len(patch)]) == tuple(spatial):
      out[key] = to_tiles(value, patch)
    else:
      out[key] = jnp.repeat(value, tiles, axis=0)
  return out


def tile_budgets(eps: jax.Array, mask_tiles: jax.Array, tiles: int, norm: str) -> jax.Array:
  """Each tile's budget (B·T,) from the samples' (B,) `eps`: ε under L∞; under L2
  ε·√(n_t / N), n_t the tile's perturbable voxels and N its sample's."""
  eps_t = jnp.repeat(jnp.asarray(eps), tiles)
  if norm == 'linf':
    return eps_t
  n = jnp.sum(mask_tiles.reshape(mask_tiles.shape[0], -1), axis=1).astype(eps_t.dtype)
  total = jnp.repeat(jnp.sum(n.reshape(-1, tiles), axis=1), tiles)
  return eps_t * jnp.sqrt(n / jnp.maximum(total, 1.0))


@dataclasses.dataclass(frozen=True, eq=False)
class PerPatch(attacks.OnBase):
  """`base` (an iterative attack: PGD, APGD) run on each `patch`-sized tile on its own, with the
  sample's budget split over the tiles (module docstring). `patch` () means the model's own
  training patch (a sliding-window model's `patch`). The evaluator runs it
  (`evaluate.Evaluator.perturb`)."""
  base: Any
  patch: tuple[int, ...] = ()

  @property
  def clip(self):
    return getattr(self.base, 'clip', None)

  def describe(self) -> dict[str, Any]:
    d = self.base.describe()
    return {**d, 'name': f'patch-{d["name"]}',
            'patch': list(self.patch) if self.patch else "the model's training patch",
            'budget': ('per sample: each non-overlapping tile attacked alone, L∞ ε per voxel, '
                       'L2 ε·sqrt(tile voxels / sample voxels) per tile')}

  def resolve(self, model) -> 'PerPatch':
    """This attack with its patch set (the model's `patch` when not given)."""
    if self.patch:
      return self
    patch = getattr(model, 'patch', None)
    if not patch:
      raise ConfigError("eval.attacks has 'pgd_patch' but the model has no training patch (not "
                        'a sliding-window model): set config.eval.patch_attack_size to the tile '
                        'size, e.g. (64, 64), or drop pgd_patch.')
    return dataclasses.replace(self, patch=tuple(int(p) for p in patch))


def tiles_per_sample(spatial: Sequence[int], patch: Sequence[int]) -> int:
  return math.prod(grid(spatial, patch))
