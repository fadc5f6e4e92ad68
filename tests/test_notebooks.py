"""Every notebook in colab/ runs headlessly, cell by cell, in fast mode (ROBUST_MED_FAST=1), and
produces its figures; notebooks are committed with cleared outputs, start by installing
robust_med when it is missing, and have an "Open in Colab" badge in the README."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from cli_helpers import XLA_FLAGS

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / 'colab').glob('*.ipynb'))


def execute(path: Path, workdir: Path, monkeypatch, timeout: int = 600):
  """Runs the notebook at `path` with `workdir` as its working folder, in fast mode; raises
  CellExecutionError at the first cell that raises. Returns the executed notebook. `timeout` is
  the limit per cell in seconds: the slowest cell in fast mode, detection.ipynb's training and
  evaluation of two detectors, takes about 65 s on 2 quiet cores (most of it XLA compiling the
  train steps and attacks), so 600 s leaves room for a loaded machine and stops a cell that
  hangs."""
  monkeypatch.setenv('ROBUST_MED_FAST', '1')
  monkeypatch.setenv('PYTHONPATH', str(REPO))
  # One CPU device (the tiny runs are fastest there), unoptimised XLA code as the tests' command
  # lines compile (cli_helpers.XLA_FLAGS).
  monkeypatch.setenv('XLA_FLAGS', XLA_FLAGS)
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  # Compilation is most of a fast run, and each run of a sweep (and each re-evaluation) compiles
  # the same attack and evaluation programs again from fresh closures: a persistent compilation
  # cache, new for every test (so CI never depends on an earlier run), compiles them once.
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(workdir / 'jax_cache'))
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=timeout, kernel_name='python3',
                 resources={'metadata': {'path': str(workdir)}}).execute()
  return nb


def test_there_are_notebooks():
  assert NOTEBOOKS, 'colab/ has no notebook'


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode_and_draws_its_figures(path, tmp_path, monkeypatch):
  nb = execute(path, tmp_path, monkeypatch)
  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  assert not [o for o in outputs if o.get('output_type') == 'error']
  assert any('image/png' in o.get('data', {}) for o in outputs), 'no figure was displayed'


def test_a_cell_that_raises_fails_the_run(tmp_path, monkeypatch):
  nb = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell('x = 1'),
      nbformat.v4.new_code_cell("raise ValueError('deliberately broken')"),
      nbformat.v4.new_code_cell("open('after.txt', 'w').write('ran')")])
  path = tmp_path / 'broken.ipynb'
  nbformat.write(nb, path)
  with pytest.raises(CellExecutionError, match='deliberately broken'):
    execute(path, tmp_path, monkeypatch, timeout=120)
  assert not (tmp_path / 'after.txt').exists()  # Cells after the failure do not run.


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean_installs_itself_and_has_a_badge(path):
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(not c.outputs and c.execution_count is None for c in code), \
      f'{path.name} has outputs: clear them before committing'
  first = code[0].source
  assert "find_spec('robust_med') is None" in first and 'pip' in first and 'install' in first
  badge = (f'https://colab.research.google.com/github/robust-med/robust_med/blob/main/colab/'
           f'{path.name}')
  assert badge in (REPO / 'README.md').read_text(), f'README has no Colab badge for {path.name}'
