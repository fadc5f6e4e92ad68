"""Mixed precision: a model run in bfloat16 while everything around it stays float32.

`compute_dtype(model, 'bfloat16')` wraps any head's Flax model so that each `apply` casts the
parameters and the input to bfloat16 and the outputs back to float32. The parameters, their
gradients and the optimizer state stay float32 (the casts are differentiable), and so do the
losses, the attacks' arithmetic (steps, projections, clipping) and AMAT's margins: only the
network's own convolutions and matmuls run in the low precision. `init` is the wrapped model's,
so checkpoints are the same either way. Meant for GPUs and TPUs (on CPU bfloat16 convolutions
are emulated and slower). Set with `config.model.compute_dtype`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ('float32', 'bfloat16')


def _cast(tree: Any, dtype) -> Any:
  """Floating-point arrays of `tree` as `dtype`; everything else unchanged."""
  def cast(a):
    if hasattr(a, 'dtype') and jnp.issubdtype(a.dtype, jnp.floating):
      return a.astype(dtype)
    return a
  return jax.tree.map(cast, tree)


class MixedPrecision:
  """`model` applied in `dtype`, with float32 parameters, inputs and outputs (see the module
  docstring). Every other attribute is the wrapped model's."""

  def __init__(self, model, dtype: str):
    self.model, self.dtype = model, jnp.dtype(dtype)

  def init(self, *args, **kwargs):
    return self.model.init(*args, **kwargs)

  def apply(self, variables, *args, **kwargs):
    out = self.model.apply(_cast(variables, self.dtype), *_cast(args, self.dtype), **kwargs)
    return _cast(out, jnp.float32)

  def __getattr__(self, name: str):
    return getattr(self.model, name)

  def __repr__(self) -> str:
    return f'MixedPrecision({self.model!r}, {self.dtype.name})'


def compute_dtype(model, dtype: str = 'float32'):
  """`model` itself for float32, else `model` wrapped to compute in `dtype`."""
  if dtype not in COMPUTE_DTYPES:
    raise ValueError(f'compute dtype {dtype!r}: use one of {COMPUTE_DTYPES}')
  return model if dtype == 'float32' else MixedPrecision(model, dtype)


def build_model(task, info):
  """The head's model for the data `info`, computing in `task.config.model.compute_dtype`."""
  return compute_dtype(task.build_model(info), task.config.model.get('compute_dtype', 'float32'))
