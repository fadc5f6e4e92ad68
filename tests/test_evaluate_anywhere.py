"""`robust_med.evaluate` on any split of any data folder, as a user runs it, and its one-line
errors for bad input."""

import json
import shutil

import pytest

from cli_helpers import CONFIG, REPO, TINY, error_line, run
from msd_fixture import make_msd
from readme_head import write_readme_head

HIPPOCAMPUS = str(REPO / 'configs' / 'hippocampus_std.py')
SMALL = ['--config.data.patch_size=(16,16)', '--config.model.base_width=4',
         '--config.model.depth=2', '--config.batch_size=4', '--config.num_epochs=2',
         '--config.eval.steps=3', '--config.eval.apgd_steps=3', '--config.eval.weak_steps=1',
         '--config.eval.noise_levels=(0.5,1.0)', '--config.progress_bar=False',
         '--config.mesh.num_devices=1']


@pytest.mark.slow
def test_train_on_one_msd_folder_and_evaluate_on_another_sites_test_split(tmp_path):
  site1 = make_msd(tmp_path / 'site1', [f'a{i}' for i in range(8)], image_shape=(16, 16, 4),
                   splits={'train': [f'a{i}' for i in range(6)], 'val': ['a6', 'a7']})
  # Another site: labelled held-out cases only, listed as "test"; no train list at all.
  site2 = make_msd(tmp_path / 'site2', ['b0', 'b1', 'b2'], image_shape=(16, 16, 4), seed=1,
                   splits={'test': ['b0', 'b1', 'b2']})
  work = tmp_path / 'run'
  # A quick run on the first 2 training volumes (data.max_volumes=2 is saved in its config).
  proc = run('robust_med.main', f'--config={HIPPOCAMPUS}:cpu', f'--workdir={work}',
             f'--config.data.root={site1}', '--config.data.max_volumes=2', *SMALL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  own = work / 'robustness.json'
  own_bytes, own_mtime = own.read_bytes(), own.stat().st_mtime_ns

  # Evaluated with the run's config, the other site's test split is capped at 2 of its 3
  # volumes: said on stdout and stderr and kept in the report, never silent.
  proc = run('robust_med.evaluate', f'--workdir={work}', f'--config.data.root={site2}',
             '--split=test', '--config.eval.max_samples=0', '--out', str(tmp_path / 'capped'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  capped = json.loads((tmp_path / 'capped' / 'robustness.json').read_text())
  assert capped['num_samples'] == 2 * 2
  assert 'only 2 of the split\'s 3 volumes' in capped['data']['subset']
  assert '--config.data.max_volumes=0' in capped['data']['subset']
  assert 'Note: only 2 of the split\'s 3 volumes' in proc.stdout
  assert 'warning: only 2 of the split\'s 3 volumes' in proc.stderr

  # With a transfer attack crafted on the run itself: exactly its white-box PGD curve.
  proc = run('robust_med.evaluate', f'--workdir={work}', f'--config.data.root={site2}',
             '--split=test', '--config.data.max_volumes=0',
             f'--config.eval.transfer_from={work}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((work / 'eval' / 'test' / 'robustness.json').read_text())
  assert report['split'] == 'test' and report['data']['root'] == str(site2)
  assert report['num_samples'] == report['data']['split_size'] == 3 * 2  # 2 foreground slices.
  assert 'subset' not in report['data'] and 'Note:' not in proc.stdout
  assert report['checkpoint'] == {'workdir': str(work), 'step': 1 * 2}  # 4 slices / 4, 2 epochs.
  assert report['method'] == 'std' and set(report['curves']) == {
      'pgd-3', 'apgd-3', 'transfer-pgd-3', 'worst-case', 'worst-case-gradient'}
  assert report['curves']['transfer-pgd-3'] == report['curves']['pgd-3']
  assert report['attacks'][-1]['source'] == str(work)
  assert [c['passed'] for c in report['checks'] if c['name'] == 'transfer_weaker'] == [True]
  assert (work / 'eval' / 'test' / 'examples.png').stat().st_size > 1000
  assert json.loads((work / 'eval' / 'test' / 'config.json').read_text())['data']['root'] == \
      str(site2)
  assert f'test split of {site2}: 6 of 6 samples, checkpoint step 2' in proc.stdout
  # The training run's own report is untouched.
  assert own.read_bytes() == own_bytes and own.stat().st_mtime_ns == own_mtime

  # The other site has no validation split: one line listing the splits it has.
  line = error_line(run('robust_med.evaluate', f'--workdir={work}',
                        f'--config.data.root={site2}'))
  assert "unknown split 'val'" in line and "['test']" in line


@pytest.fixture
def trained(segmentation_run):
  """The session's tiny synthetic run (conftest.py) with checkpoints at steps 10 and 12; the
  tests here only read it (or copy it first)."""
  return segmentation_run


@pytest.mark.parametrize('args, words', [
    (['--split=bogus'], ["unknown split 'bogus'", "['train', 'val', 'test']"]),
    (['--step=3'], ['no checkpoint at step 3', '10, 12', '--step']),
    (['--config.data.num_classes=2'], ['num_classes=2', 'num_classes=3', 'same channels']),
    (['--config.data.channels=1'], ['channels=1', 'channels=2']),
    (['--config.model.base_width=8'], ['different model', 'kernel', '(3, 3, 2, 4)',
                                       '(3, 3, 2, 8)']),
    ([f'--config={REPO}/configs/nope.py'], ['nope.py', 'does not exist']),
    (['--config.eval.bogus=1'], ['eval.bogus']),
    (['--config.eval.transfer_from=/no/such/run'], ['transfer_from', 'not a folder']),
])
def test_evaluate_bad_input_is_one_line(trained, args, words):
  line = error_line(run('robust_med.evaluate', f'--workdir={trained}', *args, timeout=120))
  for w in words:
    assert w in line, line
  assert not (trained / 'eval').exists() or not any((trained / 'eval').rglob('robustness.json'))


def test_evaluate_refuses_to_write_over_the_runs_own_report(trained):
  line = error_line(run('robust_med.evaluate', f'--workdir={trained}', f'--out={trained}'))
  assert "own workdir" in line


def test_evaluate_with_another_heads_config_is_one_line(trained, tmp_path):
  head = write_readme_head(tmp_path)
  line = error_line(run('robust_med.evaluate', f'--workdir={trained}', f'--config.task={head}',
                        pythonpath=[tmp_path]))
  assert "belongs to the 'segmentation' head" in line and "'blobs' head" in line


@pytest.mark.parametrize('damaged', ['meta/metadata', 'state/_METADATA', 'state/manifest.ocdbt'])
def test_evaluate_on_a_truncated_checkpoint_is_one_line(trained, tmp_path, damaged):
  work = tmp_path / 'run'
  shutil.copytree(trained, work)
  path = work / 'checkpoints' / '12' / damaged
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  line = error_line(run('robust_med.evaluate', f'--workdir={work}'))
  assert 'step 12' in line and 'corrupt or incomplete' in line and 'delete' in line


def test_main_into_a_workdir_of_another_model_width_is_one_line(trained, tmp_path):
  work = tmp_path / 'run'
  shutil.copytree(trained, work)
  config_before = (work / 'config.json').read_bytes()
  line = error_line(run('robust_med.main', f'--config={CONFIG}:synthetic', f'--workdir={work}',
                        *TINY, '--config.model.base_width=8'))
  assert 'different model' in line and 'new --workdir' in line
  assert (work / 'config.json').read_bytes() == config_before


@pytest.mark.parametrize('module', ['robust_med.main', 'robust_med.sweep'])
def test_missing_config_file_and_file_as_workdir_are_one_line(tmp_path, module):
  line = error_line(run(module, '--config=configs/nope.py', f'--workdir={tmp_path}'))
  assert 'configs/nope.py does not exist' in line
  if module == 'robust_med.main':
    (tmp_path / 'a_file').write_text('')
    line = error_line(run(module, f'--config={CONFIG}:synthetic', f'--workdir={tmp_path}/a_file'))
    assert 'is a file' in line
