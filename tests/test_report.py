"""The self-contained report page (robust_med.report) of a run and of a sweep, without a browser.

The run is a copy of the session's tiny synthetic run (`segmentation_run`) with a shift report
and a committed interpretability report added; the sweep is two copies of it (STD made worse
under attack) summarised by robust_med.sweep's own code. Every number on a page is traced back
to its file (`check_numbers`, shared with the browser test).
"""

import copy
import csv
import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from robust_med import report, reports
from cli_helpers import error_line, run

REPO = Path(__file__).resolve().parent.parent
INTERPRET = REPO / 'experiments' / 'results' / 'interpret' / 'busi' / 'val_gradcam'
REPORT_FILES = ('config.json', 'metrics.jsonl', 'robustness.json', 'robustness.png',
                'examples.png', 'margins.png')
NUM = re.compile(r'<span class="num" data-src="([^"]*)">([^<]*)</span>')


# --- Folders built from the session's run --------------------------------------------------------

def copy_reports(source, folder) -> Path:
  """A run folder with the report files of `source` (no checkpoints)."""
  folder = Path(folder)
  folder.mkdir(parents=True)
  for name in REPORT_FILES:
    if (Path(source) / name).exists():
      shutil.copy(Path(source) / name, folder / name)
  return folder


def add_shift(folder) -> None:
  """A shift.json shaped as robust_med.shift writes it (two corruptions, two severities, one
  shifted set), and its shift.png drawn by robust_med.shift.plot."""
  from robust_med import shift
  rob = json.loads((folder / 'robustness.json').read_text())
  metric, clean = rob['metric'], rob['results'][0]
  rows = {name: [{'severity': s, **{k: (v * (1 - 0.1 * s * (i + 1)) if k != 'eps' else 0.0)
                                    for k, v in clean.items()}} for s in (1, 3)]
          for i, name in enumerate(('gaussian_noise', 'contrast'))}
  every = [r for rs in rows.values() for r in rs]
  mean = {k: sum(r[k] for r in every) / len(every) for k in clean if k != 'eps'}
  report_ = {'task': rob['task'], 'metric': metric, 'higher_is_better': rob['higher_is_better'],
             'num_samples': rob['num_samples'], 'method': rob['method'], 'split': rob['split'],
             'data': rob['data'], 'checkpoint': rob['checkpoint'], 'value_range': [0.0, 1.0],
             'severities': [1, 3], 'clean': clean, 'corruptions': rows,
             'parameters': {'gaussian_noise': [0.0, 0.02, 0.04, 0.06, 0.08, 0.12],
                            'contrast': [0.0, 0.2, 0.35, 0.5, 0.65, 0.8]},
             'mean_corruption': mean,
             'per_corruption': {n: sum(r[metric] for r in rs) / len(rs) for n, rs in rows.items()},
             'relative_robustness': mean[metric] / clean[metric],
             'shifted_sets': {'low resolution': {'num_samples': 16, **clean}}}
  shift.plot(report_, str(folder / 'shift.png'))
  reports.write_json(str(folder / 'shift.json'), report_)


def add_interpret(folder) -> None:
  """The committed BUSI Grad-CAM report of robust_med.interpret in `interpret/val_gradcam/`,
  where robust_med.interpret writes it for runs of this folder."""
  out = folder / 'interpret' / 'val_gradcam'
  out.mkdir(parents=True)
  for name in ('interpret.json', 'interpret.png'):
    shutil.copy(INTERPRET / name, out / name)


def set_checks(folder, failed: tuple = ()) -> None:
  """Makes the run's masking checks pass, except those named in `failed`."""
  path = folder / 'robustness.json'
  rob = json.loads(path.read_text())
  for c in rob['checks']:
    c['passed'] = c['name'] not in failed
  reports.write_json(str(path), rob)


def _weaker(rob: dict, factor: float) -> dict:
  """The report of a model `factor` times as good under attack (clean unchanged)."""
  rob = copy.deepcopy(rob)
  metric = rob['metric']
  for rows in [rob['results'], *rob['curves'].values()]:
    for r in rows:
      if r['eps'] > 0:
        r[metric] *= factor
  for levels in rob['per_sample']['values'].values():
    for i in range(1, len(levels)):
      levels[i] = [round(v * factor, 6) for v in levels[i]]
  return rob


def build_sweep(source, folder) -> Path:
  """A two-run sweep (STD, AMAT) of `source`'s reports, summarised by robust_med.sweep (its
  summary.csv, comparisons.csv, summary.md, curves.png, training.png), with an interpretability
  report in its `interpret/` and a shift report in the AMAT run."""
  from robust_med import sweep
  folder = Path(folder)
  config = json.loads((Path(source) / 'config.json').read_text())
  runs = []
  for name, label, method in (('std', 'STD', 'std'), ('amat', 'AMAT Δε=0.5', 'amat')):
    run_dir = copy_reports(source, folder / name)
    rob = json.loads((run_dir / 'robustness.json').read_text())
    rob['method'] = method
    if method == 'std':
      rob = _weaker(rob, 0.7)
      for c in rob['checks']:
        c['passed'] = True
      (run_dir / 'margins.png').unlink()
    reports.write_json(str(run_dir / 'robustness.json'), rob)
    runs.append({'name': name, 'label': label,
                 'method': {**config['method'], 'name': method}, 'seed': 0})
  add_shift(folder / 'amat')
  shared = {k: v for k, v in config.items() if k != 'method'}
  reports.write_json(str(folder / sweep.PLAN_FILE), {'shared': shared, 'runs': runs})
  sweep.summarize(str(folder))
  add_interpret(folder)
  return folder


# --- Checks shared with the browser test ---------------------------------------------------------

def expected_text(value) -> str:
  """The page's rule for a number: an integer as it is, else four significant digits."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  return format(float(value), '.4g')


def source_value(page_dir, src: str):
  """The value a `data-src` names: `FILE#/json/pointer` or `FILE#ROW/COLUMN` for CSV."""
  name, _, where = src.partition('#')
  path = Path(page_dir) / name
  if name.endswith('.csv'):
    row, _, column = where.partition('/')
    with path.open(newline='') as f:
      cell = list(csv.DictReader(f))[int(row)][column]
    return int(cell) if re.fullmatch(r'[+-]?\d+', cell) else float(cell)
  node = json.loads(path.read_text())
  assert where.startswith('/'), src
  for token in where[1:].split('/'):
    token = token.replace('~1', '/').replace('~0', '~')
    node = node[int(token)] if isinstance(node, list) else node[token]
  return node


def check_numbers(page_dir, nums: list[tuple[str, str]]) -> None:
  """Every (data-src, text) pair of a page equals its file's value under the formatting rule."""
  assert nums
  wrong = [(src, text, expected_text(source_value(page_dir, src))) for src, text in nums
           if text != expected_text(source_value(page_dir, src))]
  assert not wrong, wrong[:10]


def page_numbers(text: str) -> list[tuple[str, str]]:
  """The (data-src, text) pairs of a page's numbers, unescaped as a browser reads them."""
  return [(html.unescape(s), html.unescape(t)) for s, t in NUM.findall(text)]


def section_ids(text: str) -> list[str]:
  return re.findall(r'<section id="([^"]+)">', text)


def expected_run_sections(folder) -> set[str]:
  """The sections a run page must have, from the files the folder holds."""
  folder = Path(folder)
  has = {name: (folder / name).exists() for name in
         ('robustness.json', 'examples.png', 'margins.png', 'shift.json')}
  rob = json.loads((folder / 'robustness.json').read_text()) if has['robustness.json'] else {}
  found = set()
  if has['robustness.json']:
    found |= {'run', 'glance', 'curves'} | ({'masking'} if rob.get('checks') else set())
  if has['shift.json']:
    found |= {'run', 'shift'}
  found |= {sid for sid, name in (('examples', 'examples.png'), ('margins', 'margins.png'))
            if has[name]}
  if list(folder.glob('interpret/*/interpret.json')) or (folder / 'interpret.json').exists():
    found.add('interpret')
  if list(folder.glob('eval/*/robustness.json')):
    found.add('evaluations')
  return found


def expected_sweep_sections(folder) -> set[str]:
  folder = Path(folder)
  return {sid for sid, name in (('plan', 'sweep.json'), ('summary', 'summary.csv'),
                                ('comparisons', 'comparisons.csv'), ('curves', 'curves.png'),
                                ('training', 'training.png')) if (folder / name).exists()} | (
      {'interpret'} if list(folder.glob('interpret/*/interpret.json')) else set())


def assert_self_contained(page: Path) -> None:
  """No URL outside the folder: images are data: URIs, links are in-page or relative to files
  that exist, no script."""
  text = page.read_text()
  assert 'http://' not in text and 'https://' not in text and '<script' not in text
  sources = re.findall(r'\ssrc="([^"]*)"', text)
  assert sources and all(s.startswith('data:image/png;base64,') for s in sources)
  for href in re.findall(r'\shref="([^"]*)"', text):
    href = html.unescape(href)
    assert href.startswith('#') or (':' not in href and (page.parent / href).exists()), href


# --- Tests ---------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def folders(segmentation_run, tmp_path_factory):
  """{'run': the demo run with shift and interpretability reports, 'sweep': the tiny sweep}."""
  root = tmp_path_factory.mktemp('report')
  run_dir = copy_reports(segmentation_run, root / 'run')
  add_shift(run_dir)
  add_interpret(run_dir)
  return {'run': run_dir, 'sweep': build_sweep(segmentation_run, root / 'sweep')}


def test_run_page_has_its_sections_and_every_number_traced(folders, tmp_path):
  run_dir = Path(shutil.copytree(folders['run'], tmp_path / 'run'))
  set_checks(run_dir)
  path = report.write(str(run_dir))
  assert path == str(run_dir / 'report.html')
  text = Path(path).read_text()
  assert set(section_ids(text)) == expected_run_sections(run_dir) == {
      'run', 'glance', 'masking', 'curves', 'examples', 'margins', 'shift', 'interpret'}
  check_numbers(run_dir, page_numbers(text))
  sources = {s.partition('#')[0] for s, _ in page_numbers(text)}
  assert sources == {'robustness.json', 'config.json', 'shift.json',
                     'interpret/val_gradcam/interpret.json'}
  assert 'id="masking-alert"' not in text and 'all 4 passed' in text
  assert text.count('<img src="data:image/png;base64,') == 5
  assert_self_contained(Path(path))
  # The same files give the same bytes.
  assert report.write(str(run_dir)) == path and Path(path).read_text() == text


def test_sections_without_their_files_are_left_out(folders, tmp_path):
  run_dir = copy_reports(folders['run'], tmp_path / 'bare')
  for name in ('examples.png', 'margins.png', 'robustness.png'):
    (run_dir / name).unlink()
  text = Path(report.write(str(run_dir))).read_text()
  assert set(section_ids(text)) == expected_run_sections(run_dir) == {
      'run', 'glance', 'masking', 'curves'}
  assert '<img' not in text
  check_numbers(run_dir, page_numbers(text))


def test_a_failed_masking_check_is_said_at_the_top_in_words(folders, tmp_path):
  run_dir = copy_reports(folders['run'], tmp_path / 'masked')
  set_checks(run_dir, failed=('huge_eps_reaches_floor',))
  text = Path(report.write(str(run_dir))).read_text()
  body = text.split('<body>\n', 1)[1]
  assert body.startswith('<div class="alert" id="masking-alert">')
  alert = body.split('</div>', 1)[0]
  words = re.sub(r'<[^>]+>', '', alert)
  assert 'Gradient masking suspected' in words and '1 of 4 gradient-masking checks failed' in words
  assert 'huge_eps_reaches_floor failed' in words and 'may therefore overstate' in words
  rob = json.loads((run_dir / 'robustness.json').read_text())
  huge = next(c for c in rob['checks'] if c['name'] == 'huge_eps_reaches_floor')['figures']
  assert f'At ε = {expected_text(huge["eps"])} the attack left adi at ' \
         f'{expected_text(huge["metric"])}' in words
  # The robust figure it names is the worst case at the report's ε (the grid's middle level).
  worst = rob['curves']['worst-case'][1]
  assert f'adi {expected_text(worst["adi"])} (worst-case at ε = {expected_text(worst["eps"])})' \
      in words
  check_numbers(run_dir, page_numbers(text))


def test_sweep_page_has_plan_table_comparisons_and_run_pages(folders, tmp_path):
  work = Path(shutil.copytree(folders['sweep'], tmp_path / 'sweep'))
  path = report.write(str(work))
  text = Path(path).read_text()
  assert set(section_ids(text)) == expected_sweep_sections(work) == {
      'plan', 'summary', 'comparisons', 'curves', 'training', 'interpret'}
  check_numbers(work, page_numbers(text))
  sources = {s.partition('#')[0] for s, _ in page_numbers(text)}
  assert {'sweep.json', 'summary.csv', 'comparisons.csv'} <= sources
  # Each comparison's interval and verdict, in words.
  with (work / 'comparisons.csv').open() as f:
    comparisons = list(csv.DictReader(f))
  assert [(c['model'], c['reference'], c['figure']) for c in comparisons] == [
      ('AMAT Δε=0.5', 'STD', 'clean'), ('AMAT Δε=0.5', 'STD', 'mean over grid')]
  rows = re.findall(r'<tr>(.*?)</tr>', text.split('id="comparisons"')[1].split('</section>')[0])
  assert len(rows) == 3  # the header, then one per comparison
  for i, (c, row) in enumerate(zip(comparisons, rows[1:])):
    for column in ('mean_diff', 'ci_low', 'ci_high', 'wilcoxon_p_holm'):
      assert f'data-src="comparisons.csv#{i}/{column}"' in row
    verdict = ('resolved: AMAT Δε=0.5 better' if c['resolved'] == 'True' and
               float(c['mean_diff']) > 0 else 'not resolved')
    assert row.endswith(f'<td>{verdict}</td>'), row
  # STD is worse under attack by construction (clean the same): resolved over the grid only.
  assert [c['resolved'] for c in comparisons] == ['False', 'True']
  # AMAT's failed check (the tiny run's huge-ε check) is named at the top, with a link.
  body = text.split('<body>\n', 1)[1]
  assert body.startswith('<div class="alert" id="masking-alert">')
  assert '<a href="amat/report.html">AMAT Δε=0.5</a>' in body.split('</div>', 1)[0]
  # Each run's page is written with the sweep's, and links back.
  for name in ('std', 'amat'):
    run_page = work / name / 'report.html'
    assert f'href="{name}/report.html"' in text and run_page.exists()
    run_text = run_page.read_text()
    assert set(section_ids(run_text)) == expected_run_sections(work / name)
    assert 'href="../report.html"' in run_text
    check_numbers(work / name, page_numbers(run_text))
  assert ('id="masking-alert"' in (work / 'std' / 'report.html').read_text()) is False
  assert_self_contained(Path(path))


def test_a_command_rewrites_the_pages_that_show_its_reports(folders, tmp_path):
  """robust_med.evaluate's `eval/<split>/` and robust_med.interpret's `interpret/<name>/`
  reports show on their own page and on the page of the folder holding them."""
  run_dir = copy_reports(folders['run'], tmp_path / 'run')
  evaluation = copy_reports(folders['run'], run_dir / 'eval' / 'test')
  pages = report.write_pages(str(evaluation))
  assert pages == [str(evaluation / 'report.html'), str(run_dir / 'report.html')]
  text = (run_dir / 'report.html').read_text()
  assert 'evaluations' in section_ids(text) and 'href="eval/test/report.html"' in text
  assert set(section_ids(text)) == expected_run_sections(run_dir)
  assert_self_contained(run_dir / 'report.html')
  work = Path(shutil.copytree(folders['sweep'], tmp_path / 'sweep'))
  interpret = work / 'interpret' / 'val_gradcam'
  assert report.write_pages(str(interpret)) == [str(interpret / 'report.html'),
                                                str(work / 'report.html')]
  assert section_ids((interpret / 'report.html').read_text()) == ['interpret']
  check_numbers(interpret, page_numbers((interpret / 'report.html').read_text()))
  assert (work / 'amat' / 'report.html').exists()


def test_comparison_verdicts_follow_the_direction_of_the_metric():
  row = {'model': 'AMAT', 'reference': 'STD', 'mean_diff': '-0.1', 'resolved': 'True'}
  assert report.comparison_verdict(row, True) == 'resolved: STD better'
  assert report.comparison_verdict(row, False) == 'resolved: AMAT better'
  assert report.comparison_verdict({**row, 'resolved': 'False'}, True) == 'not resolved'


def test_the_formatting_rule_and_pointers():
  assert [report.fmt(v) for v in (0.73504, 226.27416, 12, 1e-5, 0.5, float('nan'))] == [
      '0.735', '226.3', '12', '1e-05', '0.5', 'nan']
  assert report.pointer(('curves', 'a/b~c', 0)) == '/curves/a~1b~0c/0'
  # The middle nonzero level (of two, the smaller), then the largest; as indices into the grid.
  assert report.report_levels([0.0, 0.5, 1.0, 2.0]) == [2, 3]
  assert report.report_levels([0.0, 0.5, 1.0]) == [1, 2]
  assert report.report_levels([0.0, 1.0]) == [1] and report.report_levels([0.0]) == []


def test_command_line_rebuilds_the_page_and_refuses_a_folder_without_reports(folders, tmp_path):
  work = Path(shutil.copytree(folders['sweep'], tmp_path / 'sweep'))
  proc = run('robust_med.report', f'--workdir={work}', timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (work / 'report.html').exists() and (work / 'amat' / 'report.html').exists()
  assert report.write(str(tmp_path / 'empty_missing')) is None
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'config.json').write_text('{}')
  assert report.write(str(tmp_path / 'empty')) is None
  line = error_line(run('robust_med.report', f'--workdir={tmp_path / "empty"}', timeout=120))
  assert 'holds no report files' in line and '--workdir' in line
  line = error_line(run('robust_med.report', f'--workdir={tmp_path / "absent"}', timeout=120))
  assert 'does not exist' in line
  assert not os.path.exists(tmp_path / 'empty' / 'report.html')
