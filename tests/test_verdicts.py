"""Seeds, intervals and verdicts: the paired statistics against scipy, the power of a comparison,
and a sweep's summary over seeds (from report folders built here, no training)."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
from scipy import stats as scipy_stats

from robust_med import reports, stats, sweep, verdicts
from robust_med.errors import ConfigError, UserError
from cli_helpers import error_line, run
from tiny import tiny_config


def test_paired_tests_equal_scipy_and_the_bootstrap_matches_scipys():
  rng = np.random.default_rng(3)
  a = rng.normal(0.6, 0.1, 40)
  b = a + rng.normal(0.03, 0.05, 40)
  c = stats.compare_seeded(a, b, n_resamples=20000)
  w, t = scipy_stats.wilcoxon(b, a), scipy_stats.ttest_rel(b, a)
  assert c['wilcoxon_statistic'] == w.statistic and c['wilcoxon_p'] == w.pvalue
  assert c['t_p'] == t.pvalue
  assert c['mean_diff'] == pytest.approx(np.mean(b - a))
  ref = scipy_stats.bootstrap((b - a,), np.mean, n_resamples=20000, method='percentile',
                              random_state=np.random.default_rng(0)).confidence_interval
  # The same percentile interval up to Monte-Carlo error (the resamples differ).
  se = np.std(b - a, ddof=1) / np.sqrt(40)
  assert c['mean_diff_ci'][0] == pytest.approx(ref.low, abs=0.05 * se)
  assert c['mean_diff_ci'][1] == pytest.approx(ref.high, abs=0.05 * se)
  assert c['seeds'] == [1, 1]


def test_the_bootstrap_resamples_seeds_not_only_samples():
  # No spread between samples, a spread of ±1 between model b's three seeds: averaging the seeds
  # first would give an interval of width zero.
  a = np.zeros((1, 30))
  b = np.array([-1.0, 0.0, 1.0])[:, None] + 0.5 + np.zeros((3, 30))
  low, high = stats.hierarchical_bootstrap_ci(a, b, n_resamples=4000)
  assert low < 0.0 < 0.5 < 1.0 < high
  same = stats.hierarchical_bootstrap_ci(a, b[:1] * 0 + 0.5, n_resamples=4000)
  assert same == (0.5, 0.5)


@pytest.mark.parametrize('n, resolved', [(400, True), (12, False)])
def test_a_known_difference_is_resolved_with_enough_samples_and_the_mde_says_which(n, resolved):
  rng = np.random.default_rng(0)
  delta, sd = 0.1, 0.3
  a = rng.normal(0.5, 0.2, n)
  b = a + delta + rng.normal(0.0, sd, n)
  c = stats.compare_seeded(a, b, n_resamples=4000)
  c['wilcoxon_p_holm'] = c['wilcoxon_p']
  assert stats.resolved(c) is resolved
  # The MDE line says which: below the true difference exactly when the samples resolve it.
  assert (c['mde'] < delta) is resolved
  needed = stats.samples_needed(sd, delta)
  assert 12 < needed < 400 and needed == pytest.approx((2.8016 * sd / delta) ** 2, rel=0.01)
  line = stats.verdict('B', 'A', c, what='clean score')
  assert line.startswith('B − A, clean score: +0.')
  assert line.endswith('resolved, B better' if resolved else 'not resolved')


def test_an_interval_that_touches_zero_by_rounding_is_not_resolved():
  # BUSI, AMAT − AT+Aug clean: the bootstrap's lower bound, exactly 0 for thirds of 0/1 scores,
  # came out of floating point as +2.2e-16 and the comparison read "resolved".
  c = {'mean_diff': 0.124, 'wilcoxon_p_holm': 0.036, 'mean_diff_ci': [2.220446049250313e-16, 0.256]}
  assert not stats.resolved(c)
  assert stats.verdict('AMAT', 'AT', c, what='clean').endswith('not resolved')
  c['mean_diff_ci'] = [1e-4, 0.256]
  assert stats.resolved(c)


def test_holm_on_a_family_of_comparisons():
  p = [0.01, 0.04, 0.03, np.nan]
  np.testing.assert_allclose(stats.holm(p)[:3], [0.03, 0.06, 0.06])
  assert np.isnan(stats.holm(p)[3])


def test_seed_interval_is_students_t_over_seeds():
  mean, low, high = stats.seed_interval([0.6, 0.7, 0.8])
  assert mean == pytest.approx(0.7)
  assert high - mean == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3))
  assert np.isnan(stats.seed_interval([0.6])[1])


def test_seeds_give_one_run_per_seed_reading_the_same_seeds_std(tmp_path):
  config = tiny_config('amat')
  work = str(tmp_path / 'sw')
  runs = sweep.with_seeds(sweep.plan_runs(config, work, sat_eps=(1,)), work, 3)
  assert [r.name for r in runs] == ['std', 'sat_eps1', 'amat', 'std_seed1', 'sat_eps1_seed1',
                                    'amat_seed1', 'std_seed2', 'sat_eps1_seed2', 'amat_seed2']
  assert [r.seed for r in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert [r.config.seed for r in runs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert {r.label for r in runs[::3]} == {'STD'}
  xi = [r.config.method.xi_checkpoint for r in runs if r.config.method.name == 'amat']
  assert xi == [os.path.join(work, n) for n in ('std', 'std_seed1', 'std_seed2')]
  for r in runs:  # Nothing but the seed (and the folders read) differs from the one-seed plan.
    assert sweep._shared_settings(r.config) == {**sweep._shared_settings(config), 'seed': r.seed}
  # The transfer attack's source too: every run, STD first, the same seed's STD.
  transfer = sweep.with_seeds(sweep.with_transfer(
      sweep.plan_runs(config, work, sat_eps=(1,), methods=('sat', 'std')), work, 'std'), work, 2)
  assert [(r.name, r.config.eval.transfer_from) for r in transfer] == [
      (n, os.path.join(work, s)) for n, s in (('std', 'std'), ('sat_eps1', 'std'),
                                              ('std_seed1', 'std_seed1'),
                                              ('sat_eps1_seed1', 'std_seed1'))]
  with pytest.raises(ConfigError, match='no run named'):
    sweep.with_transfer(runs[:3], work, 'bogus')
  assert sweep.with_seeds(runs[:3], work, 1) == runs[:3]
  with pytest.raises(ConfigError, match='--seeds=0'):
    sweep.with_seeds(runs, work, 0)


LEVELS = [0.0, 1.0, 2.0]


def _report(values: dict, ids) -> dict:
  """A robustness report of a higher-is-better metric 'adi' with per-sample values."""
  curves = {c: [{'eps': e, 'adi': float(np.mean(v[i])), 'loss': 0.0}
                for i, e in enumerate(LEVELS)] for c, v in values.items()}
  attack = {'name': 'pgd-4', 'norm': 'l2', 'step_size': '', 'restarts': 1, 'random_start': False,
            'data_range': ''}
  return {'task': 'segmentation', 'metric': 'adi', 'higher_is_better': True,
          'num_samples': len(ids), 'attack': attack, 'attacks': [attack],
          'results': curves['pgd-4'], 'curves': curves, 'method': 'x', 'protocol': 'robust_med',
          'per_sample': {'metric': 'per-image Dice', 'higher_is_better': True, 'eps': LEVELS,
                         'ids': list(ids), 'values': {c: np.asarray(v).tolist()
                                                      for c, v in values.items()}}}


def _fake_sweep(work, n=60, seeds=3, ids=None):
  """STD, SAT at two budgets and AMAT with `seeds` seeds; AMAT is better than everything by 0.1
  under attack, SAT ε=2 by 0.004 better than SAT ε=1 (not resolvable)."""
  rng = np.random.default_rng(0)
  base = rng.uniform(0.3, 0.9, n)
  models = [('std', 'STD', 'std', 0.0), ('sat_eps1', 'SAT ε=1', 'sat', 0.3),
            ('sat_eps2', 'SAT ε=2', 'sat', 0.304), ('amat', 'AMAT Δε=1', 'amat', 0.4)]
  plan = []
  for k in range(seeds):
    for name, label, method, gain in models:
      folder = name + (f'_seed{k}' if k else '')
      plan.append({'name': folder, 'label': label, 'method': {'name': method}, 'seed': k})
      robust = [base * (1 - e / 3) + gain * e / 2 + rng.normal(0, 0.02, n) for e in LEVELS]
      report = _report({'pgd-4': np.clip(robust, 0, 1)}, ids if ids is not None else range(n))
      report['method'] = method
      os.makedirs(os.path.join(work, folder))
      reports.write_json(os.path.join(work, folder, 'robustness.json'), report)
  reports.write_json(os.path.join(work, sweep.PLAN_FILE), {'shared': {}, 'runs': plan})


def test_summary_over_seeds_has_intervals_comparisons_and_verdicts(tmp_path):
  work = str(tmp_path)
  _fake_sweep(work)
  rows = sweep.summarize(work)
  assert {r['seed'] for r in rows} == {0, 1, 2}
  md = (tmp_path / 'summary.md').read_text()
  assert 'Each model trained with up to 3 seeds' in md and ' ± ' in md
  assert '## Paired comparisons (pgd-4)' in md
  verdict_lines = [l for l in md.splitlines() if l.startswith('- ') and ' − ' in l]
  # Each of SAT ε=1, SAT ε=2, AMAT against STD, and AMAT and the other SAT against the best SAT.
  assert len(verdict_lines) == 2 * 5
  amat_vs_sat = [l for l in verdict_lines if l.startswith('- AMAT Δε=1 − SAT ε=2 (best SAT), '
                                                          'pgd-4 per-image Dice, mean over grid')]
  assert len(amat_vs_sat) == 1 and amat_vs_sat[0].endswith('resolved, AMAT Δε=1 better')
  sats = [l for l in verdict_lines if l.startswith('- SAT ε=1 − SAT ε=2 (best SAT)') and
          'mean over grid' in l]
  assert len(sats) == 1 and sats[0].endswith('not resolved')
  assert '**How many samples.** With 60 evaluation samples' in md
  table = list(csv.DictReader((tmp_path / 'comparisons.csv').open()))
  assert len(table) == 10 and {r['role'] for r in table} == {'STD', 'best SAT'}
  p = [float(r['wilcoxon_p']) for r in table]
  np.testing.assert_allclose([float(r['wilcoxon_p_holm']) for r in table], stats.holm(p),
                             rtol=1e-3)
  # The power line answers for the table: each MDE at α = 0.05/10, Holm's strictest level, which
  # is larger than the one-comparison MDE whenever the samples differ at all.
  for r in table:
    sd = float(r['diff_sd'])
    assert float(r['mde']) == pytest.approx(stats.minimum_detectable(sd, 60, alpha=0.005),
                                            rel=1e-3)
    assert sd == 0 or float(r['mde']) > stats.minimum_detectable(sd, 60)
  assert 'α = 0.05/10 = 0.005 two-sided per comparison' in md
  # The table's figure is the mean over seeds of each run's figure.
  summary = list(csv.DictReader((tmp_path / 'summary.csv').open()))
  amat = [float(r['mean_adi_over_grid']) for r in summary if r['model'] == 'AMAT Δε=1']
  assert len(amat) == 3 and f'{np.mean(amat):.3f} ± ' in md
  assert (tmp_path / 'curves.png').stat().st_size > 5000


def test_one_seed_keeps_the_tables_and_still_compares(tmp_path):
  work = str(tmp_path)
  _fake_sweep(work, seeds=1)
  sweep.summarize(work)
  md = (tmp_path / 'summary.md').read_text()
  assert ' ± ' not in md and 'seeds' not in md.split('## Paired')[0]
  assert '## Paired comparisons' in md


def test_comparisons_refuse_reports_on_other_samples(tmp_path):
  work = str(tmp_path)
  _fake_sweep(work, seeds=1)
  path = os.path.join(work, 'amat', 'robustness.json')
  with open(path) as f:
    report = json.load(f)
  report['per_sample']['ids'] = report['per_sample']['ids'][::-1]
  reports.write_json(path, report)
  with pytest.raises(UserError, match='other samples'):
    verdicts.comparisons(sweep.summary_rows(work))


def test_compare_finds_std_by_its_method_when_the_label_differs(tmp_path):
  work = str(tmp_path)
  _fake_sweep(work, seeds=1)
  runs = [('STD(Dice)', os.path.join(work, 'std')), ('SAT ε=1', os.path.join(work, 'sat_eps1')),
          ('AMAT', os.path.join(work, 'amat'))]
  result = verdicts.comparisons(sweep.rows_for(runs))
  assert {(c['model'], c['reference'], c['role']) for c in result['rows']} == {
      ('SAT ε=1', 'STD(Dice)', 'STD'), ('AMAT', 'STD(Dice)', 'STD'),
      ('AMAT', 'SAT ε=1', 'best SAT')}


def test_summarize_on_the_command_line_needs_no_config_and_names_missing_runs(tmp_path):
  work = tmp_path / 'sw'
  _fake_sweep(str(work), seeds=2)
  shutil.rmtree(work / 'amat_seed1')  # e.g. a seed still training elsewhere
  proc = run('robust_med.sweep', f'--workdir={work}', '--summarize')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'warning: 1 run(s) of the plan not finished, left out of the summary: amat_seed1' in proc.stderr
  assert '## Paired comparisons (pgd-4)' in proc.stdout
  assert (work / 'summary.md').read_text() in proc.stdout
  line = error_line(run('robust_med.sweep', f'--workdir={tmp_path}', '--summarize'))
  assert 'holds no sweep' in line
  line = error_line(run('robust_med.sweep', f'--workdir={work}'))
  assert '--config is required' in line


def _power_line(a, b):
  """The how-many-samples line of a one-comparison table of `b` against `a` (seeds, samples)."""
  c = stats.compare_seeded(a, b, n_resamples=2000)
  c.update(model='B', reference='A', figure='clean', wilcoxon_p_holm=c['wilcoxon_p'],
           resolved=stats.resolved(c, 'wilcoxon_p'),
           mde=stats.minimum_detectable(c['diff_sd'], a.shape[1]),
           samples_needed=stats.samples_needed(c['diff_sd'], c['mean_diff']))
  return c, verdicts.mde_line({'rows': [c], 'samples': a.shape[1], 'metric': 'm',
                               'mde_alpha': 0.05})


def test_the_power_line_blames_the_seeds_when_the_samples_resolve_but_the_seeds_disagree():
  rng = np.random.default_rng(0)
  a = np.tile(rng.uniform(0, 1, 40), (3, 1))
  # Every seed of B differs from A on every sample in the same direction on average (+0.1), but
  # B's seeds scatter by ±0.6 around that: the per-sample test resolves it, the seeds do not.
  b = a + 0.1 + np.array([[-0.6], [0.0], [0.6]]) + rng.normal(0, 0.02, a.shape)
  c, line = _power_line(a, b)
  assert c['wilcoxon_p'] < 0.05 and not c['resolved']
  assert 'more seeds, not more samples' in line and 'would need about' not in line
  # Seeds that agree and a difference lost in per-sample noise: more samples is the answer.
  b = a + 0.02 + rng.normal(0, 0.3, (1, 40))
  c, line = _power_line(a, b)
  assert not c['resolved'] and 'would need about' in line and 'more seeds' not in line
