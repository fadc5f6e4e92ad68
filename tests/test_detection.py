"""The detection head (robust_med/tasks/detection.py): box encoding, target assignment, the three
per-sample loss terms, post-processing, the metrics, ξ from training data only, per-sample
independence of the attacked loss, configs and bad input through the command line."""

from __future__ import annotations

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_helpers import REPO, error_line, run
from robust_med import attacks, boxes, compile_cache, config_base, methods, train
from robust_med.presets import detection as presets
from robust_med.errors import ConfigError
from robust_med.models.yolo import anchor_points
from robust_med.tasks import detection
from test_voc_data import IMAGES, make_voc, write_xml
from tiny import assert_xi_from_the_training_split_only, set_keys


def tiny_detection_config(method: str = 'std', **overrides):
  """The synthetic detection set at 64×64 with a 4-wide detector: trains in seconds."""
  c = presets.bccd_config(method, 'synthetic')
  c.data.num_train, c.data.num_val = 32, 8
  c.model.base_width = 4
  c.batch_size, c.num_epochs = 8, 2
  c.method.xi_warmup_epochs = 1
  c.attack.steps = 2
  c.log_every_steps, c.checkpoint_every_steps = 2, 4
  c.progress_bar = False
  c.eval.noise_levels = (0.0, 0.5)
  c.eval.steps = c.eval.apgd_steps = 3
  c.eval.weak_steps = 1
  c.eval.batch_size = 8
  c.mesh.num_devices = 1
  set_keys(c, overrides)
  return c


def test_box_encoding_round_trip():
  rng = np.random.default_rng(0)
  corner = rng.uniform(0, 100, (50, 2))
  box = np.concatenate([corner, corner + rng.uniform(1, 60, (50, 2))], axis=1)
  point = box[:, :2] + rng.uniform(0, 1, (50, 2)) * (box[:, 2:] - box[:, :2])
  distances = boxes.box_to_ltrb(jnp.asarray(point), jnp.asarray(box))
  assert (np.asarray(distances) >= 0).all()  # A point inside its box: all four distances ≥ 0.
  np.testing.assert_allclose(boxes.ltrb_to_box(jnp.asarray(point), distances), box, atol=1e-4)
  # The detector's encoding: distances in strides through softplus, decoded around the points.
  points, strides = anchor_points(64)
  assert points.shape == (8 * 8 + 4 * 4 + 2 * 2, 2) and strides[0] == 8 and strides[-1] == 32
  np.testing.assert_allclose(points[:2], [[4, 4], [12, 4]])


def _single_image():
  """One 64×64 image with a 20×20 box of class 1 centred on the stride-8 point (28, 28), and a
  second (invalid, padding) slot."""
  gt_boxes = jnp.array([[18.0, 18.0, 38.0, 38.0], [0.0, 0.0, 0.0, 0.0]])
  return gt_boxes, jnp.array([1, 0]), jnp.array([True, False])


def test_top_indices_are_top_ks_ties_included():
  """The sort that replaces `lax.top_k` (which XLA gathers across devices) picks the same
  indices in the same order, ties to the lower index."""
  rng = np.random.default_rng(0)
  for shape, k in [((5, 84), 10), ((3, 7, 40), 40), ((2, 9), 1)]:
    values = jnp.asarray(rng.integers(0, 4, shape).astype(np.float32))  # many ties
    np.testing.assert_array_equal(detection.top_indices(values, k),
                                  jax.lax.top_k(values, k)[1])


def test_candidates_are_inside_and_near_and_a_tiny_box_gets_its_nearest_point():
  points, strides = (jnp.asarray(a) for a in anchor_points(64))
  gt_boxes, _, gt_valid = _single_image()
  cand = np.asarray(detection.candidates(points, strides, gt_boxes, gt_valid, radius=2.5))
  # Stride-8 points strictly inside (18, 38): 20, 28, 36 on each axis → 9; the stride-16 point
  # (24, 24) and its neighbours (24, 40)… : only (24, 24) lies inside; stride 32: (16|48) none.
  inside = [tuple(p) for p in np.asarray(points)[cand[0]]]
  assert sorted(inside) == sorted([(x, y) for x in (20, 28, 36) for y in (20, 28, 36)] +
                                  [(24, 24)])
  assert not cand[1].any()  # Padding boxes take no point.
  tiny = jnp.array([[29.0, 29.0, 31.0, 31.0]])  # Holds no point centre: takes the nearest.
  cand = np.asarray(detection.candidates(points, strides, tiny, jnp.array([True]), 2.5))
  assert cand.sum() == 1 and tuple(np.asarray(points)[cand[0]][0]) == (28, 28)


def test_assignment_takes_the_best_aligned_candidates_and_resolves_conflicts():
  points, strides = (jnp.asarray(a) for a in anchor_points(64))
  a = points.shape[0]
  gt_boxes, gt_labels, gt_valid = _single_image()
  # Predictions: every point predicts a far-away box, except three stride-8 points inside the
  # ground truth, which predict it more or less well.
  pred = np.tile([[0.0, 0.0, 2.0, 2.0]], (a, 1))
  # Points (28, 28), (20, 28) and (28, 36) are stride-8 cells 27, 26 and 35.
  good = {27: [18, 18, 38, 38], 26: [18, 18, 34, 38], 35: [20, 20, 36, 36]}
  for i, b in good.items():
    pred[i] = b
  probs = np.full((a, 3), 0.5)
  positive, index = detection.assign(jnp.asarray(pred), jnp.asarray(probs), points, strides,
                                     gt_boxes, gt_labels, gt_valid, top_k=2)
  # IoUs with the truth: 1.0 (27), 320/400 = 0.8 (26), 256/400 = 0.64 (35).
  assert sorted(np.flatnonzero(positive).tolist()) == [26, 27]  # The two best overlaps.
  # A second box overlapping the first: point 27 predicts box 0 exactly, so it stays with box 0.
  two = jnp.array([[18.0, 18.0, 38.0, 38.0], [22.0, 22.0, 42.0, 42.0]])
  positive, index = detection.assign(jnp.asarray(pred), jnp.asarray(probs), points, strides, two,
                                     jnp.array([1, 2]), jnp.array([True, True]), top_k=3)
  assert positive[27] and index[27] == 0


def test_loss_terms_are_per_sample_and_the_box_term_vanishes_on_the_truth():
  points, _ = anchor_points(64)
  a = points.shape[0]
  gt_boxes, gt_labels, gt_valid = _single_image()
  batch = {'image': jnp.zeros((2, 64, 64, 3)), 'boxes': jnp.stack([gt_boxes] * 2),
           'labels': jnp.stack([gt_labels] * 2), 'valid': jnp.stack([gt_valid] * 2)}
  perfect = jnp.tile(gt_boxes[:1], (a, 1))                     # Every point predicts the box.
  off = perfect + jnp.array([3.0, 3.0, 3.0, 3.0])
  logits = jnp.full((a,), -4.0)
  outputs = {'box': jnp.stack([perfect, off]), 'obj': jnp.stack([logits, logits]),
             'cls': jnp.full((2, a, 3), -4.0)}
  terms = detection.detection_loss_terms(outputs, batch, top_k=10, radius=2.5, alpha=0.5,
                                         beta=6.0, box_weight=5.0)
  assert set(terms) == {'box', 'obj', 'cls'} and all(v.shape == (2,) for v in terms.values())
  assert abs(float(terms['box'][0])) < 1e-5 and float(terms['box'][1]) > 0.1
  np.testing.assert_allclose(terms['obj'][0], terms['obj'][1], rtol=1e-6)
  # Confident right classes at the positives lower the class term.
  cls = outputs['cls'].at[:, :, 1].set(4.0)
  better = detection.detection_loss_terms({**outputs, 'cls': cls}, batch, top_k=10, radius=2.5,
                                          alpha=0.5, beta=6.0, box_weight=5.0)
  assert (np.asarray(better['cls']) < np.asarray(terms['cls'])).all()


def test_postprocess_keeps_one_box_per_object_and_class():
  a = 10
  box = np.tile([[50.0, 50.0, 60.0, 60.0]], (a, 1))
  box[1] = [51, 50, 61, 60]          # Overlaps box 0 (IoU 0.82), same class → suppressed.
  box[2] = [51, 50, 61, 60]          # Same place, another class → kept.
  box[3] = [0, 0, 10, 10]            # Elsewhere → kept.
  obj = np.full((a,), -9.0)
  obj[:4] = [3.0, 2.5, 2.0, 1.5]
  cls = np.full((a, 2), -9.0)
  cls[[0, 1, 3], 0] = 5.0
  cls[2, 1] = 5.0
  out = detection.postprocess({'box': jnp.asarray(box)[None], 'obj': jnp.asarray(obj)[None],
                               'cls': jnp.asarray(cls)[None]}, pre_nms=8, nms_iou=0.6,
                              score_threshold=0.01, max_detections=5)
  assert out['det_box'].shape == (1, 5, 4)
  valid = np.asarray(out['det_valid'][0])
  assert valid.tolist() == [True, True, True, False, False]
  np.testing.assert_allclose(np.asarray(out['det_box'][0][valid]), box[[0, 2, 3]])
  assert np.asarray(out['det_label'][0][valid]).tolist() == [0, 1, 0]
  scores = np.asarray(out['det_score'][0])
  assert (np.diff(scores[valid]) <= 0).all() and (scores[~valid] == 0).all()


def test_average_iou_and_map_by_hand():
  # Image 0: two cells of class 0; one detected at IoU 0.5, the other found only by a box of the
  # wrong class (→ 0). Image 1: one class-1 cell detected exactly, and an unconfident box.
  gt_box = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 10, 10], [0, 0, 0, 0]]], float)
  gt_label = np.array([[0, 0], [1, 0]])
  gt_valid = np.array([[True, True], [True, False]])
  det_box = np.array([[[0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 1, 1]],
                      [[0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 1, 1]]], float)
  det_label = np.array([[0, 1, 0], [1, 1, 0]])
  det_score = np.array([[0.9, 0.8, 0.0], [0.7, 0.1, 0.0]])
  det_valid = np.array([[True, True, False], [True, True, False]])
  stats = dict(gt_box=gt_box, gt_label=gt_label, gt_valid=gt_valid, det_box=det_box,
               det_label=det_label, det_score=det_score, det_valid=det_valid)
  m = detection.detection_metrics(stats, ('a', 'b'), score_threshold=0.25)
  assert m['avg_iou_best'] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
  # One to one over every kept detection: image 1's two class-1 boxes both claim its cell, and
  # the higher-scoring one (IoU 1) keeps it; image 0 as above.
  assert m['avg_iou'] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
  # Class a: one of two cells found, at IoU 0.5, with precision 1: at the 0.5 threshold the 51
  # recall points ≤ 0.5 read precision 1 (AP 51/101), above it nothing matches (AP 0).
  # Class b: ranked 0.8 (a false positive in image 0), 0.7 (the cell), 0.1 (false): the one
  # cell is reached at precision 1/2 at every threshold → AP 0.5.
  ap_a50 = 51 / 101
  assert m['ap50_95/a'] == pytest.approx(ap_a50 / 10)
  assert m['ap50_95/b'] == pytest.approx(0.5)
  assert m['map50'] == pytest.approx((ap_a50 + 0.5) / 2)
  assert m['map50_95'] == pytest.approx((ap_a50 / 10 + 0.5) / 2)
  # Per image for the worst case (one to one): image 0's boxes 0.5 and 0, image 1's one box 1.
  task = detection.Task(tiny_detection_config())
  np.testing.assert_allclose(task.sample_scores(stats), [0.25, 1.0])


def test_reported_average_iou_is_one_to_one_on_two_cells_one_box():
  # Two cells annotated on one spot and one perfect detection: the reported avg_iou (the authors'
  # one-to-one matching) lets the detection serve one cell: (1 + 0) / 2 = 0.5; avg_iou_best gives
  # each cell its best overlap, 1.0.
  stats = dict(gt_box=np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], float),
               gt_label=np.array([[0, 0]]), gt_valid=np.array([[True, True]]),
               det_box=np.array([[[0, 0, 10, 10]]], float), det_label=np.array([[0]]),
               det_score=np.array([[0.9]]), det_valid=np.array([[True]]))
  m = detection.detection_metrics(stats, ('a',), score_threshold=0.25)
  assert m['avg_iou'] == pytest.approx(0.5)
  assert m['avg_iou_best'] == pytest.approx(1.0)


def test_xi_is_a_three_vector_from_the_training_split_only():
  assert_xi_from_the_training_split_only(
      tiny_detection_config('amat', **{'method.xi_stat': 'mean+2std'}), num_terms=3)


def test_attacking_sample_0_leaves_sample_1_unchanged():
  # 32×32 images: the same detector, loss and attack at all three scales, compiled faster.
  config = tiny_detection_config(**{'data.image_size': 32})
  task = detection.Task(config)
  data, info = task.load_split('train')
  model = task.build_model(info)
  batch = {k: jnp.asarray(v[:2]) for k, v in data.items()}
  # Compiled at XLA's level 1, as the trainer initialises (compile_cache.run_once).
  params = compile_cache.run_once(model.init, jax.random.key(0), batch['image'][:1])['params']

  @jax.jit
  def loss_fn(x):
    return methods.total(task.loss_terms(model.apply({'params': params}, x), batch))
  # Jitted as the trainer and evaluator run it (eager, the detector's PGD takes minutes on CPU).
  x_adv = jax.jit(lambda x, eps: attacks.pgd(loss_fn, x, eps, norm='l2', steps=5,
                                                unroll=False))(
      batch['image'], jnp.array([2.0, 0.0]))
  assert float(jnp.linalg.norm(x_adv[0] - batch['image'][0])) > 0.5
  np.testing.assert_array_equal(np.asarray(x_adv[1]), np.asarray(batch['image'][1]))
  clean, attacked = loss_fn(batch['image']), loss_fn(x_adv)
  assert float(attacked[0]) > float(clean[0])
  np.testing.assert_allclose(float(attacked[1]), float(clean[1]), rtol=1e-6)
  # And the gradient of sample 1's loss with respect to sample 0's pixels is exactly zero.
  grad = jax.jit(jax.grad(lambda x: loss_fn(x)[1]))(batch['image'])
  assert float(jnp.abs(grad[0]).max()) == 0.0 and float(jnp.abs(grad[1]).max()) > 0.0


def test_training_lowers_the_loss_and_raises_average_iou(tmp_path):
  # Depth 0 (CSP blocks without bottlenecks): the same head, loss and trainer, learnt faster and
  # compiled in less time than depth 1.
  config = tiny_detection_config(**{'data.num_train': 64, 'model.base_width': 8,
                                    'model.depth': 0, 'num_epochs': 4})
  trainer = train.Trainer(config, str(tmp_path))
  before = trainer.fresh_state().params
  state = trainer.train()
  from robust_med import evaluate
  evaluator = evaluate.make_evaluator(trainer.task, trainer.model, trainer.mesh, config)
  first = evaluator.clean(before, trainer.eval_data)
  last = evaluator.clean(state.params, trainer.eval_data)
  assert last['loss'] < 0.6 * first['loss'], (first, last)
  assert last['avg_iou'] > first['avg_iou'] + 0.1, (first, last)
  assert {'avg_iou', 'map50_95', 'map50', 'ap50_95/rbc'} <= set(last)


@pytest.mark.parametrize('name', ['std', 'sat', 'amat'])
@pytest.mark.parametrize('arg', presets.VARIANTS)
def test_every_bccd_config_variant_validates(name, arg):
  import importlib.util
  spec = importlib.util.spec_from_file_location('c', REPO / 'configs' / f'bccd_{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  config_base.validate(c)
  assert c.task == 'detection' and c.method.xi_stat == 'mean+2std'
  if arg == '':
    assert c.data.image_size == 320 and c.num_epochs == 300 and c.batch_size == 32
    assert c.method.delta_eps == 2.5 and tuple(c.eval.noise_levels) == (0, 1, 2, 5, 10, 15)
  if name == 'sat' and arg != 'synthetic':
    assert c.method.eps in presets.BCCD['sat_eps']


def test_config_checks_are_one_line():
  def bad(**overrides):
    with pytest.raises(ConfigError) as e:
      config_base.validate(tiny_detection_config(**overrides))
    assert '\n' not in str(e.value)
    return str(e.value)
  assert 'multiple of 32' in bad(**{'data.image_size': 100})
  assert 'nms_iou' in bad(**{'detection.nms_iou': 1.5})
  assert 'top_k' in bad(**{'detection.top_k': 0})
  assert 'class_names' in bad(**{'data.class_names': ()})
  assert 'tune.txt' in bad(**{'data.tune_fraction': 0.2})


CONFIG = str(REPO / 'configs' / 'bccd_std.py')
FAST = ['--config.data.image_size=32', '--config.model.base_width=4', '--config.num_epochs=1',
        '--config.batch_size=2', '--config.eval.steps=1', '--config.eval.apgd_steps=1',
        '--config.eval.noise_levels=(0.0,)', '--config.progress_bar=False',
        '--config.mesh.num_devices=1']


# Two images without quirks (so that the only line is the error).
CLEAN = {'a': IMAGES['a'], 'd': (60, 60, [('RBC', 1, 1, 20, 20), ('WBC', 30, 30, 55, 55)])}
CLEAN_SPLITS = {'train': ['a', 'd'], 'val': ['d'], 'test': ['a']}


def _break(root, how):
  if how == 'no_folder':
    return root / 'nowhere'
  if how == 'no_split_file':
    (root / 'ImageSets' / 'Main' / 'val.txt').unlink()
  elif how == 'bad_xml':
    (root / 'Annotations' / 'a.xml').write_text('<annotation><object>')
  elif how == 'unknown_class':
    write_xml(root / 'Annotations' / 'a.xml', 80, 40, [('Neutrophil', 1, 1, 9, 9)])
  elif how == 'missing_image':
    (root / 'JPEGImages' / 'd.jpg').unlink()
  elif how == 'too_many_boxes':
    write_xml(root / 'Annotations' / 'a.xml', 80, 40, [('RBC', i + 1, 1, i + 9, 9)
                                                       for i in range(6)])
  return root


@pytest.mark.parametrize('how, words', [
    ('no_folder', ['nowhere', 'not found: set config.data.root']),
    ('no_split_file', ["Unknown split 'val'", 'test, train']),
    ('bad_xml', ['a.xml is not a valid']),
    ('unknown_class', ["unknown class 'Neutrophil'; the known classes are RBC, WBC, Platelets"]),
    ('missing_image', ['d.jpg (listed in ImageSets/Main/train.txt) not found']),
    ('too_many_boxes', ['a has 6 boxes, more than config.data.max_boxes = 4: raise']),
])
def test_bad_detection_input_is_one_error_line(tmp_path, how, words):
  root = _break(make_voc(tmp_path / 'voc', CLEAN, CLEAN_SPLITS), how)
  line = error_line(run('robust_med.main', f'--config={CONFIG}:cpu', f'--workdir={tmp_path}/run',
                        f'--config.data.root={root}', '--config.data.max_boxes=4', *FAST))
  for w in words:
    assert w in line, line
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.slow
def test_train_on_a_voc_folder_then_evaluate_its_test_split(tmp_path):
  root = make_voc(tmp_path / 'voc', CLEAN, CLEAN_SPLITS)
  work = tmp_path / 'run'
  proc = run('robust_med.main', f'--config={CONFIG}:cpu', f'--workdir={work}',
             f'--config.data.root={root}', '--config.data.max_boxes=4', *FAST,
             '--config.eval.masking_checks=False')
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json
  report = json.loads((work / 'robustness.json').read_text())
  assert report['task'] == 'detection' and report['metric'] == 'avg_iou'
  row = report['curves']['pgd-1'][0]
  assert {'avg_iou', 'map50_95', 'map50'} <= set(row)
  proc = run('robust_med.evaluate', f'--workdir={work}', '--split=test')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((work / 'eval' / 'test' / 'robustness.json').read_text())
  assert report['split'] == 'test' and report['num_samples'] == 1
  assert report['data']['root'] == str(root)
  assert (work / 'eval' / 'test' / 'examples.png').stat().st_size > 1000


def test_the_huge_budget_check_reads_map_and_old_reports_can_be_rechecked():
  """Under a huge budget average IoU keeps ~0.11 from a flood of false boxes while mAP is gone:
  the head's floor metric is mAP@0.5:0.95, and a report judged by average IoU is rechecked from
  its stored curves."""
  from robust_med import evaluate
  task = detection.Task(tiny_detection_config())
  assert task.floor_metric == 'map50_95' and task.metric_floor() == 0.0
  row = lambda e, iou, m: {'eps': e, 'avg_iou': iou, 'map50_95': m}
  report = {
      'attack': {'name': 'pgd-100'},
      'curves': {'pgd-100': [row(0.0, 0.59, 0.25), row(1.0, 0.56, 0.23)]},
      'check_attacks': {'weak': {'name': 'pgd-20'}, 'random': {'name': 'random-noise'}},
      'check_curves': {'pgd-20': [row(1.0, 0.57, 0.23)], 'random-noise': [row(1.0, 0.59, 0.25)],
                       'huge-eps': [row(389.0, 0.113, 0.0001)]},
      'checks': [{'name': 'huge_eps_reaches_floor', 'passed': False}]}
  new = evaluate.recheck(task, tiny_detection_config().eval, report)
  checks = {c['name']: c for c in new['checks']}
  assert all(c['passed'] for c in checks.values()) and not new['warnings']
  assert checks['huge_eps_reaches_floor']['figures']['metric_name'] == 'map50_95'
  assert new['checks_recomputed']['before'] == {'huge_eps_reaches_floor': False}
  report['check_curves']['huge-eps'] = [row(389.0, 0.0, 0.2)]  # mAP not driven down: fails.
  assert not {c['name']: c['passed'] for c in evaluate.recheck(
      task, tiny_detection_config().eval, report)['checks']}['huge_eps_reaches_floor']


def test_evaluation_chunks_and_loop_settings_are_checked():
  with pytest.raises(ConfigError, match='attack.unroll'):
    config_base.validate(tiny_detection_config(**{'attack.unroll': 'sometimes'}))
  with pytest.raises(ConfigError, match='chunk_steps'):
    config_base.validate(tiny_detection_config(**{'eval.chunk_steps': -1}))
  from robust_med import evaluate
  task = detection.Task(tiny_detection_config())
  import flax.linen as nn
  from robust_med import sharding
  mesh = sharding.make_mesh(1)
  evaluator = evaluate.make_evaluator(task, nn.Dense(1), mesh, tiny_detection_config(
      **{'eval.chunk_steps': 3}))
  assert evaluator.chunk == 3
