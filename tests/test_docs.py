"""The README is a front page and docs/ the manual: the README stays short, every relative link in
README.md and docs/*.md points at a file that exists, every docs page is reachable from the README
and from docs/index.md, and the README's set-up commands are the ones CI runs. No JAX here.

Each check is a small function tested below on a temporary tree with a deliberate fault, so that
a check that cannot fail is caught too."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'
DOCS = REPO / 'docs'
CI_RUN = REPO / '.ci' / 'run'
README_MAX_LINES = 200

VENV = 'python3 -m venv .venv && . .venv/bin/activate && '
DEMO_COMMAND = (VENV + 'pip install -e . && python -m robust_med.main '
                '--config=configs/prostate_amat.py:synthetic --workdir=runs/demo')
SYNC_MARKER = 'keep in sync'

_FENCED = re.compile(r'^```.*?^```', re.S | re.M)
_INLINE_CODE = re.compile(r'`[^`\n]*`')
_LINK = re.compile(r'\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')   # [text](target "title")
_REFERENCE = re.compile(r'^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)', re.M)  # [label]: target
_IMG_SRC = re.compile(r'<img\b[^>]*?\bsrc\s*=\s*["\']([^"\']+)["\']', re.I)


def link_targets(text: str) -> list[str]:
  """Every link target of a Markdown text: `[..](target)` (images included), reference
  definitions and `<img src=..>`; fenced code blocks and inline code spans are not Markdown, so
  their contents are skipped."""
  text = _FENCED.sub('', text)
  prose = _INLINE_CODE.sub('', text)
  return _LINK.findall(prose) + _REFERENCE.findall(prose) + _IMG_SRC.findall(text)


def is_external(target: str) -> bool:
  return target.lower().startswith(('http://', 'https://', 'mailto:'))


def resolve(page: Path, target: str) -> Path | None:
  """The file a relative link of `page` points at (its `#anchor` stripped); None for an external
  link or a bare anchor into the page itself."""
  if is_external(target):
    return None
  path = target.split('#', 1)[0].split('?', 1)[0]
  if not path:
    return None
  return (page.parent / path).resolve()


def broken_links(pages) -> list[str]:
  """'page: target' for every relative link of `pages` whose file or folder does not exist."""
  broken = []
  for page in pages:
    for target in link_targets(page.read_text()):
      path = resolve(page, target)
      if path is not None and not path.exists():
        broken.append(f'{page.name}: {target}')
  return broken


def linked_files(page: Path) -> set[Path]:
  return {p for p in (resolve(page, t) for t in link_targets(page.read_text())) if p is not None}


def unlinked(pages, from_page: Path) -> list[str]:
  """The names of `pages` (other than `from_page` itself) that `from_page` does not link to."""
  links = linked_files(from_page)
  return sorted(p.name for p in pages
                if p.resolve() != from_page.resolve() and p.resolve() not in links)


def line_count(path: Path) -> int:
  return len(path.read_text().splitlines())


def ci_test_command(ci_run: Path) -> str:
  """The command on the first non-empty line after the `keep in sync` comment of `.ci/run`."""
  lines = ci_run.read_text().splitlines()
  marks = [i for i, line in enumerate(lines) if SYNC_MARKER in line]
  assert marks, f'{ci_run} has no "{SYNC_MARKER}" line'
  rest = [line.strip() for line in lines[marks[0] + 1:] if line.strip()]
  assert rest, f'{ci_run} has no command after its "{SYNC_MARKER}" line'
  return rest[0]


def bash_lines(text: str) -> list[str]:
  """The lines of a Markdown text's ```bash blocks."""
  blocks = re.findall(r'^```bash\n(.*?)^```', text, re.S | re.M)
  return [line.strip() for block in blocks for line in block.splitlines()]


def readme_test_command(text: str) -> str:
  """The README's install-and-test command: the bash line that makes the venv and runs pytest."""
  found = [line for line in bash_lines(text) if line.startswith(VENV) and 'pytest' in line]
  assert len(found) == 1, f'expected one install-and-test command in the README, found {found}'
  return found[0]


def docs_pages() -> list[Path]:
  return sorted(DOCS.glob('*.md'))


# --- The repository -------------------------------------------------------------------------


def test_readme_is_a_front_page_of_at_most_200_lines():
  assert line_count(README) <= README_MAX_LINES, \
      f'README.md has {line_count(README)} lines: move detail into docs/'


def test_there_is_a_manual_with_an_index():
  assert (DOCS / 'index.md').is_file() and len(docs_pages()) > 1


def test_every_relative_link_in_the_readme_and_docs_resolves():
  assert broken_links([README, *docs_pages()]) == []


def test_every_docs_page_is_linked_from_the_readme():
  assert unlinked(docs_pages(), README) == []


def test_every_docs_page_is_linked_from_the_docs_index():
  assert unlinked(docs_pages(), DOCS / 'index.md') == []


def test_readme_has_the_demo_command():
  assert DEMO_COMMAND in bash_lines(README.read_text())


def test_readme_test_command_is_the_one_ci_runs():
  assert readme_test_command(README.read_text()) == VENV + ci_test_command(CI_RUN)


def test_the_bring_your_own_head_example_is_in_the_docs():
  import readme_head  # tests/ is on sys.path; imports no JAX.
  code = readme_head.readme_head_code()
  assert readme_head.BYO_HEAD_PAGE == DOCS / 'bring_your_own_head.md'
  assert 'class Task(base.Task):' in code and 'def load_split' in code


# --- The checks themselves fail on a faulty tree ---------------------------------------------


@pytest.fixture
def tree(tmp_path):
  """README.md, docs/{index,a,b}.md and a file to link to, all links good."""
  (tmp_path / 'docs').mkdir()
  (tmp_path / 'fig.png').write_bytes(b'png')
  (tmp_path / 'README.md').write_text(
      '# r\n[index](docs/index.md), [a](docs/a.md#part), [b](docs/b.md)\n'
      '<img src="fig.png" width=100> ![fig](fig.png) [web](https://example.org/x.md)\n'
      '[mail](mailto:a@b.c) [here](#r)\n```bash\n[not](a/link.md)\n```\n'
      '`[not](a/link.md)`\n')
  (tmp_path / 'docs' / 'index.md').write_text('[a](a.md) [b](./b.md) [up](../README.md)\n')
  (tmp_path / 'docs' / 'a.md').write_text('# Part\n[fig](../fig.png) [index](index.md)\n')
  (tmp_path / 'docs' / 'b.md').write_text('[a, part](a.md#part)\n')
  return tmp_path


def test_the_link_check_passes_a_good_tree(tree):
  pages = [tree / 'README.md', *sorted((tree / 'docs').glob('*.md'))]
  assert broken_links(pages) == []
  assert unlinked(sorted((tree / 'docs').glob('*.md')), tree / 'README.md') == []
  assert unlinked(sorted((tree / 'docs').glob('*.md')), tree / 'docs' / 'index.md') == []


def test_the_link_check_finds_a_broken_markdown_link(tree):
  (tree / 'docs' / 'b.md').write_text('[gone](missing.md#anchor) [ok](a.md)\n')
  assert broken_links([tree / 'docs' / 'b.md']) == ['b.md: missing.md#anchor']


def test_the_link_check_finds_a_broken_image(tree):
  (tree / 'fig.png').unlink()
  assert broken_links([tree / 'README.md']) == ['README.md: fig.png'] * 2  # ![..](..) and <img>
  (tree / 'docs' / 'a.md').write_text("<IMG alt='x' src='../nope.png'>\n")
  assert broken_links([tree / 'docs' / 'a.md']) == ['a.md: ../nope.png']


def test_the_link_check_finds_a_broken_reference_link(tree):
  (tree / 'docs' / 'b.md').write_text('See [the page][p].\n\n[p]: gone.md\n')
  assert broken_links([tree / 'docs' / 'b.md']) == ['b.md: gone.md']


def test_the_link_check_skips_code_external_links_and_anchors(tree):
  assert link_targets('```bash\n[x](nope.md)\n```\n`[y](nope.md)`') == []
  assert resolve(tree / 'README.md', 'https://example.org/nope.md') is None
  assert resolve(tree / 'README.md', '#section') is None
  assert resolve(tree / 'README.md', 'docs/a.md#part') == (tree / 'docs' / 'a.md').resolve()


def test_an_unlinked_page_is_found(tree):
  (tree / 'docs' / 'c.md').write_text('# orphan\n')
  pages = sorted((tree / 'docs').glob('*.md'))
  assert unlinked(pages, tree / 'README.md') == ['c.md']
  assert unlinked(pages, tree / 'docs' / 'index.md') == ['c.md']


def test_a_long_readme_is_counted(tmp_path):
  page = tmp_path / 'README.md'
  page.write_text('line\n' * (README_MAX_LINES + 1))
  assert line_count(page) > README_MAX_LINES


def test_a_readme_test_command_out_of_sync_with_ci_is_found(tmp_path):
  ci = tmp_path / 'run'
  ci.write_text('#!/usr/bin/env bash\nset -e\n# --- the test command (keep in sync) ---\n\n'
                "pip install -q -e '.[test]' && python -m pytest -q -n 2 --durations=25\n")
  readme = ("```bash\n" + DEMO_COMMAND + "\n```\n\n```bash\n" + VENV +
            "pip install -q -e '.[test]' && python -m pytest -q -n 2\n```\n")
  assert readme_test_command(readme) != VENV + ci_test_command(ci)
  assert readme_test_command(readme.replace('-n 2\n', '-n 2 --durations=25\n')) == \
      VENV + ci_test_command(ci)
  assert DEMO_COMMAND in bash_lines(readme)
  assert DEMO_COMMAND not in bash_lines(readme.replace('runs/demo', 'runs/other'))
  ci.write_text('pip install -q -e . && python -m pytest\n')
  with pytest.raises(AssertionError, match='keep in sync'):
    ci_test_command(ci)


def test_the_fidelity_table_covers_every_paper_setting_method_and_metric():
  """docs/fidelity.md names every setting a preset takes from a paper, every method and every
  metric the heads report, so that no setting is called the paper's without its row."""
  import sys
  sys.path.insert(0, str(REPO))
  from robust_med import methods
  from robust_med.presets import detection, landmarks, segmentation
  text = (REPO / 'docs' / 'fidelity.md').read_text()
  paper_keys = {*landmarks.PAPER, *detection.PAPER,
                *segmentation.paper_settings('prostate', 'amat', ''),
                *segmentation.paper_settings('prostate', 'fgsm_aug', ''), 'landmarks.heatmap_weight'}
  names = {k.split('.')[-1] for k in paper_keys}
  missing = sorted(n for n in names if n not in text)
  assert not missing, f'settings of a PAPER dict without a row in docs/fidelity.md: {missing}'
  for name in ('std', 'sat', 'amat', 'fgsm', 'rtda', 'saliency'):
    assert name.upper() in text.upper(), name
  assert set(methods.XI_MODES) <= set(re.findall(r'`(\w+)`', text))
  for metric in ('adi', 'tvdi', 'mre_mm', 'sdr_2mm', 'avg_iou', 'avg_iou_best', 'map50_95',
                 'accuracy', 'auc'):
    assert f'`{metric}`' in text, metric
  for dataset in ('Prostate', 'Heart', 'Hippocampus', 'ISBI', 'BCCD', 'BUSI', 'PneumoniaMNIST'):
    assert dataset in text, dataset
