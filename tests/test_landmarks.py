"""The landmark head: targets and both decoders, the loss terms, MRE/SDR with the full-resolution
and mm conversion, ξ from training data only, BCE and Dice training, and its config checks."""

from __future__ import annotations

import json

import data_paths  # Puts the repo root on sys.path; keep before robust_med imports.
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_med import config_base, evaluate, train
from robust_med.presets import landmarks as presets
from robust_med.errors import ConfigError
from robust_med.tasks import landmarks as lm
from tiny import assert_xi_from_the_training_split_only, set_keys


def tiny_landmark_config(method: str = 'std', **overrides):
  """The synthetic landmark set at 32×32 with a narrow U-Net: trains in seconds."""
  c = presets.ceph_config(method, 'synthetic')
  c.data.patch_size = (32, 32)
  c.data.num_landmarks = 3
  c.data.num_train, c.data.num_val = 32, 16
  c.landmarks.radius = 4.0
  c.model.base_width, c.model.depth = 4, 3
  c.batch_size, c.num_epochs = 8, 3
  c.optimizer.learning_rate = 1e-2
  c.method.xi_warmup_epochs = 1
  c.attack.steps = 2
  c.log_every_steps, c.checkpoint_every_steps = 2, 4
  c.progress_bar = False
  c.eval.noise_levels = (0.0, 0.5)
  c.eval.steps = c.eval.apgd_steps = 3
  c.eval.weak_steps = 1
  c.eval.batch_size = 8
  set_keys(c, overrides)
  return c


def perfect_outputs(points, size, radius):
  """Model outputs that match the targets of `points` exactly (heatmap logits ±10)."""
  t = lm.encode(jnp.asarray(points, jnp.float32), size, radius)
  return {'heatmap': jnp.where(t['disk'] > 0, 10.0, -10.0), 'offset_x': t['offset_x'],
          'offset_y': t['offset_y']}


@pytest.mark.parametrize('decoder', ['vote', 'argmax'])
def test_encode_then_decode_recovers_sub_pixel_landmarks(decoder):
  rng = np.random.default_rng(0)
  size, radius = (40, 56), 5.0
  points = np.stack([rng.uniform(0, size[1] - 1, (4, 6)), rng.uniform(0, size[0] - 1, (4, 6))], -1)
  points[0, 0] = (0.2, 0.3)  # At the border the disk is cut; its pixels still point right.
  outputs = perfect_outputs(points, size, radius)
  decode = (lambda o: lm.decode_vote(o, radius)) if decoder == 'vote' else (
      lambda o: lm.decode_argmax(o, radius))
  decoded = np.asarray(jax.jit(decode)(outputs))
  assert decoded.shape == (4, 6, 2)
  assert np.abs(decoded - points).max() < 0.5
  assert np.abs(decoded - points).max() < 1e-3  # In fact exact: every vote lands on the point.


def test_targets_are_disks_with_offsets_pointing_at_the_landmark():
  t = lm.encode(jnp.asarray([[[10.0, 6.0]]]), (16, 20), 3.0)
  disk = np.asarray(t['disk'][0, ..., 0])
  yy, xx = np.mgrid[:16, :20]
  np.testing.assert_array_equal(disk, ((xx - 10) ** 2 + (yy - 6) ** 2 <= 9).astype(np.float32))
  np.testing.assert_allclose(np.asarray(t['offset_x'][0, ..., 0]), disk * (10 - xx) / 3.0)
  np.testing.assert_allclose(np.asarray(t['offset_y'][0, ..., 0]), disk * (6 - yy) / 3.0)


def test_votes_are_weighted_by_probability_and_thresholded():
  size, radius = (32, 32), 4.0
  points = np.array([[[20.3, 11.6], [8.0, 25.0]]], np.float32)
  outputs = dict(perfect_outputs(points, size, radius))
  # Landmark 2: its disk is unsure (p ≈ 0.27) and a second, wrong disk just as large is less sure
  # (p ≈ 0.12): weighted votes pick the right one; above a 0.5 threshold nothing votes and the
  # decoder falls back to argmax + offset, which is still right.
  wrong = lm.encode(jnp.asarray([[[24.0, 26.0]]]), size, radius)
  heat = jnp.where(outputs['heatmap'][..., 1] > 0, -1.0, -10.0)
  heat = jnp.where(wrong['disk'][..., 0] > 0, -2.0, heat)
  outputs['heatmap'] = outputs['heatmap'].at[..., 1].set(heat)
  outputs['offset_x'] = outputs['offset_x'].at[..., 1].add(wrong['offset_x'][..., 0])
  outputs['offset_y'] = outputs['offset_y'].at[..., 1].add(wrong['offset_y'][..., 0])
  for threshold in (0.0, 0.5):
    decoded = np.asarray(lm.decode_vote(outputs, radius, threshold))
    np.testing.assert_allclose(decoded, points, atol=1e-3)
  # Unweighted, the two disks tie; weighted by 0.27 vs 0.12 the right one wins clearly.
  outputs['heatmap'] = outputs['heatmap'].at[..., 1].set(
      jnp.where(wrong['disk'][..., 0] > 0, 0.5, heat))  # Now the wrong disk is surer.
  np.testing.assert_allclose(np.asarray(lm.decode_vote(outputs, radius))[0, 1], (24.0, 26.0),
                             atol=1e-3)


def test_vote_decoder_ignores_a_stray_hot_pixel_that_argmax_picks():
  size, radius = (32, 32), 4.0
  points = np.array([[[20.3, 11.6]]], np.float32)
  outputs = dict(perfect_outputs(points, size, radius))
  outputs['heatmap'] = outputs['heatmap'].at[0, 2, 3, 0].set(30.0)  # One confident wrong pixel.
  vote = np.asarray(lm.decode_vote(outputs, radius))[0, 0]
  argmax = np.asarray(lm.decode_argmax(outputs, radius))[0, 0]
  np.testing.assert_allclose(vote, points[0, 0], atol=1e-4)
  np.testing.assert_allclose(argmax, (3.0, 2.0), atol=1e-4)


@pytest.mark.parametrize('heatmap_loss', ['dice', 'bce'])
def test_loss_terms_are_per_sample_and_smallest_for_the_truth(heatmap_loss):
  config = tiny_landmark_config(**{'landmarks.heatmap_loss': heatmap_loss})
  task = lm.Task(config)
  size, radius = (32, 32), config.landmarks.radius
  points = np.array([[[8.0, 9.0], [20.0, 22.0]], [[15.0, 5.5], [25.0, 12.0]]], np.float32)
  batch = {'landmarks': jnp.asarray(points)}
  good = perfect_outputs(points, size, radius)
  wrong = perfect_outputs(points[:, ::-1] + 3.0, size, radius)
  mixed = jax.tree.map(lambda g, w: jnp.concatenate([g[:1], w[1:]]), good, wrong)
  terms = task.loss_terms(mixed, batch)
  assert set(terms) == set(task.loss_term_names) == {'heatmap', 'offset_x', 'offset_y'}
  for name, value in terms.items():
    assert value.shape == (2,), name
    assert float(value[0]) < float(value[1]), name  # Sample 0 is right, sample 1 is not.
  assert float(terms['offset_x'][0]) == 0.0 and float(terms['offset_y'][0]) == 0.0
  assert float(terms['heatmap'][0]) < 0.01
  # Changing sample 1's outputs leaves sample 0's losses alone.
  again = task.loss_terms(jax.tree.map(lambda g: g.at[1].set(0.0), mixed), batch)
  for name in terms:
    assert float(again[name][0]) == pytest.approx(float(terms[name][0]))


def test_radial_errors_go_through_full_resolution_and_mm_with_unequal_scales():
  # Input pixels -> full resolution: x × 2, y × 1.5; then 0.1 mm per full-resolution pixel on x
  # and 0.2 mm on y.
  batch = {'to_full': jnp.array([[2.0, 1.5]]), 'spacing': jnp.array([[0.1, 0.2]]),
           'landmarks_full': jnp.array([[[20.0, 30.0], [100.0, 60.0], [0.0, 0.0]]])}
  pred = jnp.array([[[10.0, 20.0], [60.0, 40.0], [15.0, 0.0]]])
  errors = np.asarray(lm.radial_errors_mm(pred, batch))
  # (20, 30) vs (20, 30): 0. (120, 60) vs (100, 60): 20 px × 0.1 = 2 mm. (30, 0) vs (0, 0): 3 mm.
  np.testing.assert_allclose(errors, [[0.0, 2.0, 3.0]], atol=1e-6)
  # A y error of 10 full pixels is 2 mm, an x error of 10 full pixels 1 mm: √(1 + 4).
  pred = jnp.array([[[15.0, 20.0 + 10 / 1.5], [50.0, 40.0], [0.0, 0.0]]])
  np.testing.assert_allclose(np.asarray(lm.radial_errors_mm(pred, batch))[0, 0], np.sqrt(5.0),
                             rtol=1e-5)


def test_mre_and_sdr_against_hand_computed_values():
  errors = np.array([[1.0, 2.0, 2.4, 6.0], [2.6, 3.0, 3.9, 0.5]])
  out = lm.landmark_metrics(errors, ('a', 'b', 'c', 'd'))
  assert out['mre_mm'] == pytest.approx(21.4 / 8)
  assert out['mre_std_mm'] == pytest.approx(np.std(errors))
  assert out['sdr_2mm'] == pytest.approx(3 / 8)     # 1.0, 2.0, 0.5
  assert out['sdr_2.5mm'] == pytest.approx(4 / 8)   # + 2.4
  assert out['sdr_3mm'] == pytest.approx(6 / 8)     # + 2.6, 3.0
  assert out['sdr_4mm'] == pytest.approx(7 / 8)     # + 3.9
  assert out['mre_mm/a'] == pytest.approx(1.8) and out['mre_mm/d'] == pytest.approx(3.25)
  task = lm.Task(tiny_landmark_config())
  np.testing.assert_allclose(task.sample_scores({'radial_error_mm': errors}),
                             [-11.4 / 4, -10.0 / 4])


def test_the_masking_floor_is_the_mean_shape_mre_in_mm():
  # Two images, one landmark, unequal mm per pixel: (0, 0) and (10, 20) px at (0.1, 0.2) mm/px
  # are (0, 0) and (1, 4) mm; the mean shape (0.5, 2) mm is √(0.25 + 4) mm from both.
  full = np.array([[[0., 0.]], [[10., 20.]]])
  spacing = np.array([[0.1, 0.2], [0.1, 0.2]])
  assert lm.mean_shape_mre_mm(full, spacing) == pytest.approx(np.sqrt(4.25))
  # Another constant prediction is worse (here: every landmark at (0.5, 0) mm).
  assert lm.mean_shape_mre_mm(full, spacing) < np.mean([0.5, np.hypot(0.5, 4.0)])
  # The task's floor is that of the split it loaded last.
  task = lm.Task(tiny_landmark_config())
  arrays, _ = task.load_split('val')
  assert task.metric_floor() == pytest.approx(
      lm.mean_shape_mre_mm(arrays['landmarks_full'], arrays['spacing']))
  assert task.metric_floor() > 0


def test_xi_is_a_three_vector_from_the_training_split_only():
  assert_xi_from_the_training_split_only(
      tiny_landmark_config('amat', **{'method.xi_stat': 'mean+2std'}), num_terms=3)


@pytest.mark.slow
@pytest.mark.parametrize('heatmap_loss', ['dice', 'bce'])
def test_bce_and_dice_variants_both_train(heatmap_loss, tmp_path):
  # One device (the 8 simulated ones split a batch of 8 into slivers) and no checkpoints (the test
  # reads the returned state): the same 128 steps, in about half the CPU time.
  config = tiny_landmark_config('std', **{
      'landmarks.heatmap_loss': heatmap_loss, 'data.patch_size': (48, 48), 'landmarks.radius': 5.0,
      'data.num_train': 128, 'model.base_width': 8, 'num_epochs': 8, 'mesh.num_devices': 1,
      'checkpoint_every_steps': 1000})
  trainer = train.Trainer(config, str(tmp_path))
  before = trainer.fresh_state().params
  state = trainer.train()
  evaluator = evaluate.make_evaluator(trainer.task, trainer.model, trainer.mesh, config)
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in records if r['type'] == 'train']
  assert losses[-1] < 0.7 * losses[0], losses
  first = evaluator.clean(before, trainer.eval_data)['mre_mm']
  last = evaluator.clean(state.params, trainer.eval_data)['mre_mm']
  assert last < 0.6 * first, (first, last)
  assert last < 0.8 * trainer.task.metric_floor()  # Better than the mean shape.


def test_config_checks_are_one_line():
  def bad(**overrides):
    c = tiny_landmark_config(**overrides)
    with pytest.raises(ConfigError) as e:
      config_base.validate(c)
    assert '\n' not in str(e.value)
    return str(e.value)
  assert 'too small for landmark disks' in bad(**{'landmarks.radius': 16.0})
  assert 'heatmap_loss' in bad(**{'landmarks.heatmap_loss': 'mse'})
  assert 'decoder' in bad(**{'landmarks.decoder': 'mean'})
  assert 'vote_threshold' in bad(**{'landmarks.vote_threshold': 1.5})
  config_base.validate(tiny_landmark_config())  # The tiny config itself is fine.
  # Head keys are known to the landmark head only.
  seg = config_base.base_config()
  seg.landmarks = presets.ceph_config('std', 'synthetic').landmarks
  with pytest.raises(ConfigError, match='Unknown config key'):
    config_base.validate(seg)


@pytest.mark.parametrize('name', ['ceph_std', 'ceph_std_bce', 'ceph_sat', 'ceph_amat'])
@pytest.mark.parametrize('arg', presets.VARIANTS)
def test_every_ceph_config_variant_validates(name, arg):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, data_paths.REPO_ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config_base.validate(config)
  assert config.task == 'landmarks'
  assert config.landmarks.heatmap_loss == ('bce' if name == 'ceph_std_bce' else 'dice')


# 32×32, depth 2, one-step training attacks and a checkpoint at the end only: the sweep's cost is
# mostly compiling three training steps and the evaluation attacks, which these keep small.
CEPH_TINY = ['--config.data.patch_size=(32,32)', '--config.data.num_landmarks=3',
             '--config.data.num_train=32', '--config.data.num_val=16',
             '--config.landmarks.radius=4.0', '--config.model.base_width=4',
             '--config.model.depth=2', '--config.batch_size=8', '--config.num_epochs=3',
             '--config.method.xi_warmup_epochs=1', '--config.attack.steps=1',
             '--config.eval.steps=3', '--config.eval.apgd_steps=3', '--config.eval.weak_steps=1',
             '--config.eval.noise_levels=(0.5,1.0)', '--config.eval.batch_size=8',
             '--config.log_every_steps=2', '--config.checkpoint_every_steps=12',
             '--config.progress_bar=False', '--config.mesh.num_devices=1',
             # The masking checks have tests of their own (test_gradient_masking.py, and the
             # segmentation CLI's shared run); this sweep pins down the landmark head's reports.
             '--config.eval.masking_checks=False']


@pytest.mark.slow
def test_the_sweep_and_evaluate_commands_work_for_the_landmark_head_unchanged(tmp_path):
  from cli_helpers import REPO, run
  config = str(REPO / 'configs' / 'ceph_amat.py') + ':synthetic'
  work = tmp_path / 'sweep'
  # STD and AMAT (ξ from STD's checkpoint): SAT runs the same code path as AMAT's attack.
  proc = run('robust_med.sweep', f'--config={config}', '--methods=std,amat', f'--workdir={work}',
             *CEPH_TINY, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ('std', 'amat'):
    report = json.loads((work / name / 'robustness.json').read_text())
    assert report['task'] == 'landmarks' and report['metric'] == 'mre_mm'
    assert report['higher_is_better'] is False
    for row in report['curves']['worst-case']:
      assert {'mre_mm', 'mre_std_mm', 'sdr_2mm', 'sdr_2.5mm', 'sdr_3mm', 'sdr_4mm'} <= set(row)
      assert row['mre_mm'] > 0 and 0 <= row['sdr_2mm'] <= row['sdr_4mm'] <= 1
    assert (work / name / 'examples.png').stat().st_size > 1000
  records = [json.loads(l) for l in (work / 'amat' / 'metrics.jsonl').read_text().splitlines()]
  xi = [r for r in records if r['type'] == 'xi']
  assert len(xi) == 1 and {k for k in xi[0] if k.startswith('xi/')} == {
      'xi/heatmap', 'xi/offset_x', 'xi/offset_y'}
  summary = (work / 'summary.md').read_text()
  assert 'MRE_MM (lower is better) under attack' in summary
  # Any checkpoint on another split.
  proc = run('robust_med.evaluate', f'--workdir={work / "amat"}', '--split=test')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((work / 'amat' / 'eval' / 'test' / 'robustness.json').read_text())
  assert report['split'] == 'test' and report['metric'] == 'mre_mm'


@pytest.mark.slow
@pytest.mark.parametrize('overrides,words', [
    (['--config.data.root=/no/such/folder'], 'no/such/folder'),
    (['--config.data.annotation=nurse'], 'nurse'),
    (['--config.landmarks.radius=45'], 'too small for landmark disks'),
])
def test_bad_landmark_input_is_one_error_line(overrides, words):
  from cli_helpers import REPO, error_line, run
  root = data_paths.shared_data_dir() / 'isbi2015_ceph'
  args = [f'--config={REPO / "configs" / "ceph_std.py"}:cpu', f'--config.data.root={root}',
          '--workdir=/tmp/never_written_landmarks', *overrides]
  if 'annotation' in overrides[0]:
    data_paths.require_shared('isbi2015_ceph')
  line = error_line(run('robust_med.main', *args))
  assert words in line
