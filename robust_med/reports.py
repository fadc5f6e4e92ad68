"""Writing report files atomically (JSON, CSV, Markdown, PNG figures) and the metric labels they use.

Bottom floor: imports nothing of robust_med. Every report file is written to `<path>.tmp` and
renamed into place, so a killed run never leaves a half-written report.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **kwargs):
  """`open(path + '.tmp')` for writing; renamed to `path` when the block ends without an error
  (removed when it raises)."""
  tmp = path + '.tmp'
  try:
    with open(tmp, mode, **kwargs) as f:
      yield f
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  os.replace(tmp, path)


def write_json(path: str, value) -> None:
  """Writes JSON atomically: a killed run never leaves a half-written file."""
  with atomic_open(path) as f:
    json.dump(value, f, indent=2)


def write_text(path: str, text: str) -> None:
  """Writes a text file (Markdown) atomically."""
  with atomic_open(path) as f:
    f.write(text)


def write_csv(path: str, header: list, rows: list[list]) -> None:
  """Writes a CSV file (a header row, then `rows`) atomically."""
  with atomic_open(path, newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def save_figure(fig, path: str) -> None:
  """Writes a matplotlib figure as PNG atomically (never a half-written file) and closes it."""
  import matplotlib.pyplot as plt
  try:
    with atomic_open(path, 'wb') as f:
      fig.savefig(f, dpi=120, format='png')
  finally:
    plt.close(fig)


def figure_png(fig) -> bytes:
  """A matplotlib figure encoded as PNG (as `save_figure` writes it); closes it."""
  import io
  import matplotlib.pyplot as plt
  buffer = io.BytesIO()
  try:
    fig.savefig(buffer, dpi=120, format='png')
  finally:
    plt.close(fig)
  return buffer.getvalue()


def metric_label(metric: str, higher_is_better: bool = True) -> str:
  """A metric's name for axes and tables, with its direction: 'MRE_MM (lower is better)'."""
  return f'{metric.upper()} ({"higher" if higher_is_better else "lower"} is better)'
