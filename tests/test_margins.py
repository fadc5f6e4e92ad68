"""Margin telemetry: statistics of all margins per logged step, a histogram per epoch, margins.png."""

import json

import jax
import numpy as np
import pytest

from robust_med import checkpointing, margins, train
from tiny import tiny_config


def test_margin_stats_and_histogram_match_numpy():
  rng = np.random.default_rng(0)
  m = rng.gamma(2.0, 1.5, size=101)
  stats = margins.margin_stats(m)
  assert stats == pytest.approx({
      'margin/mean': m.mean(), 'margin/median': np.sort(m)[50],
      'margin/p10': np.sort(m)[10], 'margin/p90': np.sort(m)[90], 'margin/min': m.min(),
      'margin/max': m.max()})
  hist = margins.histogram(m, bins=7)
  assert sum(hist['counts']) == 101 and len(hist['edges']) == 8
  assert hist['edges'][0] == m.min() and hist['edges'][-1] == m.max()


@pytest.mark.slow
def test_amat_run_logs_margins_that_match_its_checkpoint(tmp_path):
  config = tiny_config('amat', num_epochs=3, **{'eval.masking_checks': False})
  work = tmp_path / 'amat'
  train.train_and_evaluate(config, str(work))
  records = [json.loads(l) for l in (work / 'metrics.jsonl').read_text().splitlines()]
  logged = [r for r in records if r['type'] == 'train']
  assert all('margin/mean' in r for r in logged)
  # The last logged statistics are those of the margins in the final checkpoint.
  mngr = checkpointing.reader(str(work))
  step = mngr.latest_step()
  saved = np.asarray(checkpointing.restore_items(mngr, step, {'margins': jax.ShapeDtypeStruct(
      (config.data.num_train,), np.float32,
      sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))})['margins'])
  last = logged[-1]
  assert last['step'] == step
  for key, q in (('p10', 10), ('median', 50), ('p90', 90)):
    assert last[f'margin/{key}'] == pytest.approx(np.percentile(saved, q), rel=1e-6)
  assert last['margin/mean'] == pytest.approx(saved.mean(), rel=1e-6)
  assert last['margin/max'] == pytest.approx(saved.max(), rel=1e-6)
  # After the warm-up every logged step has the update's fractions, and they add up to 1.
  amat_steps = [r for r in logged if 'grow_fraction' in r]
  assert amat_steps
  for r in amat_steps:
    assert r['grow_fraction'] + r['refine_fraction'] == pytest.approx(1.0)
  # One histogram per epoch, over all training margins.
  snaps = [r for r in records if r['type'] == 'margins']
  assert [s['epoch'] for s in snaps] == [0, 1, 2]
  assert all(sum(s['counts']) == config.data.num_train for s in snaps)
  assert (work / 'margins.png').stat().st_size > 5000
  assert margins.final_stats(str(work))['margin/mean'] == pytest.approx(saved.mean(), rel=1e-6)


@pytest.mark.slow
def test_std_run_has_no_margin_telemetry(tmp_path):
  config = tiny_config('std', num_epochs=1, **{'eval.masking_checks': False})
  train.train_and_evaluate(config, str(tmp_path))
  text = (tmp_path / 'metrics.jsonl').read_text()
  assert 'margin/' not in text and '"margins"' not in text
  assert not (tmp_path / 'margins.png').exists()
  assert margins.final_stats(str(tmp_path)) == {}


@pytest.mark.slow
def test_amat_boundary_refine_trains_and_never_grows_a_refined_margin(tmp_path):
  config = tiny_config('amat', num_epochs=3, **{
      'eval.masking_checks': False, 'method.refine': 'boundary', 'method.adv_only_correct': True,
      'method.max_margin': 2.0})
  report = train.train_and_evaluate(config, str(tmp_path))
  assert report['method'] == 'amat'
  records = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  amat_steps = [r for r in records if r['type'] == 'train' and 'refine_delta' in r]
  assert amat_steps and all(r['refine_delta'] <= 1e-6 for r in amat_steps)
  assert all(0 <= r['correct_fraction'] <= 1 for r in amat_steps)
  assert all(r['margin/max'] <= 2.0 + 1e-6 for r in amat_steps)
