"""PyTorch twins of robust_med's Flax models, with the weights copied from Flax params.

For benchmarks that run a PyTorch attack library (torchattacks) on exactly the network robust_med
attacks: `from_flax(flax_model, params)` builds the twin of a `UNet`, `MultiTaskUNet`,
`ResNetClassifier` or `Detector` and copies every Flax parameter into it (each one exactly once,
or it raises), and `check_equal` / `check_grad` measure how far the twin's outputs and input
gradients are from Flax's on a given input.

The twins take NCHW float32 inputs and return NCHW outputs (the Detector's flat (B, A, ...) outputs
come in the anchor order of `robust_med.models.yolo.anchor_points`, as in Flax). Conventions that
need care when mirroring Flax:

* Parameter names: every twin registers its children under the names Flax's compact modules give
  them (`Conv_0`, `ConvBlock_3`, `stage1_block0`, ...), in the order Flax constructs them, so the
  copy is a walk over the torch module tree. Flax names a module when it is constructed, so in
  `Conv(f)(Conv(f)(x))` the outer one (applied second) is `Conv_k` and the inner `Conv_k+1`; and
  yolo's `Conv` block and `nn.Conv` share the `Conv_` counter.
* Padding 'SAME' is XLA's: total padding max((ceil(n/s) - 1)·s + k - n, 0), the odd pixel at the
  end. For a stride-2 3×3 convolution of an even size that is (0, 1), which torch's symmetric
  `padding=1` does not reproduce; `Conv2d` pads explicitly where the padding is asymmetric.
* `nn.ConvTranspose` (kernel 2, stride 2, 'SAME', no `transpose_kernel`) computes
  out[2i + t] = x[i]·K[1 - t]: torch's `ConvTranspose2d` weight (in, out, kH, kW) is the Flax kernel
  (kH, kW, in, out) flipped in both spatial axes.
* `nn.InstanceNorm` is a group norm with one channel per group (epsilon 1e-5 in robust_med); the
  ResNet's `nn.GroupNorm` keeps Flax's default epsilon 1e-6, the Detector's uses 1e-5.
* `jax.image.resize(..., 'nearest')` by exactly 2× repeats each pixel, as `F.interpolate` does.
"""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust_med.models import resnet as flax_resnet
from robust_med.models import unet as flax_unet
from robust_med.models import yolo as flax_yolo

# --------------------------------------------------------------------------------------------
# Layers with Flax semantics.


class Conv2d(nn.Conv2d):
  """Flax `nn.Conv` with padding 'SAME' as XLA computes it (asymmetric where it must be)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
               bias: bool = True):
    super().__init__(in_channels, out_channels, kernel, stride, padding=0, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (kh, kw), (sh, sw) = self.kernel_size, self.stride
    (lo_h, hi_h), (lo_w, hi_w) = (_same_padding(x.shape[2], kh, sh),
                                  _same_padding(x.shape[3], kw, sw))
    if lo_h == hi_h and lo_w == hi_w:  # symmetric: let the convolution pad
      return F.conv2d(x, self.weight, self.bias, self.stride, (lo_h, lo_w))
    return F.conv2d(F.pad(x, (lo_w, hi_w, lo_h, hi_h)), self.weight, self.bias, self.stride)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class _FlaxNamed(nn.Module):
  """A module whose children get Flax's compact auto-names (`Conv_0`, `Conv_1`, `ConvBlock_0`...)
  in the order they are added, or an explicit name."""

  def __init__(self):
    super().__init__()
    self._counts: dict[str, int] = {}

  def child(self, kind: str, module: nn.Module, name: str | None = None) -> nn.Module:
    if name is None:
      index = self._counts.get(kind, 0)
      self._counts[kind] = index + 1
      name = f'{kind}_{index}'
    self.add_module(name, module)
    return module


# --------------------------------------------------------------------------------------------
# robust_med.models.unet


class ConvBlock(_FlaxNamed):
  """conv 3×3 (no bias) – instance norm – leaky ReLU(0.01)."""

  def __init__(self, in_channels: int, features: int, strides: int = 1):
    super().__init__()
    self.parts = SimpleNamespace(
        conv=self.child('Conv', Conv2d(in_channels, features, 3, strides, bias=False)),
        norm=self.child('InstanceNorm', nn.GroupNorm(features, features, eps=1e-5)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(self.parts.norm(self.parts.conv(x)), 0.01)


class _UNetTrunk(_FlaxNamed):
  """`unet_trunk`: its layers are the calling model's children, as in Flax."""

  def __init__(self, in_channels: int, features: Sequence[int]):
    super().__init__()
    self.down, channels = [], in_channels
    for level, f in enumerate(features):
      self.down.append((self.child('ConvBlock', ConvBlock(channels, f, 1 if level == 0 else 2)),
                        self.child('ConvBlock', ConvBlock(f, f))))
      channels = f
    self.up = []
    for f in reversed(features[:-1]):
      self.up.append((self.child('ConvTranspose', nn.ConvTranspose2d(channels, f, 2, 2)),
                      self.child('ConvBlock', ConvBlock(2 * f, f)),
                      self.child('ConvBlock', ConvBlock(f, f))))
      channels = f

  def trunk(self, x: torch.Tensor) -> torch.Tensor:
    skips = []
    for first, second in self.down:
      x = second(first(x))
      skips.append(x)
    for (upsample, first, second), skip in zip(self.up, reversed(skips[:-1])):
      x = second(first(torch.cat([upsample(x), skip], dim=1)))
    return x


class UNet(_UNetTrunk):
  """(B, C, H, W) → per-pixel class logits (B, num_classes, H, W)."""

  def __init__(self, in_channels: int, num_classes: int,
               features: Sequence[int] = (16, 32, 64, 128)):
    super().__init__(in_channels, features)
    self.child('Conv', Conv2d(features[0], num_classes, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.Conv_0(self.trunk(x))


class MultiTaskUNet(_UNetTrunk):
  """(B, C, H, W) → {'heatmap', 'offset_x', 'offset_y'}, each (B, num_landmarks, H, W)."""

  HEADS = ('heatmap', 'offset_x', 'offset_y')

  def __init__(self, in_channels: int, num_landmarks: int,
               features: Sequence[int] = (16, 32, 64, 128)):
    super().__init__(in_channels, features)
    for name in self.HEADS:
      self.child('Conv', Conv2d(features[0], num_landmarks, 1), name=name)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    x = self.trunk(x)
    return {name: getattr(self, name)(x) for name in self.HEADS}


# --------------------------------------------------------------------------------------------
# robust_med.models.resnet


def _resnet_norm(features: int, groups: int) -> nn.GroupNorm:
  """`resnet._norm`: at most `groups` groups of whole channels; Flax's default epsilon."""
  g = max(1, min(groups, features))
  while features % g:
    g -= 1
  return nn.GroupNorm(g, features, eps=1e-6)


class PreActBlock(_FlaxNamed):
  """norm → ReLU → conv 3×3 (stride), norm → ReLU → conv 3×3, plus identity or 1×1 projection."""

  def __init__(self, in_channels: int, features: int, stride: int = 1, groups: int = 8):
    super().__init__()
    p = self.parts = SimpleNamespace()
    p.norm1 = self.child('GroupNorm', _resnet_norm(in_channels, groups))
    p.shortcut = None
    if stride != 1 or in_channels != features:
      p.shortcut = self.child('Conv', Conv2d(in_channels, features, 1, stride, bias=False))
    p.conv1 = self.child('Conv', Conv2d(in_channels, features, 3, stride, bias=False))
    p.norm2 = self.child('GroupNorm', _resnet_norm(features, groups))
    p.conv2 = self.child('Conv', Conv2d(features, features, 3, 1, bias=False))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    p = self.parts
    pre = F.relu(p.norm1(x))
    shortcut = x if p.shortcut is None else p.shortcut(pre)
    return shortcut + p.conv2(F.relu(p.norm2(p.conv1(pre))))


class ResNetClassifier(_FlaxNamed):
  """(B, C, H, W) → (B, num_classes) logits."""

  def __init__(self, in_channels: int, num_classes: int, base_width: int = 16, blocks: int = 2,
               stages: int = 4, stem_stride: int = 1, max_width: int = 512, groups: int = 8):
    super().__init__()
    self.child('Conv', Conv2d(in_channels, base_width, 3, stem_stride, bias=False), name='stem')
    self.blocks, channels = [], base_width
    for stage in range(stages):
      width = min(base_width * 2**stage, max_width)
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        self.blocks.append(self.child('PreActBlock', PreActBlock(channels, width, stride, groups),
                                      name=f'stage{stage}_block{block}'))
        channels = width
    self.child('GroupNorm', _resnet_norm(channels, groups))
    self.child('Dense', nn.Linear(channels, num_classes), name='logits')

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.stem(x)
    for block in self.blocks:
      x = block(x)
    return self.logits(F.relu(self.GroupNorm_0(x)).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------
# robust_med.models.yolo


class YoloConv(_FlaxNamed):
  """yolo's `Conv`: conv (no bias) – group norm (epsilon 1e-5) – SiLU."""

  def __init__(self, in_channels: int, features: int, kernel: int = 3, strides: int = 1,
               per_group: int = 8):
    super().__init__()
    self.child('Conv', Conv2d(in_channels, features, kernel, strides, bias=False))
    groups = flax_yolo._groups(features, per_group)  # pylint: disable=protected-access
    self.child('GroupNorm', nn.GroupNorm(groups, features, eps=1e-5))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.silu(self.GroupNorm_0(self.Conv_0(x)))


class CSP(_FlaxNamed):
  """Cross-stage-partial block: half the features through `depth` bottlenecks, then fused."""

  def __init__(self, in_channels: int, features: int, depth: int = 1, shortcut: bool = True):
    super().__init__()
    half = max(1, features // 2)
    conv = lambda *args: self.child('Conv', YoloConv(*args))
    p = self.parts = SimpleNamespace()
    p.a, p.b = conv(in_channels, half, 1), conv(in_channels, half, 1)
    # Flax: `Conv(half, 3)(Conv(half, 3)(b))` names the outer block first.
    p.bottlenecks = [(conv(half, half, 3), conv(half, half, 3)) for _ in range(depth)]
    p.fuse = conv(2 * half, features, 1)
    self.shortcut = shortcut

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    p = self.parts
    a, b = p.a(x), p.b(x)
    for outer, inner in p.bottlenecks:
      y = outer(inner(b))
      b = b + y if self.shortcut else y
    return p.fuse(torch.cat([a, b], dim=1))


def _upsample(x: torch.Tensor) -> torch.Tensor:
  return F.interpolate(x, scale_factor=2, mode='nearest')


class Detector(_FlaxNamed):
  """(B, C, S, S) → {'box': (B, A, 4) x1 y1 x2 y2 in pixels, 'obj': (B, A), 'cls': (B, A, C)}."""

  def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 1):
    super().__init__()
    w, d = width, depth
    conv = lambda *args: self.child('Conv', YoloConv(*args))
    csp = lambda *args, **kwargs: self.child('CSP', CSP(*args, **kwargs))
    # Flax names the CSP before the Conv it is applied to; the counters are per kind, so only the
    # order within a kind matters here.
    p = self.parts = SimpleNamespace()
    p.stem = conv(in_channels, w, 3, 2)                                          # /2
    p.stage2 = (csp(2 * w, 2 * w, d), conv(w, 2 * w, 3, 2))                      # /4
    p.stage3 = (csp(4 * w, 4 * w, 2 * d), conv(2 * w, 4 * w, 3, 2))              # /8
    p.stage4 = (csp(8 * w, 8 * w, 2 * d), conv(4 * w, 8 * w, 3, 2))              # /16
    p.stage5 = (csp(8 * w, 8 * w, d), conv(8 * w, 8 * w, 3, 2))                  # /32
    p.top4 = csp(16 * w, 8 * w, d, shortcut=False)
    p.top3 = csp(12 * w, 4 * w, d, shortcut=False)
    p.bottom4 = (csp(12 * w, 8 * w, d, shortcut=False), conv(4 * w, 4 * w, 3, 2))
    p.bottom5 = (csp(16 * w, 8 * w, d, shortcut=False), conv(8 * w, 8 * w, 3, 2))
    hidden = max(16, 4 * w)
    p.heads = []
    for channels in (4 * w, 8 * w, 8 * w):  # t3, b4, b5
      p.heads.append(dict(
          box_outer=conv(hidden, hidden, 3), box_inner=conv(channels, hidden, 3),
          cls_outer=conv(hidden, hidden, 3), cls_inner=conv(channels, hidden, 3),
          box=self.child('Conv', Conv2d(hidden, 4, 1)),
          obj=self.child('Conv', Conv2d(hidden, 1, 1)),
          cls=self.child('Conv', Conv2d(hidden, num_classes, 1))))
    self._anchors: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

  def anchors(self, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, 2) anchor points and (A, 1) strides of `flax_yolo.anchor_points`, cached."""
    key = (size, device)
    if key not in self._anchors:
      points, strides = flax_yolo.anchor_points(size)
      self._anchors[key] = (torch.as_tensor(points, device=device),
                            torch.as_tensor(strides, device=device)[:, None])
    return self._anchors[key]

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    size = x.shape[2]
    if x.shape[2] != x.shape[3] or size % flax_yolo.STRIDES[-1]:
      raise ValueError(f'Detector inputs must be square with a side divisible by '
                       f'{flax_yolo.STRIDES[-1]}, got {tuple(x.shape[2:])}.')
    p = self.parts
    x = p.stem(x)
    x = p.stage2[0](p.stage2[1](x))
    p3 = p.stage3[0](p.stage3[1](x))
    p4 = p.stage4[0](p.stage4[1](p3))
    p5 = p.stage5[0](p.stage5[1](p4))
    # Top-down.
    t4 = p.top4(torch.cat([_upsample(p5), p4], dim=1))
    t3 = p.top3(torch.cat([_upsample(t4), p3], dim=1))
    # Bottom-up.
    b4 = p.bottom4[0](torch.cat([p.bottom4[1](t3), t4], dim=1))
    b5 = p.bottom5[0](torch.cat([p.bottom5[1](b4), p5], dim=1))
    boxes, obj, cls = [], [], []
    for feature, head in zip((t3, b4, b5), p.heads):
      box_branch = head['box_outer'](head['box_inner'](feature))
      cls_branch = head['cls_outer'](head['cls_inner'](feature))
      # NCHW → (B, H·W, C): the cells in Flax's row-major (y, x) order.
      flat = lambda t: t.flatten(2).transpose(1, 2)
      boxes.append(flat(head['box'](box_branch)))
      obj.append(flat(head['obj'](box_branch))[..., 0])
      cls.append(flat(head['cls'](cls_branch)))
    points, strides = self.anchors(size, x.device)
    distances = F.softplus(torch.cat(boxes, dim=1)) * strides
    box = torch.cat([points - distances[..., :2], points + distances[..., 2:]], dim=-1)
    return {'box': box, 'obj': torch.cat(obj, dim=1), 'cls': torch.cat(cls, dim=1)}


# --------------------------------------------------------------------------------------------
# Building twins and copying weights.


def from_flax(flax_model: Any, params: Mapping[str, Any]) -> nn.Module:
  """The torch twin of `flax_model` (a robust_med UNet, MultiTaskUNet, ResNetClassifier or
  Detector) with every parameter of `params` (the dict under 'params', or the whole variables
  dict) copied in; float32, on the CPU, in eval mode and with its parameters frozen (attacks
  differentiate with respect to the input only). Raises if a Flax parameter is left over, one
  the twin needs is missing, or a shape disagrees."""
  if set(params.keys()) == {'params'}:
    params = params['params']
  m = flax_model
  if isinstance(m, flax_unet.UNet):
    in_channels = _shape(params, 'ConvBlock_0', 'Conv_0', 'kernel')[2]
    twin = UNet(in_channels, m.num_classes, tuple(m.features))
  elif isinstance(m, flax_unet.MultiTaskUNet):
    in_channels = _shape(params, 'ConvBlock_0', 'Conv_0', 'kernel')[2]
    twin = MultiTaskUNet(in_channels, m.num_landmarks, tuple(m.features))
  elif isinstance(m, flax_resnet.ResNetClassifier):
    in_channels = _shape(params, 'stem', 'kernel')[2]
    twin = ResNetClassifier(in_channels, m.num_classes, m.base_width, m.blocks, m.stages,
                            m.stem_stride, m.max_width, m.groups)
  elif isinstance(m, flax_yolo.Detector):
    in_channels = _shape(params, 'Conv_0', 'Conv_0', 'kernel')[2]
    twin = Detector(in_channels, m.num_classes, m.width, m.depth)
  else:
    raise TypeError(f'No torch twin for {type(m).__name__}.')
  load_flax_params(twin, params)
  return twin.eval().requires_grad_(False)


def _shape(params: Mapping[str, Any], *path: str) -> tuple[int, ...]:
  for key in path:
    params = params[key]
  return tuple(params.shape)


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = value
  return flat


def load_flax_params(twin: nn.Module, params: Mapping[str, Any]) -> None:
  """Copies `params` into `twin`, whose module paths are the Flax module paths. Every Flax
  parameter is consumed exactly once and every torch parameter set exactly once, or it raises."""
  flat = _flatten(params)
  unset = {id(p): name for name, p in twin.named_parameters()}

  def take(path: tuple[str, ...], target: torch.Tensor, convert=lambda a: a) -> None:
    if path not in flat:
      raise KeyError(f'Flax params lack {"/".join(path)}.')
    value = torch.from_numpy(np.array(convert(np.asarray(flat.pop(path), np.float32))))
    if tuple(value.shape) != tuple(target.shape):
      raise ValueError(f'{"/".join(path)}: Flax shape (converted) {tuple(value.shape)}, torch '
                       f'{tuple(target.shape)}.')
    with torch.no_grad():
      target.copy_(value)
    del unset[id(target)]

  for name, module in twin.named_modules():
    path = tuple(name.split('.')) if name else ()
    if isinstance(module, nn.ConvTranspose2d):  # (kH, kW, in, out) → flipped (in, out, kH, kW)
      take(path + ('kernel',), module.weight, lambda k: k[::-1, ::-1].transpose(2, 3, 0, 1))
    elif isinstance(module, nn.Conv2d):  # (kH, kW, in, out) → (out, in, kH, kW)
      take(path + ('kernel',), module.weight, lambda k: k.transpose(3, 2, 0, 1))
    elif isinstance(module, nn.Linear):  # (in, out) → (out, in)
      take(path + ('kernel',), module.weight, lambda k: k.T)
    elif isinstance(module, nn.GroupNorm):
      take(path + ('scale',), module.weight)
    else:
      continue
    if module.bias is not None:
      take(path + ('bias',), module.bias)
  if flat:
    raise ValueError(f'Flax params not copied: {sorted("/".join(p) for p in flat)}.')
  if unset:
    raise ValueError(f'Torch parameters not set: {sorted(unset.values())}.')


# --------------------------------------------------------------------------------------------
# Comparing the twins.


def to_nchw(x: Any) -> torch.Tensor:
  """An NHWC array → an NCHW float32 torch tensor."""
  return torch.from_numpy(np.array(x, np.float32)).permute(0, 3, 1, 2).contiguous()


def to_nhwc(tree: Any) -> Any:
  """Torch outputs (a tensor or a dict of them) → numpy in Flax's layout: 4-D tensors go from
  NCHW to NHWC, the rest keep their shape."""
  if isinstance(tree, Mapping):
    return {key: to_nhwc(value) for key, value in tree.items()}
  array = tree.detach().cpu().numpy()
  return array.transpose(0, 2, 3, 1) if array.ndim == 4 else array


def _pairs(a: Any, b: Any, name: str = '') -> list[tuple[str, np.ndarray, np.ndarray]]:
  """(name, a leaf, b leaf) for two output trees of the same structure and shapes."""
  if isinstance(a, Mapping):
    if set(a) != set(b):
      raise ValueError(f'Output keys differ: {sorted(a)} vs {sorted(b)}.')
    return [pair for key in sorted(a) for pair in _pairs(a[key], b[key], key)]
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'Output {name or ""} shapes differ: {a.shape} vs {b.shape}.')
  return [(name, a, b)]


def max_abs_diff(a: Any, b: Any) -> float:
  """The largest absolute difference over all leaves of two matching output trees."""
  return max(float(np.max(np.abs(x - y))) for _, x, y in _pairs(a, b))


def outputs(flax_model: Any, params: Mapping[str, Any], x_nhwc: Any, float64: bool = False,
            twin: nn.Module | None = None) -> tuple[Any, Any]:
  """The outputs of the Flax model and of its twin (built by `from_flax` unless given) on the
  same NHWC input, as numpy trees in Flax's layout; in float32 or (`float64`, JAX under
  `jax.enable_x64`) float64."""
  return _run(flax_model, params, x_nhwc, float64, twin, grad=False)


def input_grads(flax_model: Any, params: Mapping[str, Any], x_nhwc: Any, float64: bool = False,
                twin: nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The input gradients (NHWC; Flax's, then the twin's) of a scalar loss, the sum of squares of
  all outputs; in float32 or float64 as `outputs`."""
  return _run(flax_model, params, x_nhwc, float64, twin, grad=True)


def _run(flax_model, params, x_nhwc, float64, twin, grad):
  if set(params.keys()) == {'params'}:
    params = params['params']
  twin = from_flax(flax_model, params) if twin is None else twin

  def loss(out):
    return sum(jnp.sum(leaf**2) for leaf in jax.tree_util.tree_leaves(out))

  with jax.enable_x64(float64):
    jdtype = jnp.float64 if float64 else jnp.float32
    jparams = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jdtype), params)
    apply = lambda x: flax_model.apply({'params': jparams}, x)
    fn = jax.grad(lambda x: loss(apply(x))) if grad else apply
    expected = jax.tree_util.tree_map(np.asarray, jax.jit(fn)(jnp.asarray(x_nhwc, jdtype)))
  dtype = torch.float64 if float64 else torch.float32
  device, twin_dtype = next(twin.parameters()).device, next(twin.parameters()).dtype
  twin = twin.to(dtype)
  try:
    x = to_nchw(x_nhwc).to(device, dtype).requires_grad_(grad)
    with torch.set_grad_enabled(grad):
      out = twin(x)
      if grad:
        sum(torch.sum(leaf**2) for leaf in (out.values() if isinstance(out, Mapping) else [out])
            ).backward()
  finally:
    twin.to(twin_dtype)
  return expected, to_nhwc(x.grad if grad else out)


def check_equal(flax_model: Any, params: Mapping[str, Any], x_nhwc: Any, atol: float = 1e-4,
                float64: bool = False, twin: nn.Module | None = None) -> float:
  """Runs the Flax model and its twin on the same NHWC input (see `outputs`) and returns the max
  absolute difference over all outputs; raises if it exceeds `atol`.

  The Detector's boxes are compared in units of their anchor's stride (8, 16 or 32 px), the unit
  the network regresses them in: in pixels float32 rounding (~5e-6 in the logits) grows up to
  32-fold (to ~2e-4 at 128 px, as far as Flax's own float32 boxes are from its float64 ones)."""
  expected, got = outputs(flax_model, params, x_nhwc, float64, twin)
  return _compare_outputs(flax_model, expected, got, np.shape(x_nhwc)[1], atol)


def _compare_outputs(flax_model: Any, expected: Any, got: Any, size: int, atol: float) -> float:
  expected, got = (_in_stride_units(flax_model, tree, size) for tree in (expected, got))
  diff = max_abs_diff(got, expected)
  if not diff <= atol:
    worst = max(_pairs(got, expected), key=lambda p: np.max(np.abs(p[1] - p[2])))[0]
    raise AssertionError(f'{type(flax_model).__name__}: the torch twin differs by {diff:.3g} > '
                         f'{atol:.3g} (output {worst or "logits"}).')
  return diff


def _in_stride_units(flax_model: Any, tree: Any, size: int) -> Any:
  if not isinstance(flax_model, flax_yolo.Detector):
    return tree
  _, strides = flax_yolo.anchor_points(size)
  return {**tree, 'box': tree['box'] / strides[None, :, None]}


def check_grad(flax_model: Any, params: Mapping[str, Any], x_nhwc: Any,
               rtol: float | None = 1e-3, float64: bool = False,
               twin: nn.Module | None = None) -> float:
  """Compares the input gradients of `input_grads` under Flax and the twin; returns
  max|Δgrad| / max|grad|, and raises if it exceeds `rtol` (unless None).

  In float64 this checks that the twin computes the same gradient. In float32 a (leaky) ReLU
  input within rounding of 0 can take the other branch on one side, and that pixel's gradient
  then differs by up to (1 - slope)·|grad|, a legitimate float32 disagreement that spreads through
  the layers before it. In the self-check's random U-Nets and ResNets that happens on 0–30 % of
  the samples, to Flax's float32 gradient as well as to torch's (each against float64; torch's
  float32 is the less accurate here, ~5e-6 against ~2e-6, and flips more often)."""
  expected, got = input_grads(flax_model, params, x_nhwc, float64, twin)
  rel = max_abs_diff(got, expected) / max(float(np.max(np.abs(expected))), 1e-30)
  if rtol is not None and not rel <= rtol:
    raise AssertionError(f'{type(flax_model).__name__}: input gradients differ by {rel:.3g} '
                         f'(relative) > {rtol:.3g} ({"float64" if float64 else "float32"}).')
  return rel


def random_params(flax_model: Any, x_nhwc: Any, seed: int = 0) -> dict[str, Any]:
  """Params for `flax_model` (the dict under 'params') with every leaf random: kernels
  N(0, 1/fan_in), norm scales 1 + N(0, 0.2²), biases N(0, 0.2²). Unlike `flax_model.init`, whose
  scales and biases are constants, this makes a mis-copied scale or bias show in the outputs; and
  it needs no XLA compilation (which takes a minute for the Detector's init on 2 CPU cores)."""
  shapes = jax.eval_shape(flax_model.init, jax.random.PRNGKey(0), jnp.asarray(x_nhwc))['params']
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    kind = path[-1].key
    if kind == 'kernel':
      return rng.normal(0, 1 / math.sqrt(math.prod(s.shape[:-1])), s.shape).astype(np.float32)
    return ((kind == 'scale') + rng.normal(0, 0.2, s.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


_CASES = {
    'unet_small': (lambda: flax_unet.UNet(num_classes=3, features=(8, 16, 32)), (32, 48, 48, 1)),
    'unet': (lambda: flax_unet.UNet(num_classes=2, features=(16, 32, 64, 128)), (16, 64, 64, 1)),
    'multitask_unet': (lambda: flax_unet.MultiTaskUNet(num_landmarks=19, features=(8, 16, 32)),
                       (4, 64, 64, 1)),
    'resnet': (lambda: flax_resnet.ResNetClassifier(num_classes=2), (8, 64, 64, 1)),
    'resnet_rgb': (lambda: flax_resnet.ResNetClassifier(num_classes=2), (8, 64, 64, 3)),
    'resnet_variant': (lambda: flax_resnet.ResNetClassifier(
        num_classes=5, base_width=8, blocks=1, stages=3, stem_stride=2, max_width=16, groups=4),
                       (8, 63, 63, 3)),
    'detector': (lambda: flax_yolo.Detector(num_classes=3, width=8, depth=1), (4, 128, 128, 3)),
    'detector_deep': (lambda: flax_yolo.Detector(num_classes=2, width=4, depth=2), (2, 64, 64, 1)),
}


def _self_check(names: Sequence[str]) -> None:
  """Builds the named cases (all by default) with `random_params` and random inputs and prints how
  far the twin is from Flax: outputs in float32 (<= 1e-4, see `check_equal`) and float64
  (<= 1e-9), input gradients in float64 (<= 1e-6 relative) and, per sample, in float32 (printed,
  not checked: see `check_grad`)."""
  for name in names or _CASES:
    make, shape = _CASES[name]
    model = make()
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), shape), np.float32)
    params = random_params(model, x)
    twin = from_flax(model, params)
    expected, got = outputs(model, params, x, twin=twin)
    out32 = _compare_outputs(model, expected, got, shape[1], atol=1e-4)
    per_output = ', '.join(f'{key or "logits"} {np.max(np.abs(g - e)):.1e}'
                           for key, g, e in _pairs(got, expected))
    out64 = check_equal(model, params, x, atol=1e-9, float64=True, twin=twin)
    grad64 = check_grad(model, params, x, rtol=1e-6, float64=True, twin=twin)
    expected, got = input_grads(model, params, x, twin=twin)
    grad32 = [float(np.max(np.abs(g - e)) / max(np.max(np.abs(e)), 1e-30))
              for e, g in zip(expected, got)]
    print(f'{name} {shape}: max|Δout| float32 {out32:.1e} ({per_output}); float64 {out64:.1e}. '
          f'Input grad max|Δ|/max|grad|: float64 {grad64:.1e}; float32 per sample median '
          f'{np.median(grad32):.1e}, max {max(grad32):.1e}, '
          f'{sum(g > 1e-3 for g in grad32)}/{shape[0]} above 1e-3', flush=True)


if __name__ == '__main__':
  _self_check(sys.argv[1:])
