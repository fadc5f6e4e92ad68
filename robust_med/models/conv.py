"""A convolution whose input gradient XLA:CPU runs as fast inside loops as outside.

A convolution with the same values and gradients as `lax.conv_general_dilated`, whose input
gradient XLA:CPU runs as fast inside a loop as outside one.

JAX transposes a convolution with respect to its input as a convolution of the reversed kernel
with the kernel's input and output features swapped in the dimension numbers (`01oi`). Outside a
loop XLA:CPU copies that kernel into the layout its fast convolutions take; inside a
`fori_loop`/`scan` body it does not, and runs a generic convolution instead: measured on the
segmentation demo's U-Net, an attack step inside `fori_loop` took 3-4x as long as unrolled, nearly
all of it in these convolutions (`benchmarks/profile.py`; see benchmarks/README.md). Here the
input gradient is the same convolution with the reversed kernel materialised in the forward
layout (`jnp.flip` + swapaxes), which XLA runs on its fast path in either form; the kernel
gradient is JAX's own. Every model's `Conv` uses it, so attacks can loop (seconds to compile,
no host round trip per chunk) without running slower.

On XLA:CPU a 3-D convolution (volumes) runs as a 2-D one over depth-stacked taps
(`_volume_as_slices`): XLA:CPU's 3-D convolutions take a slow generic path.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7, 8, 9, 10))
def _conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
          feature_group_count, batch_group_count, precision, preferred_element_type):
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, batch_group_count,
                                  precision, preferred_element_type)


def _conv_fwd(lhs, rhs, *static):
  return _plain(lhs, rhs, static), (lhs, rhs)


def _conv_bwd(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, precision, preferred_element_type, res, g):
  lhs, rhs = res
  static = (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
  _, rhs_vjp = jax.vjp(lambda r: _plain(lhs, r, static), rhs)
  (d_rhs,) = rhs_vjp(g)
  return _lhs_grad(g, lhs, rhs, static), d_rhs


def _plain(lhs, rhs, static):
  return lax.conv_general_dilated(lhs, rhs, *static)


def _lhs_grad(g, lhs, rhs, static):
  """d lhs of the convolution: `g` convolved with the spatially reversed kernel, input and output
  features swapped in memory (not in the dimension numbers), window strides as input dilation."""
  (window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
   batch_group_count, precision, preferred_element_type) = static
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lhs_spec, rhs_spec, out_spec = dn
  nd = len(lhs_spec) - 2
  lhs_dilation = lhs_dilation or (1,) * nd
  rhs_dilation = rhs_dilation or (1,) * nd
  if feature_group_count != 1 or batch_group_count != 1 or any(d != 1 for d in lhs_dilation):
    _, lhs_vjp = jax.vjp(lambda x: _plain(x, rhs, static), lhs)
    return lhs_vjp(g)[0]
  in_spatial = [lhs.shape[d] for d in lhs_spec[2:]]
  window = [rhs.shape[d] for d in rhs_spec[2:]]
  out_spatial = [g.shape[d] for d in out_spec[2:]]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(in_spatial, _dilate(window, rhs_dilation), window_strides,
                                  padding)
  k_dil = _dilate(window, rhs_dilation)
  out_dil = _dilate(out_spatial, window_strides)
  before = [k - lo - 1 for k, (lo, _) in zip(k_dil, padding)]
  after = [i + k - 1 - o - b for i, k, o, b in zip(in_spatial, k_dil, out_dil, before)]
  # The kernel reversed in space, its O and I axes exchanged in memory, so the transposed
  # convolution keeps the forward dimension numbers' kernel layout.
  kernel = jnp.flip(rhs, axis=tuple(rhs_spec[2:]))
  kernel = jnp.swapaxes(kernel, rhs_spec[0], rhs_spec[1])
  return lax.conv_general_dilated(
      g, kernel, (1,) * nd, list(zip(before, after)), lhs_dilation=tuple(window_strides),
      rhs_dilation=tuple(rhs_dilation),
      dimension_numbers=lax.ConvDimensionNumbers(out_spec, rhs_spec, lhs_spec),
      precision=precision, preferred_element_type=preferred_element_type).astype(lhs.dtype)


def _dilate(shape: Sequence[int], dilation: Sequence[int]) -> list[int]:
  return [0 if s == 0 else 1 + d * (s - 1) for s, d in zip(shape, dilation)]


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`, same signature and values, with the loop-friendly input
  gradient described in the module docstring."""
  as_tuple = lambda v: None if v is None else tuple(v)
  if not isinstance(padding, str):
    padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if dimension_numbers is not None and not isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    dimension_numbers = tuple(dimension_numbers)
  static = (tuple(window_strides), padding, as_tuple(lhs_dilation), as_tuple(rhs_dilation),
            dimension_numbers, int(feature_group_count), int(batch_group_count), precision,
            preferred_element_type)
  if _volume_on_cpu(lhs, rhs, static):
    return _volume_as_slices(lhs, rhs, static)
  return _conv(lhs, rhs, *static)


_CHANNELS_LAST_3D = ('NDHWC', 'DHWIO', 'NDHWC')


def _volume_on_cpu(lhs, rhs, static) -> bool:
  """Whether a convolution is a plain channels-last 3-D one (no dilation, no groups) traced
  for XLA:CPU, which `_volume_as_slices` runs faster."""
  (_, _, lhs_dilation, rhs_dilation, dimension_numbers, groups, batch_groups, _, _) = static
  if jnp.ndim(lhs) != 5 or jax.default_backend() != 'cpu' or groups != 1 or batch_groups != 1:
    return False
  if any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())):
    return False
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return dn == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST_3D)


def _volume_as_slices(lhs, rhs, static):
  """A channels-last 3-D convolution as one 2-D convolution: the kd depth taps of every output
  depth stacked on the channels, depths folded into the batch. XLA:CPU has fast 2-D convolutions
  but runs 3-D ones through a generic loop; this form was about 4× faster forward and backward
  on the 3-D U-Net's layers (benchmarks/README.md, 3-D U-Net step). Same values up to float
  rounding (the sum runs in another order); the 2-D convolution keeps the loop-friendly input
  gradient above."""
  (strides, padding, _, _, _, _, _, precision, preferred) = static
  b, depth, h, w, c = lhs.shape
  kd, kh, kw, _, f = rhs.shape
  if isinstance(padding, str):
    padding = lax.padtype_to_pads((depth, h, w), (kd, kh, kw), strides, padding)
  (lo, hi), pad_hw = padding[0], tuple(padding[1:])
  sd = strides[0]
  out_depth = (depth + lo + hi - kd) // sd + 1
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), (lo, hi, 0), (0, 0, 0), (0, 0, 0),
                                              (0, 0, 0)])
  taps = [lax.slice_in_dim(x, t, t + sd * (out_depth - 1) + 1, sd, axis=1) for t in range(kd)]
  x = jnp.concatenate(taps, axis=-1).reshape(b * out_depth, h, w, kd * c)
  kernel = jnp.transpose(rhs, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * c, f)
  y = _conv(x, kernel, tuple(strides[1:]), pad_hw, None, None, ('NHWC', 'HWIO', 'NHWC'), 1, 1,
            precision, preferred)
  return y.reshape(b, out_depth, *y.shape[1:])


class Conv(nn.Conv):
  """`flax.linen.Conv` (same parameters and names) with `conv_general_dilated` above."""
  conv_general_dilated: object = conv_general_dilated



class ConvTranspose(nn.Module):
  """`flax.linen.ConvTranspose` with kernel size = strides (a U-Net's up-sampling: each input
  voxel becomes a block of output voxels), same parameters, names and initialisation, computed
  as one matrix product: out[s·i + t] = x[i] · K[s − 1 − t] (flax's transposed convolution flips
  the kernel). XLA:CPU ran flax's form as a dilated convolution whose gradient was about 10×
  slower in 2-D (forward and backward of 16×64×64×32 → 16: 0.45 s vs 0.04 s) and whose 3-D
  forward was about 90× slower. Same values up to float rounding. Padding is that of 'SAME' and
  'VALID' alike (with kernel = strides both give s × the input size)."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | None = None
  use_bias: bool = True
  kernel_init: object = nn.initializers.lecun_normal()
  bias_init: object = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    window = tuple(int(k) for k in self.kernel_size)
    strides = tuple(int(s) for s in (self.strides or window))
    nd = len(window)
    if strides != window or x.ndim != nd + 2:
      raise ValueError(f'ConvTranspose here takes kernel size = strides and (B, *{nd} spatial, '
                       f'C) inputs; got kernel {window}, strides {strides}, input {x.shape}: '
                       'use flax.linen.ConvTranspose.')
    kernel = self.param('kernel', self.kernel_init, window + (x.shape[-1], self.features))
    kernel = jnp.flip(kernel, axis=tuple(range(nd))).astype(x.dtype)
    # x (B, *S, C) · K (*T, C, F) → (B, S0, T0, S1, T1, ..., F) → (B, S0·T0, S1·T1, ..., F).
    letters = 'dhwe'[:nd], 'pqrs'[:nd]
    spatial = ''.join(a + b for a, b in zip(*letters))
    y = jnp.einsum(f'n{letters[0]}c,{letters[1]}cf->n{spatial}f', x, kernel)
    y = y.reshape(x.shape[0], *[s * t for s, t in zip(x.shape[1:-1], window)], self.features)
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,)).astype(x.dtype)
    return y
