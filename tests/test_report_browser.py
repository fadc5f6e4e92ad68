"""The report pages in a real browser: the distribution's headless Chromium, the network off.

For the demo run's page, a tiny sweep's page and one of its runs' pages: no console error, no
request but the file itself and data: URIs, every image decoded, every section whose report
exists, every number equal to its file's value; a screenshot of each is kept as a test artefact
(in $ROBUST_MED_TEST_ARTIFACTS, else the test's temporary folder). Skipped without Chromium unless
ROBUST_MED_REQUIRE_BROWSER=1 (CI installs it).
"""

import os
from pathlib import Path

import pytest

import browser
from robust_med import report
from test_report import (build_sweep, check_numbers, copy_reports, expected_run_sections,
                         expected_sweep_sections)


@pytest.fixture(scope='session')
def chromium():
  """The browser's path; session-scoped so that a skip comes before the shared run trains."""
  path = browser.find_chromium()
  if path is None:
    if os.environ.get('ROBUST_MED_REQUIRE_BROWSER') == '1':
      pytest.fail('ROBUST_MED_REQUIRE_BROWSER=1 but no Chromium was found (chromium, '
                  'chromium-browser): install the distribution\'s chromium package.')
    pytest.skip('no Chromium found (chromium, chromium-browser): install the distribution\'s '
                'chromium package to run the browser test.')
  return path


def test_report_pages_open_offline_with_every_image_section_and_number(chromium,
                                                                      segmentation_run, tmp_path):
  demo = copy_reports(segmentation_run, tmp_path / 'demo')
  sweep = build_sweep(segmentation_run, tmp_path / 'sweep')
  pages = {'demo': (demo, report.write(str(demo)), expected_run_sections(demo)),
           'sweep': (sweep, report.write(str(sweep)), expected_sweep_sections(sweep)),
           'sweep_amat': (sweep / 'amat', str(sweep / 'amat' / 'report.html'),
                          expected_run_sections(sweep / 'amat'))}
  artefacts = Path(os.environ.get('ROBUST_MED_TEST_ARTIFACTS') or tmp_path)
  artefacts.mkdir(parents=True, exist_ok=True)
  results = browser.open_pages(chromium, [Path(p).as_uri() for _, p, _ in pages.values()],
                               timeout=60)
  for (name, (folder, page, sections)), seen in zip(pages.items(), results):
    shot = artefacts / f'report_{name}.png'
    shot.write_bytes(seen['screenshot'])
    print(f'screenshot of {page}: {shot}')
    assert seen['errors'] == [], (name, seen['errors'])
    assert seen['requests'][0] == Path(page).as_uri()
    assert all(u.startswith(('file:', 'data:')) for u in seen['requests']), seen['requests']
    facts = seen['facts']
    assert facts['scripts'] == 0
    assert facts['images'] and all(i['complete'] and i['naturalWidth'] > 0
                                   for i in facts['images']), (name, facts['images'])
    assert set(facts['sections']) == sections, name
    check_numbers(folder, [tuple(n) for n in facts['nums']])
    # The tiny run fails its huge-ε masking check: said first, in words; the sweep's STD passes.
    assert facts['alertFirst'] and 'Gradient masking suspected' in facts['alert'], name
    assert shot.stat().st_size > 10000
  assert {'shift', 'margins', 'examples'} <= pages['sweep_amat'][2]
  assert 'interpret' in pages['sweep'][2]


def test_the_browser_is_gone_after_its_pages(chromium):
  """The browser and its children end with the pages (killed in a `finally`), its profile
  removed."""
  devtools = browser.DevTools(chromium, timeout=30)
  try:
    assert devtools.send('Target.getTargets')['targetInfos'] is not None
  finally:
    devtools.close()
  assert devtools.proc.poll() is not None and not os.path.exists(devtools.user_dir)
