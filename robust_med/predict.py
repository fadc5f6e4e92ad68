"""`python -m robust_med.predict`: a segmentation run's model on NIfTI volumes, NIfTI out.

  python -m robust_med.predict --workdir=DIR --input=PATH(.nii.gz|folder) --output=FOLDER \
      [--step=N] [--attack=pgd --eps=E [--norm=l2|linf] [--steps=K]]

For each volume (`data.volumes.read_volume`: its voxels, stored spacing, affine and header):

1. the run's preprocessing: resampled to its `data.spacing` (when set), z-scored per volume and
   channel;
2. the prediction of the whole volume by a function from the volume to logits on its grid:
   a 3-D model (`data.ndim = 3`) sees the volume padded to at least its patch, through its
   sliding window; a 2-D model sees the volume's slices along `data.slice_axis`, each fitted to
   `data.patch_size` as in training (centre pad/crop, or resize with `data.resize`), stacked back;
3. the argmax label map, mapped back onto the input's grid (nearest neighbour) and written as
   `<name>_pred.nii.gz` with the input's affine and header (`volumes.write_like`), so it overlays
   the input in ITK-SNAP or 3D Slicer.

With `--attack=pgd`, PGD (`--steps`, the run's step-size factor and random start) maximises the
head's divergence of the prediction from the clean one (`Task.divergence`: no label needed),
with a budget `--eps` per volume in z-score units — L2 over every voxel of the model's grid, or
L∞ per voxel (`--norm`, default the run's `eval.norm`), for 2-D models too (the slices are
attacked together). It writes `<name>_pred_attacked.nii.gz` (on the input's grid),
`<name>_attacked.nii.gz` and `<name>_perturbation.nii.gz` (z-score units) on the model's grid:
the input's own when no resampling happened, else the resampled grid with an affine that places
it in the same world coordinates. A `predictions.json` lists every file written, the checkpoint,
the preprocessing and the attack.

Only for runs of the segmentation head (the head whose outputs are label maps on the input's
grid); any other run is refused with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from robust_med import cli, errors, sharding
from robust_med.data.msd import fit_slices, pad_centred, zscore
from robust_med.reports import write_json

ATTACKS = ('none', 'pgd')


def _fit(array: np.ndarray, shape, order: int, resize: bool):
  """`array` (S, A, B[, C]) fitted to (S, *shape) exactly as the slice loader fits training
  slices (`msd.fit_slices`: zoomed with `resize`, else centre padded/cropped), and the function
  that maps a (S, *shape[, K]) result back onto (S, A, B[, K])."""
  shape = tuple(int(s) for s in shape)
  fitted = fit_slices(array, shape, resize=resize, order=order)
  size = array.shape[1:3]
  if resize and size != shape:
    def back(out, order=0):
      f = [1.0, size[0] / shape[0], size[1] / shape[1]] + [1.0] * (out.ndim - 3)
      return ndimage.zoom(out, f, order=order)
    return fitted, back
  pads, places = [], [slice(None)]
  for n, s in zip(size, shape):
    pads.append(max(s - n, 0) // 2)  # Padding before (a slice smaller than the patch) ...
    start = max(n - s, 0) // 2  # ... or the start of the crop (larger).
    places.append(slice(start, start + min(n, s)))

  def back(out, order=0):
    del order
    inner = out[(slice(None),) + tuple(slice(lo, lo + min(n, s))
                                       for lo, n, s in zip(pads, size, shape))]
    full = np.zeros((out.shape[0], *size, *out.shape[3:]), out.dtype)
    full[tuple(places)] = inner
    return full
  return fitted, back


def _to_grid(array: np.ndarray, shape) -> np.ndarray:
  """A label map (X, Y, Z) zoomed (nearest) onto `shape`, exactly that shape."""
  if tuple(array.shape) == tuple(shape):
    return array
  out = ndimage.zoom(array, [s / n for s, n in zip(shape, array.shape)], order=0,
                     grid_mode=True, mode='nearest')
  fixed = np.zeros(shape, array.dtype)
  common = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, shape))
  fixed[common] = out[common]
  return fixed


def _resampled_affine(affine: np.ndarray, old, new) -> np.ndarray:
  """The affine of a grid resampled from spacing `old` to `new` over the same extent (voxel
  centres as scipy's grid-mode zoom places them)."""
  r = np.asarray(new, np.float64) / np.asarray(old, np.float64)
  scale = np.eye(4)
  scale[:3, :3] = np.diag(r)
  scale[:3, 3] = (r - 1) / 2
  return affine @ scale


class Predictor:
  """A run's segmentation model as a function of whole volumes; see the module docstring."""

  def __init__(self, config, workdir: str, step: int | None = None):
    from robust_med import evaluate
    from robust_med.data import SegmentationInfo
    from robust_med.tasks import get_task_class
    self.config = config
    if config.task != 'segmentation':
      raise errors.UserError(f'--workdir={workdir} holds a {config.task!r} run: '
                             'robust_med.predict writes label maps and needs a segmentation run.')
    self.task = get_task_class(config.task)(config)
    from robust_med import checkpointing
    mngr = checkpointing.reader(workdir)
    meta = checkpointing.read_meta(mngr, checkpointing.pick_step(mngr, step))
    mngr.close()
    sig = meta.get('data', {})
    if not sig:
      raise errors.UserError(f'the checkpoint in {workdir} does not record its data signature '
                             '(channels, classes): retrain it with this version of robust_med.')
    d = config.data
    self.ndim = int(d.get('ndim', 2) or 2)
    self.patch = tuple(int(p) for p in d.patch_size)
    self.channels, self.num_classes = int(sig['channels']), int(sig['num_classes'])
    self.spacing = tuple(float(s) for s in d.get('spacing', ()) or ())
    info = SegmentationInfo(name='predict', num_classes=self.num_classes,
                            class_names=('background',) * self.num_classes,
                            channels=self.channels, patch_size=self.patch, num_volumes=0,
                            cases=(), spacing=self.spacing)
    self.mesh = sharding.make_mesh(1)
    probe = np.zeros((1, *self.patch, self.channels), np.float32)
    self.model, self.params, self.meta, self.step = evaluate.restore_model(
        self.task, workdir, info, probe, self.mesh, step, what='The input volumes')
    self._compiled = {}

  def preprocess(self, volume) -> tuple[np.ndarray, tuple[float, ...]]:
    """The volume as the model's input (X', Y', Z', C) z-scored, and its spacing."""
    from robust_med.data import volumes
    image = volume.array
    image = image[..., None] if image.ndim == 3 else image
    if image.shape[-1] != self.channels:
      raise errors.DataError(f'{volume.path} has {image.shape[-1]} channel(s) but the model '
                             f'takes {self.channels}: give volumes of the modalities it was '
                             'trained on.')
    image = np.asarray(image, np.float32)
    spacing = tuple(volume.spacing)
    if self.spacing:
      image, spacing = volumes.resample(image, spacing, self.spacing, order=3)
    return zscore(image), spacing

  def volume_fn(self, grid_shape):
    """(apply, to_model, from_model): `apply(params, v)` maps model inputs (1, *M) to logits,
    `to_model` a volume (X, Y, Z, C) to that input, `from_model` logits back to (X, Y, Z, K)."""
    model = self.model
    if self.ndim == 3:
      target = tuple(max(n, p) for n, p in zip(grid_shape, self.patch))
      _, region = pad_centred(np.zeros(grid_shape, np.uint8), target)
      to_model = lambda v: pad_centred(v, target)[0][None]
      from_model = lambda out: np.asarray(out)[0][region]
      return (lambda p, v: model.apply({'params': p}, v)), to_model, from_model
    axis = int(self.config.data.slice_axis)
    resize = bool(self.config.data.get('resize', False))
    backs = {}

    def to_model(v):
      fitted, backs['fn'] = _fit(np.moveaxis(v, axis, 0), self.patch, 1, resize)
      return fitted[None]  # (1, S, H, W, C): the slices of one volume, one sample.

    def from_model(out):
      return np.moveaxis(backs['fn'](np.asarray(out)[0], order=1), 0, axis)

    def apply(p, v):
      out = model.apply({'params': p}, v.reshape(-1, *v.shape[2:]))
      return out.reshape(1, v.shape[1], *out.shape[1:])
    return apply, to_model, from_model

  def functions(self, grid_shape, norm: str, steps: int):
    """For volumes of `grid_shape` (built once per grid, so a folder of equal grids compiles
    once): `predict(params, x)` → logits, `to_model`, `from_model` (`volume_fn`), and
    `attack(params, x, in_image, clean, eps, key)`: PGD on the divergence from `clean`, the
    padding (`in_image` False) never changed."""
    key = (tuple(grid_shape), norm, int(steps))
    if key not in self._compiled:
      from robust_med import attacks
      from robust_med.tasks.base import within_image
      apply, to_model, from_model = self.volume_fn(grid_shape)
      a = self.config.attack
      settings = attacks.PGDSettings(norm=norm, steps=steps, step_size_factor=a.step_size_factor,
                                     random_start=a.random_start, clip=None)

      @jax.jit
      def attack(params, x, in_image, clean, eps, key):
        batch = {'image': x, 'in_image': in_image}
        loss = lambda z: self.task.divergence(apply(params, within_image(batch, z)), clean)
        return within_image(batch, settings(loss, x, jnp.full((1,), eps, x.dtype), key))
      self._compiled[key] = (jax.jit(apply), to_model, from_model, attack)
    return self._compiled[key]


def predict_volumes(config, workdir: str, inputs: str, output: str, *, step: int | None = None,
                    attack: str = 'none', eps: float = 0.0, norm: str = '',
                    steps: int = 0) -> dict:
  """Writes the predictions (and with `attack`, the attacked inputs, perturbations and
  predictions) of every NIfTI volume of `inputs` into `output`; returns the record also written
  as `output/predictions.json`."""
  from robust_med.data import volumes
  if attack not in ATTACKS:
    raise errors.UserError(f'--attack={attack}: use one of {ATTACKS}.')
  if attack != 'none' and not eps > 0:
    raise errors.UserError(f'--attack={attack} needs a budget: pass --eps > 0 (per volume, in '
                           'z-score units).')
  norm = norm or config.eval.norm
  steps = steps or config.eval.steps
  files = volumes.nifti_files(inputs)
  out_dir = Path(output)
  if out_dir.exists() and not out_dir.is_dir():
    raise errors.UserError(f'--output={output} is a file: pass a folder for the predictions.')
  predictor = Predictor(config, workdir, step)
  record = {'workdir': os.path.abspath(workdir), 'step': int(predictor.step),
            'model': {'ndim': predictor.ndim, 'patch_size': list(predictor.patch)},
            'preprocessing': {'spacing': list(predictor.spacing) or 'as stored',
                              'normalisation': 'z-score per volume and channel'},
            'attack': ({'name': f'pgd-{steps}', 'norm': norm, 'eps': eps, 'units': 'z-score',
                        'budget': 'per volume', 'objective': 'divergence from the clean '
                        'prediction (no label)'} if attack != 'none' else None),
            'volumes': []}
  for path in files:
    volume = volumes.read_volume(path)
    image, spacing = predictor.preprocess(volume)
    fn, to_model, from_model, attack_fn = predictor.functions(image.shape[:3], norm, steps)
    x = jnp.asarray(to_model(image))
    in_image = jnp.asarray(to_model(np.ones(image.shape[:3] + (1,), np.float32))[..., 0] > 0.5)
    clean = fn(predictor.params, x)
    name = path.name[:-len('.nii.gz')] if path.name.lower().endswith('.nii.gz') else path.stem
    label = np.argmax(from_model(clean), axis=-1).astype(np.uint8)
    entry = {'input': str(path), 'spacing': list(volume.spacing), 'model_spacing': list(spacing),
             'files': {}}
    entry['files']['pred'] = str(volumes.write_like(out_dir / f'{name}_pred.nii.gz',
                                                    _to_grid(label, volume.shape), volume))
    if attack != 'none':
      x_adv = attack_fn(predictor.params, x, in_image, clean, eps, jax.random.key(config.seed))
      adv_label = np.argmax(from_model(fn(predictor.params, x_adv)), axis=-1).astype(np.uint8)
      entry['files']['pred_attacked'] = str(volumes.write_like(
          out_dir / f'{name}_pred_attacked.nii.gz', _to_grid(adv_label, volume.shape), volume))
      delta = np.asarray(x_adv - x)
      entry['perturbation_norm'] = float(np.sqrt((delta ** 2).sum()) if norm == 'l2'
                                         else np.abs(delta).max())
      entry['changed_voxels'] = int((adv_label != label).sum())
      grid_ref = volume
      if tuple(image.shape[:3]) != volume.shape:  # Resampled: the model's grid, placed in space.
        grid_ref = volumes.Volume(volume.path, np.broadcast_to(np.float32(0), image.shape[:3]),
                                  spacing, _resampled_affine(volume.affine, volume.spacing,
                                                             spacing), volume.header)
      adv_image = image + np.asarray(from_model(delta))  # Padding/crop undone, slices restacked.
      for key, array in (('attacked', adv_image), ('perturbation', adv_image - image)):
        array = array[..., 0] if array.shape[-1] == 1 else array
        entry['files'][key] = str(volumes.write_like(out_dir / f'{name}_{key}.nii.gz',
                                                     array.astype(np.float32), grid_ref))
    record['volumes'].append(entry)
    print(f'{path} → {", ".join(Path(f).name for f in entry["files"].values())}')
  write_json(str(out_dir / 'predictions.json'), record)
  return record


def main(argv=None) -> None:
  """`python -m robust_med.predict`: parses the flags and writes the predictions; bad input ends
  in one `error:` line with exit status 2."""
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config (default: the run\'s own config.json).',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir of a robust_med.main segmentation run.')
  flags.DEFINE_string('input', None, 'A NIfTI volume (.nii or .nii.gz) or a folder of them.')
  flags.DEFINE_string('output', None, 'Folder for the predictions.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_enum('attack', 'none', list(ATTACKS), 'Attack each volume before predicting it.')
  flags.DEFINE_float('eps', 0.0, 'The attack\'s budget per volume (z-score units).')
  flags.DEFINE_enum('norm', None, ['l2', 'linf'], 'The attack\'s norm (default: eval.norm).')
  flags.DEFINE_integer('steps', None, 'PGD iterations (default: eval.steps).')
  flags.mark_flags_as_required(['workdir', 'input', 'output'])

  @cli.guard
  def run(argv):
    cli.reject_positional(argv)
    f = flags.FLAGS
    config = f.config
    cli.prepare(config)
    predict_volumes(config, f.workdir, f.input, f.output, step=f.step, attack=f.attack,
                    eps=f.eps, norm=f.norm or '', steps=f.steps or 0)
    print(f'Done: {os.path.abspath(os.path.join(f.output, "predictions.json"))}')

  app.run(run, argv=argv, flags_parser=lambda a: cli.parse_flags(cli.with_saved_config(a)))


if __name__ == '__main__':
  main()
