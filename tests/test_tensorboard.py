"""TensorBoard events of a run (robust_med.tensorboard_log), read back with TensorBoard's reader."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

from robust_med import tensorboard_log, train
from robust_med.errors import UserError
from tb_events import scalars, summaries
from tiny import tiny_config


def _records(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _expected_scalars(records: list[dict]) -> dict[tuple[str, int], float]:
  """The scalars metrics.jsonl says TensorBoard holds: {(tag, step): value}, the last record of
  a step winning (a resumed run logs the steps after its checkpoint again)."""
  expected = {}
  for r in records:
    body = {k: v for k, v in r.items() if k not in ('type', 'step', 'epoch')
            and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if r['type'] in ('train', 'val'):
      expected.update({(f'{r["type"]}/{k}', r['step']): v for k, v in body.items()})
    elif r['type'] == 'xi':
      expected.update({(k, r['step']): v for k, v in body.items() if k.startswith('xi/')})
    elif r['type'] == 'epoch':
      expected[('train/epoch_seconds', r['step'])] = r['seconds']
  return expected


@pytest.mark.slow
def test_events_hold_every_logged_scalar_margins_config_and_reports(tmp_path):
  config = tiny_config('amat', **{'mesh.num_devices': 1, 'eval.every_epochs': 2,
                                  'eval.masking_checks': False})
  report = train.train_and_evaluate(config, str(tmp_path))
  records = _records(tmp_path)
  board = tensorboard_log.folder(str(tmp_path), 'train')
  written = scalars(board)
  expected = _expected_scalars(records)
  assert {'train/loss', 'train/lr', 'train/margin/mean', 'train/margin/min', 'train/margin/max',
          'train/refine_fraction', 'val/adi', 'xi/ce', 'xi/dice', 'train/epoch_seconds'} <= {
              t for t, _ in expected}
  for (tag, step), value in expected.items():
    assert (tag, step) in written, (tag, step)
    assert written[tag, step] == [pytest.approx(value, rel=1e-6, abs=1e-9)], (tag, step)
  # Nothing but what metrics.jsonl holds.
  assert set(written) == set(expected)
  # The learning rate follows the schedule (cosine decay to 0 over the run).
  lr = sorted((s, v[0]) for (t, s), v in written.items() if t == 'train/lr')
  schedule = train.learning_rate(config.optimizer, 12)  # 32 samples / 8 per batch × 3 epochs
  assert [v for _, v in lr] == [pytest.approx(float(schedule(s - 1)), rel=1e-6) for s, _ in lr]
  assert lr[0][1] > lr[-1][1] > 0

  everything = summaries(board)
  epochs = [r['step'] for r in records if r['type'] == 'margins']
  hist = [(s, v) for s, t, v in everything if t == 'margins']
  assert [s for s, _ in hist] == epochs and epochs
  margins = [r for r in records if r['type'] == 'margins']
  train_at = {r['step']: r for r in records if r['type'] == 'train'}
  for (step, value), r in zip(hist, margins):  # Every training margin in each epoch's histogram.
    assert value.histo.num == pytest.approx(sum(r['counts'])) == 32
    assert value.histo.min == pytest.approx(train_at[step]['margin/min'], rel=1e-6)
    assert value.histo.max == pytest.approx(train_at[step]['margin/max'], rel=1e-6)
    assert value.histo.sum / 32 == pytest.approx(train_at[step]['margin/mean'], rel=1e-5)
  text = [v for s, t, v in everything if t.startswith('config')]
  assert len(text) == 1 and b'"method"' in text[0].tensor.string_val[0]
  images = [(s, v.image) for s, t, v in everything if t == 'examples']
  val_steps = [r['step'] for r in records if r['type'] == 'val']
  assert [s for s, _ in images] == val_steps
  assert all(i.encoded_image_string[:8] == b'\x89PNG\r\n\x1a\n' and i.width > 0 for _, i in images)

  # The evaluation's curves against 1000·ε, and its figures at the checkpoint's step.
  rob = tensorboard_log.folder(str(tmp_path), 'robustness')
  curves = scalars(rob)
  for curve, rows in report['curves'].items():
    for row in rows:
      step = int(round(1000 * row['eps']))
      assert curves[f'robustness/{curve}/adi', step] == [pytest.approx(row['adi'], rel=1e-6)]
  figures = {t for _, t, v in summaries(rob) if not isinstance(v, float)
             and v.WhichOneof('value') == 'image'}
  assert figures == {'robustness/robustness', 'robustness/examples', 'robustness/margins'}


@pytest.mark.slow
def test_resumed_run_repeats_no_step_and_off_writes_nothing(tmp_path):
  config = tiny_config('amat', **{'mesh.num_devices': 1, 'eval.masking_checks': False,
                                  'eval.noise_levels': (0.0,)})
  trainer = train.Trainer(config, str(tmp_path / 'run'))
  trainer.train()
  # A kill after step 4's checkpoint: the later checkpoints are lost, the events are not.
  ckpts = tmp_path / 'run' / 'checkpoints'
  for d in os.listdir(ckpts):
    if d.isdigit() and int(d) > 4:
      shutil.rmtree(ckpts / d)
  resumed = train.Trainer(config, str(tmp_path / 'run'))
  assert resumed.tb.skip_through == trainer.total_steps
  resumed.train()
  board = tensorboard_log.folder(str(tmp_path / 'run'), 'train')
  written = scalars(board)
  assert all(len(v) == 1 for v in written.values()), 'a step written twice'
  steps = [s for s, t, _ in summaries(board) if t == 'margins']
  assert len(steps) == len(set(steps)) == config.num_epochs
  # The resume re-ran steps 5..12: metrics.jsonl has them twice, with the same values.
  records = _records(tmp_path / 'run')
  assert [r['step'] for r in records if r['type'] == 'train'].count(6) == 2
  for (tag, step), value in _expected_scalars(records).items():
    if tag != 'train/steps_per_second' and tag != 'train/epoch_seconds':
      assert written[tag, step] == [pytest.approx(value, rel=1e-4, abs=1e-6)], (tag, step)

  # A resume refused (another model's checkpoint) leaves no empty event file behind.
  files = sorted(os.listdir(board))
  other = tiny_config('amat', **{'mesh.num_devices': 1, 'model.base_width': 8})
  with pytest.raises(UserError, match='different model'):
    train.Trainer(other, str(tmp_path / 'run')).train()
  assert sorted(os.listdir(board)) == files

  off = tiny_config('std', **{'mesh.num_devices': 1, 'log.tensorboard': False,
                              'eval.masking_checks': False, 'eval.noise_levels': (0.0,)})
  train.train_and_evaluate(off, str(tmp_path / 'off'))
  assert (tmp_path / 'off' / 'robustness.json').exists()
  assert not (tmp_path / 'off' / 'tb').exists()


def _block_tb(workdir) -> None:
  """Makes `workdir/tb` unwritable (for root, who writes anywhere: a file in its place)."""
  workdir.mkdir(parents=True, exist_ok=True)
  if os.geteuid() == 0:
    (workdir / 'tb').write_text('not a folder')
  else:
    (workdir / 'tb').mkdir()
    os.chmod(workdir / 'tb', stat.S_IRUSR | stat.S_IXUSR)


def test_unwritable_folder_is_one_warning_and_no_events(tmp_path):
  _block_tb(tmp_path)
  with pytest.warns(UserWarning, match='cannot write TensorBoard events') as caught:
    writer = tensorboard_log.Writer(str(tmp_path), 'train')
    tensorboard_log.write_report_board(str(tmp_path), 'robustness', {}, {})
  assert len(caught) == 1 and '--config.log.tensorboard=False' in str(caught[0].message)
  assert not writer.active
  writer.scalars('train', {'loss': 1.0}, 1)  # no-ops, no errors
  writer.histogram('margins', np.ones(3), 1)
  writer.close()


@pytest.mark.slow
def test_a_run_with_an_unwritable_tb_folder_warns_once_and_finishes(tmp_path):
  _block_tb(tmp_path / 'run')
  config = tiny_config('std', **{'mesh.num_devices': 1, 'eval.masking_checks': False,
                                 'eval.noise_levels': (0.0, 0.5), 'num_epochs': 1})
  with pytest.warns(UserWarning) as caught:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  tb_warnings = [w for w in caught if 'TensorBoard' in str(w.message)]
  assert len(tb_warnings) == 1, [str(w.message) for w in caught]
  assert (tmp_path / 'run' / 'robustness.json').exists()
  assert (tmp_path / 'run' / 'report.html').exists()


def test_last_step_ignores_a_record_cut_short(tmp_path):
  writer = tensorboard_log.Writer(str(tmp_path), 'train')
  writer.scalars('train', {'loss': 1.0}, 3)
  writer.scalars('train', {'loss': 0.5}, 7)
  writer.close()
  path = tensorboard_log.folder(str(tmp_path), 'train')
  assert tensorboard_log.last_step(path) == 7
  files = [os.path.join(path, f) for f in os.listdir(path)]
  with open(files[0], 'rb+') as f:  # A kill mid-write: the last record loses its end.
    f.truncate(os.path.getsize(files[0]) - 6)
  assert tensorboard_log.last_step(path) == 3
  again = tensorboard_log.Writer(str(tmp_path), 'train')
  assert again.skip_through == 3
  again.scalars('train', {'loss': 0.25}, 3)  # dropped: already on disk
  again.scalars('train', {'loss': 0.5}, 7)
  again.close()
  assert scalars(path)[('train/loss', 3)] == [1.0]
