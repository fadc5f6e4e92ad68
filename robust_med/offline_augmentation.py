"""FGSM and inverse-FGSM augmentation made offline: adversarial copies of a training set from a trained model.

Seed 001 ("adversarial attack driven data augmentation for accurate and robust medical image
segmentation") generates the FGSM (and inverse-FGSM) images of the training set once, from a model
trained on clean data, and adds them to the training set. With
`config.method.fgsm_source = 'offline'` the trainer does that before training: every training
sample gets one copy per attack of the method (`fgsm_aug`: x + ε·sign∇L; `inverse_fgsm_aug`:
x − ε·sign∇L; `fgsm_both_aug`: both), made by the model in `config.method.fgsm_checkpoint`, with
the sample's targets; the enlarged set then trains with STD's loss. (`'online'`, the default,
regenerates the copies from the model being trained at every step: `methods.AttackAugmentation`.)
"""

from __future__ import annotations

import jax
import numpy as np

from robust_med import attacks, methods
from robust_med import evaluate as evaluate_lib


def adversarial_copies(task, model, params, arrays: dict[str, np.ndarray], attack_name: str,
                       eps: float, *, norm: str, clip, mesh, batch_size: int) -> np.ndarray:
  """The images of `arrays` moved by one step of `attack_name` ('fgsm' or 'inverse_fgsm') of
  budget `eps` on the summed loss of `model` with `params`, in order, (N, ...)."""
  attack = attacks.ATTACKS[attack_name]

  def copies(p, batch):
    loss = lambda x: methods.total(task.loss_terms(model.apply({'params': p}, x), batch))
    return {'image': attack(loss, batch['image'], eps, norm=norm, clip=clip)}

  fn = jax.jit(copies)
  return evaluate_lib.per_sample_outputs(lambda _, b: fn(params, b), arrays, mesh,
                                         batch_size)['image']


def with_copies(arrays: dict[str, np.ndarray], images: list[np.ndarray]) -> dict[str, np.ndarray]:
  """The training set followed by one copy of it per entry of `images` (each replacing the
  images, every other array repeated), with ids renumbered 0..N·(1+k)−1."""
  out = {k: np.concatenate([v] * (1 + len(images))) for k, v in arrays.items() if k != 'image'}
  out['image'] = np.concatenate([arrays['image'], *[np.asarray(i, arrays['image'].dtype)
                                                     for i in images]])
  out['id'] = np.arange(len(out['image']), dtype=np.asarray(arrays['id']).dtype)
  return out


def augment_training_set(config, task, info, arrays: dict[str, np.ndarray], mesh):
  """`arrays` with the adversarial copies of `config.method` made by the model in
  `config.method.fgsm_checkpoint` (its latest step), and what was done, for the run's log."""
  workdir = config.method.fgsm_checkpoint
  model, params, meta, step = evaluate_lib.restore_model(
      task, workdir, info, arrays['image'], mesh, what='The training data')
  names = methods.AUGMENTATION_ATTACKS[config.method.name]
  clip = tuple(config.attack.clip) or None
  images = [adversarial_copies(task, model, params, arrays, name, config.method.eps,
                               norm=config.method.fgsm_norm, clip=clip, mesh=mesh,
                               batch_size=config.eval.batch_size) for name in names]
  record = {'type': 'offline_augmentation', 'checkpoint': workdir, 'checkpoint_step': int(step),
            'checkpoint_method': meta.get('method', ''), 'attacks': list(names),
            'eps': float(config.method.eps), 'norm': config.method.fgsm_norm,
            'original': int(len(arrays['id'])), 'added': int(len(names) * len(arrays['id']))}
  return with_copies(arrays, images), record
