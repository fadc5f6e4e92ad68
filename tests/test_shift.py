"""The distribution-shift evaluation (robust_med.shift) and augmentation inside the train step of
every head (Task.augment / Task.move_targets)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from robust_med import augment, config_base, corruptions, evaluate, presets, sharding, shift, train
import robust_med.presets.classification
import robust_med.presets.detection
import robust_med.presets.landmarks
from robust_med.tasks import get_task_class


def small_classification(**overrides):
  c = presets.classification.classification_config('busi', 'std', 'synthetic')
  tiny.set_keys(c, {'data.num_train': 32, 'data.num_val': 16, 'data.image_size': 16,
                    'model.base_width': 4, 'model.stages': 2, 'eval.batch_size': 8,
                    'shift.corruptions': ('gaussian_noise', 'contrast', 'elastic'),
                    'shift.severities': (1, 3, 5), **overrides})
  return c


def model_and_evaluator(config):
  task = get_task_class(config.task)(config)
  data, info = task.load_split('val')
  model = task.build_model(info)
  params = model.init(jax.random.key(0), data['image'][:1])['params']
  evaluator = evaluate.make_evaluator(task, model, sharding.make_mesh(1), config)
  return task, data, params, evaluator


def test_shift_report_rows_means_and_relative_robustness():
  config = small_classification()
  task, data, params, evaluator = model_and_evaluator(config)
  report = shift.shift_report(evaluator, params, data, config, extra={'split': 'val'})
  assert report['severities'] == [1, 3, 5] and report['value_range'] == [0.0, 1.0]
  assert list(report['corruptions']) == ['gaussian_noise', 'contrast', 'elastic']
  rows = [r for name in report['corruptions'] for r in report['corruptions'][name]]
  assert len(rows) == 9 and {'accuracy', 'balanced_accuracy', 'auc'} <= set(rows[0])
  mean = np.mean([r['accuracy'] for r in rows])
  assert report['mean_corruption']['accuracy'] == pytest.approx(mean)
  assert report['relative_robustness'] == pytest.approx(mean / report['clean']['accuracy'])
  assert report['per_corruption']['contrast'] == pytest.approx(
      np.mean([r['accuracy'] for r in report['corruptions']['contrast']]))
  assert report['parameters']['contrast'] == list(corruptions.parameters('contrast'))
  # Deterministic: the same seed gives the same report.
  again = shift.shift_report(evaluator, params, data, config, extra={'split': 'val'})
  assert again['corruptions'] == report['corruptions']


def test_corrupted_split_changes_images_only_and_more_with_severity():
  config = small_classification()
  task, data, _, _ = model_and_evaluator(config)
  distances = []
  for severity in (0, 1, 3, 5):
    out = shift.corrupted_split(task, data, 'gaussian_noise', severity, seed=0, chunk=5,
                                lo_hi=(0.0, 1.0))
    np.testing.assert_array_equal(out['label'], data['label'])
    assert out['image'].shape == data['image'].shape
    assert out['image'].min() >= 0 and out['image'].max() <= 1
    distances.append(np.abs(out['image'] - data['image']).mean())
  assert distances[0] == 0 and distances[1] < distances[2] < distances[3]


def test_elastic_corruption_moves_segmentation_labels_with_the_image():
  c = tiny.tiny_config('std')
  task = get_task_class(c.task)(c)
  data, _ = task.load_split('val')
  # Make the image the label map itself: after the warp the two must still agree.
  data = dict(data, image=data['label'][..., None].astype(np.float32) / 2)
  out = shift.corrupted_split(task, data, 'elastic', 5, seed=0, chunk=16, lo_hi=(0.0, 1.0))
  assert not np.array_equal(out['label'], data['label'])  # Targets moved ...
  agree = np.mean(np.round(out['image'][..., 0] * 2) == out['label'])
  assert agree > 0.97, agree                                # ... with the image.


def test_elastic_corruption_moves_landmarks_and_their_full_resolution_copies():
  """An image that is one bright blob per landmark: after the warp each blob's peak is still at
  its (moved) landmark, and the full-resolution copies the MRE reads moved with them."""
  c = presets.landmarks.ceph_config('std', 'synthetic')
  task = get_task_class(c.task)(c)
  data, _ = task.load_split('val')
  data = {k: v[:4] for k, v in data.items()}
  h, w = data['image'].shape[1:3]
  yy, xx = np.mgrid[:h, :w]
  point = data['landmarks'][:, 0]  # (B, 2) as (x, y), input pixels.
  blob = np.exp(-((xx - point[:, 0, None, None]) ** 2 + (yy - point[:, 1, None, None]) ** 2) / 4.)
  data = dict(data, image=blob[..., None].astype(np.float32))
  out = shift.corrupted_split(task, data, 'elastic', 5, seed=0, chunk=4, lo_hi=(0.0, 1.0))
  moved = out['landmarks'][:, 0]
  assert np.abs(moved - point).max() > 0.5  # The warp moved the landmark ...
  peak = np.stack(np.unravel_index(out['image'][..., 0].reshape(4, -1).argmax(1), (h, w)), 1)
  np.testing.assert_allclose(peak[:, ::-1], moved, atol=1.0)  # ... and the blob with it,
  np.testing.assert_allclose(out['landmarks_full'],  # and the metrics' copies too.
                             out['landmarks'] * data['to_full'][:, None, :], rtol=1e-5)


def test_main_writes_shift_json_and_plot_and_shifted_sets(tmp_path):
  """A tiny training run on a split-column npz with a second (low-resolution) image copy: the
  report has the corruption rows and the cross-resolution set, and is written before
  robustness.json."""
  rng = np.random.default_rng(0)
  n = 40
  labels = rng.integers(0, 2, n)
  images = (rng.uniform(size=(n, 16, 16)) * 60 + labels[:, None, None] * 120).astype(np.uint8)
  np.savez(tmp_path / 'set.npz', images=images, images_8=images[:, ::2, ::2], label=labels,
           split=np.array(['train'] * 24 + ['val'] * 8 + ['test'] * 8))
  c = small_classification(**{'data.name': 'npz', 'data.root': str(tmp_path / 'set.npz'),
                              'data.class_names': ('a', 'b'), 'data.shift_image_key': 'images_8',
                              'num_epochs': 1, 'batch_size': 8, 'eval.noise_levels': (0.0, 0.01),
                              'eval.steps': 2, 'eval.apgd_steps': 2, 'eval.masking_checks': False,
                              'progress_bar': False, 'shift.corruptions': ('contrast',),
                              'shift.severities': (2,)})
  config_base.validate(c)
  train.train_and_evaluate(c, str(tmp_path / 'run'))
  report = json.loads((tmp_path / 'run' / 'shift.json').read_text())
  assert report['split'] == 'val' and report['num_samples'] == 8
  assert list(report['shifted_sets']) == ['images_8 resized to 16 px']
  assert report['shifted_sets']['images_8 resized to 16 px']['num_samples'] == 8
  assert (tmp_path / 'run' / 'shift.png').stat().st_size > 1000
  assert (tmp_path / 'run' / 'shift.json').stat().st_mtime <= (
      tmp_path / 'run' / 'robustness.json').stat().st_mtime


HEADS = {
    'segmentation': lambda: tiny.tiny_config('std'),
    'landmarks': lambda: presets.landmarks.ceph_config('std', 'synthetic'),
    'detection': lambda: presets.detection.bccd_config('std', 'synthetic'),
    'classification': lambda: small_classification(),
}


@pytest.mark.parametrize('head', sorted(HEADS))
def test_augmented_train_step_moves_each_heads_targets(head):
  config = HEADS[head]()
  task = get_task_class(config.task)(config)
  data, info = task.load_split('train')
  batch = {k: jnp.asarray(v[:4]) for k, v in data.items()}
  settings = augment.AugmentSettings(rotation=20.0, translation=0.1, flip=1.0)
  out = jax.jit(lambda b, k: task.augment(b, k, settings))(batch, jax.random.key(0))
  assert not np.allclose(out['image'], batch['image'])
  target = {'segmentation': 'label', 'landmarks': 'landmarks', 'detection': 'boxes',
            'classification': 'label'}[head]
  moved = not np.array_equal(np.asarray(out[target]), np.asarray(batch[target]))
  assert moved == task.outputs_move_with_image  # A class label stays; masks, points, boxes move.
  if head in ('landmarks', 'detection'):
    return  # Their train steps compile slowly on CPU; the step's augmentation is generic.
  # The whole step runs with augmentation (and a second view for the consistency terms).
  model = task.build_model(info)
  tx = train.make_optimizer(config.optimizer, 10)
  mesh = sharding.make_mesh(1)
  state = train.init_state(model, tx, data['image'], num_train=len(data['id']),
                           num_xi=len(task.loss_term_names), initial_margin=0.5, seed=0,
                           mesh=mesh)
  from robust_med import methods
  step = train.jit_train_step(train.make_train_step(task, model, methods.Std(), tx, settings),
                              state, mesh)
  state, metrics = step(state, sharding.put_batch({k: v[:4] for k, v in data.items()}, mesh))
  assert np.isfinite(float(metrics['loss']))
