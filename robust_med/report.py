"""A self-contained page per run and per sweep, `report.html`, from the report files alone.

`write(workdir)` reads the report files of a run folder (`robust_med.main`, or
`robust_med.evaluate`'s `DIR/eval/<split>/`) or of a sweep folder (`robust_med.sweep`: it has a
`sweep.json` or a `summary.csv`) and writes `workdir/report.html` atomically: plain HTML and CSS,
no script, every figure embedded as a `data:` URI, no link to anything outside the folder, so the
page opens from disk or as an e-mail attachment. Nothing is recomputed: the page shows what the
files say, and the same files always give the same bytes.

A run's page: what the run is (head, data, split, method, ε, seed, step, a link to its
config.json), the results at a glance (the clean metric, the primary attack's and the worst case's
metric at the report's ε — the middle nonzero level of the grid, as in examples.png — and at the
largest level), the gradient-masking checks in words (a failed check is also a red box at the very
top of the page, `id="masking-alert"`), the robustness curves, the examples, the margins, and the
shift and interpretability reports where they exist. A sweep's page: its plan, the summary table,
the paired comparisons with their intervals, p-values and verdicts, its figures, and a link to
each run's own page (written with it).

Each command that writes reports calls `write_pages(folder)` after its last one; `write(workdir)`
(re)builds one folder's page.

Every number taken from a file is printed as
`<span class="num" data-src="FILE#POINTER">TEXT</span>`: FILE is the file's path relative to the
page; for JSON, POINTER is an RFC 6901 JSON pointer (`robustness.json#/curves/pgd-100/2/adi`),
for CSV it is `ROW/COLUMN`, the 0-based data row and the column's header
(`summary.csv#3/clean_adi`). TEXT is `fmt(value)`: an integer as it is, any other number with four
significant digits, `format(value, '.4g')` (a CSV cell is read as an integer when it is one, else
as a float). A test or a reader can thus trace and recompute every number on the page.

  python -m robust_med.report --workdir=DIR

(re)builds the page of DIR (and, for a sweep, each run's page); a folder without report files is
one `error:` line.
"""

from __future__ import annotations

import base64
import csv
import glob
import html
import json
import os
import re

from robust_med import reports
from robust_med.errors import UserError

PAGE = 'report.html'
PLAN_FILE = 'sweep.json'  # robust_med.sweep.PLAN_FILE
RUN_REPORTS = ('robustness.json', 'shift.json', 'interpret.json')
SWEEP_REPORTS = (PLAN_FILE, 'summary.csv')
WORST = 'worst-case'

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
  max-width: 72rem; margin: 1.5rem auto; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2rem; }
h3 { font-size: 1rem; margin-top: 1.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #d0d0d0; padding: 0.25rem 0.5rem; text-align: left;
  vertical-align: top; }
th { background: #f2f2f2; }
table.facts th { font-weight: normal; color: #333; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.wide { overflow-x: auto; }
abbr { text-decoration: none; }
img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
.alert { background: #fde8e8; border: 2px solid #c62828; color: #7f1010; padding: 0.7rem 1rem;
  margin: 0 0 1rem 0; border-radius: 4px; }
.alert strong { color: #b71c1c; }
.ok { color: #1b5e20; }
.fail { color: #b71c1c; font-weight: bold; }
.note { color: #555; font-size: 0.9rem; }
nav { font-size: 0.9rem; margin: 0.5rem 0 1rem 0; }
nav a { margin-right: 0.8rem; }
@media print { nav { display: none; } .wide { overflow: visible; } }
"""


# --- Numbers and their sources ---------------------------------------------------------------

def fmt(value) -> str:
  """The text of a number on the page: an integer as it is, any other number with four
  significant digits (`format(value, '.4g')`: 0.73504 → '0.735', 226.27 → '226.3')."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  return format(float(value), '.4g')


def pointer(path) -> str:
  """The RFC 6901 JSON pointer of a path of keys and indices: ('curves', 'a/b', 0) →
  '/curves/a~1b/0'."""
  return ''.join('/' + str(p).replace('~', '~0').replace('/', '~1') for p in path)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _span(src: str, value) -> str:
  """A number from a file, with its source (see the module's docstring); other values as text."""
  if value is None or value == '':
    return '—'
  if not _is_number(value):
    return esc(value)
  return f'<span class="num" data-src="{esc(src)}">{esc(fmt(value))}</span>'


def esc(value) -> str:
  """Any value as escaped HTML text."""
  return html.escape(str(value), quote=True)


def _csv_value(cell: str):
  """A CSV cell as an int, a float, or the text itself."""
  text = cell.strip()
  if re.fullmatch(r'[+-]?\d+', text):
    return int(text)
  try:
    return float(text)
  except ValueError:
    return cell


class JsonFile:
  """A JSON report file and the page's path to it; `num(*path)` prints one of its numbers."""

  def __init__(self, page_dir: str, rel: str):
    self.rel = rel
    self.path = os.path.join(page_dir, rel)
    self.data = _read_json(self.path)

  def get(self, *path, default=None):
    node = self.data
    for p in path:
      try:
        node = node[p]
      except (KeyError, IndexError, TypeError):
        return default
    return node

  def num(self, *path) -> str:
    return _span(f'{self.rel}#{pointer(path)}', self.get(*path))


class CsvFile:
  """A CSV report file: its header and data rows; `num(row, column)` prints one of its cells."""

  def __init__(self, page_dir: str, rel: str):
    self.rel = rel
    self.path = os.path.join(page_dir, rel)
    try:
      with open(self.path, newline='') as f:
        table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f'{self.path} cannot be read ({e}): rewrite it with python -m '
                      'robust_med.sweep --summarize --workdir=<the sweep>.') from None
    self.header = table[0] if table else []
    self.rows = [dict(zip(self.header, r)) for r in table[1:]]

  def num(self, row: int, column: str) -> str:
    cell = self.rows[row].get(column, '')
    return _span(f'{self.rel}#{row}/{column}', _csv_value(cell) if cell != '' else None)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is not a readable JSON report ({e}): rerun the command that '
                    'writes it.') from None


# --- HTML pieces -----------------------------------------------------------------------------

def _image(path: str, alt: str) -> str:
  """A PNG embedded as a data: URI (never a link to the file)."""
  with open(path, 'rb') as f:
    data = base64.b64encode(f.read()).decode('ascii')
  return f'<p><img src="data:image/png;base64,{data}" alt="{esc(alt)}"></p>'


def _section(sid: str, title: str, body: str) -> str:
  return f'<section id="{esc(sid)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>\n'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
  """An HTML table; `header` and `rows` are HTML already; `numeric` columns align right."""
  def cls(i):
    return ' class="n"' if i in numeric else ''
  head = ''.join(f'<th{cls(i)}>{h}</th>' for i, h in enumerate(header))
  body = '\n'.join('<tr>' + ''.join(f'<td{cls(i)}>{c}</td>' for i, c in enumerate(r)) + '</tr>'
                   for r in rows)
  return (f'<div class="wide"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
          '</tbody>\n</table></div>')


def _facts(rows: list[list[str]]) -> str:
  """A table of facts: a name (a header cell) and its value (HTML already) per row."""
  body = '\n'.join(f'<tr><th>{name}</th><td>{value}</td></tr>' for name, value in rows)
  return f'<table class="facts">\n<tbody>\n{body}\n</tbody>\n</table>'


def _page(title: str, subtitle: str, alert: str, sections: list[tuple[str, str, str]]) -> str:
  """The whole document: the alert first, the title, a table of contents, the sections."""
  nav = ' '.join(f'<a href="#{esc(sid)}">{esc(t)}</a>' for sid, t, _ in sections)
  body = ''.join(_section(*s) for s in sections)
  return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
          '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
          'img-src data:; style-src \'unsafe-inline\'">\n'
          '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
          f'<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n'
          f'{alert}<header>\n<h1>{esc(title)}</h1>\n<p class="note">{subtitle}</p>\n'
          f'<nav>{nav}</nav>\n</header>\n{body}</body>\n</html>\n')


# --- A run's page ----------------------------------------------------------------------------

def _curves(rob: JsonFile) -> list[tuple[str, tuple]]:
  """[(curve name, JSON path of its rows)]: every curve of the report (the primary attack's
  `results` for a report without `curves`)."""
  curves = rob.get('curves')
  if isinstance(curves, dict) and curves:
    return [(name, ('curves', name)) for name in curves]
  return [(rob.get('attack', 'name', default='attack'), ('results',))]


def _levels(rob: JsonFile) -> list[float]:
  return [r['eps'] for r in rob.get('results', default=[])]


def report_levels(levels: list[float]) -> list[int]:
  """Indices in the grid of the report's ε (its middle nonzero level, as examples.png shows it)
  and of its largest level (one index when they are the same; none for a grid of 0 alone)."""
  nonzero = [i for i, e in enumerate(levels) if e > 0]
  if not nonzero:
    return []
  return list(dict.fromkeys([nonzero[(len(nonzero) - 1) // 2], nonzero[-1]]))


def _failed_checks(rob: JsonFile) -> list[int]:
  return [i for i, c in enumerate(rob.get('checks', default=[]) or []) if not c.get('passed')]


def _worst_figure(rob: JsonFile) -> str:
  """What the report states as its robust figure: the worst case (else the primary attack) at
  the report's ε."""
  levels, metric = _levels(rob), rob.get('metric')
  picked = report_levels(levels)
  if not picked:
    return ''
  i = picked[0]
  curves = _curves(rob)
  name, path = next(((n, p) for n, p in curves if n == WORST), curves[0])
  return (f'{esc(metric)} {rob.num(*path, i, metric)} ({esc(name)} at ε = '
          f'{rob.num("results", i, "eps")})')


def check_words(rob: JsonFile, i: int) -> str:
  """A check of `robustness.json#/checks/i` in plain words: what it asks and what it saw."""
  c = rob.get('checks', i)
  name, fig = c['name'], ('checks', i, 'figures')
  f = rob.get(*fig, default={}) or {}
  metric = esc(rob.get('metric', default='the metric'))
  verdict = 'passed' if c.get('passed') else 'failed'
  text = f'<strong>{esc(name)}</strong> {verdict}: {esc(c.get("description", ""))}'
  if name == 'huge_eps_reaches_floor' and 'eps' in f:
    text += (f'. At ε = {rob.num(*fig, "eps")} the attack left {metric} at '
             f'{rob.num(*fig, "metric")} (floor {rob.num(*fig, "floor")}, clean '
             f'{rob.num(*fig, "clean")}; it must come within {rob.num(*fig, "allowed_distance")} '
             'of the floor)')
  elif name == 'monotone_in_eps' and isinstance(f.get('curves'), dict) and f['curves']:
    worst = max(f['curves'], key=lambda k: f['curves'][k].get('largest_improvement') or 0)
    text += (f'. Largest improvement as ε grows: '
             f'{rob.num(*fig, "curves", worst, "largest_improvement")} ({esc(worst)}, at ε = '
             f'{rob.num(*fig, "curves", worst, "at_eps")}; tolerance {rob.num(*fig, "tolerance")})')
  elif 'largest_shortfall' in f:
    pair = [k for k in f if k not in ('tolerance', 'largest_shortfall', 'at_eps')]
    seen = ', '.join(f'{esc(k)} {rob.num(*fig, k)}' for k in pair)
    text += (f'. Largest shortfall {rob.num(*fig, "largest_shortfall")} at ε = '
             f'{rob.num(*fig, "at_eps")} ({seen}; tolerance {rob.num(*fig, "tolerance")})')
  return text + '.'


def _alert(rob: JsonFile) -> str:
  """The red box at the very top of a run's page when a gradient-masking check failed."""
  failed = _failed_checks(rob)
  if not failed:
    return ''
  items = ''.join(f'<li>{check_words(rob, i)}</li>' for i in failed)
  figure = _worst_figure(rob)
  stated = (f' The robust figure this report states, {figure}, may therefore overstate the '
            'model\'s robustness: read it as an optimistic bound, not a measurement, until the '
            'checks pass (stronger attacks: config.eval.attacks, eval.steps).') if figure else ''
  return (f'<div class="alert" id="masking-alert"><strong>Gradient masking suspected:</strong> '
          f'{len(failed)} of {len(rob.get("checks"))} gradient-masking checks failed.'
          f'<ul>{items}</ul>{stated}</div>\n')


def _method_budget(cfg: JsonFile | None, prefix: tuple = ('method',)) -> str:
  """The method's budget words: ε for the fixed-budget methods, Δε for AMAT, none for STD."""
  if cfg is None or cfg.get(*prefix) is None:
    return '—'
  parts = []
  if (cfg.get(*prefix, 'eps') or 0) > 0:
    parts.append(f'ε = {cfg.num(*prefix, "eps")}')
  if cfg.get(*prefix, 'name') == 'amat':
    parts.append(f'Δε = {cfg.num(*prefix, "delta_eps")}')
  return ', '.join(parts) or 'no training budget'


def _run_section(page_dir: str, rob: JsonFile | None, cfg: JsonFile | None,
                 first: JsonFile) -> str:
  """What the run is: head, data, split, method, ε, seed, step, the config."""
  src = rob or first
  root = src.get('data', 'root') or (cfg.get('data', 'root') if cfg else '')
  name = (cfg.get('data', 'name') if cfg else None) or src.get('data', 'settings', 'name')
  rows = [['head (task)', esc(src.get('task', default='—'))],
          ['data', esc(name or '—') + (f' ({esc(root)})' if root else '')],
          ['split', f'{esc(src.get("split", default="—"))}: {src.num("num_samples")} samples of '
                    f'{src.num("data", "split_size")}'],
          ['method', esc(src.get('method', default=cfg.get('method', 'name') if cfg else '—'))],
          ['training budget', _method_budget(cfg)],
          ['seed', cfg.num('seed') if cfg else '—'],
          ['checkpoint step', src.num('checkpoint', 'step')]]
  if rob is not None:
    a = rob.get('attack', default={})
    rows.append(['evaluation', f'{esc(a.get("name", ""))} ({esc(str(a.get("norm", "")).upper())}'
                               f', step size {esc(a.get("step_size", ""))}), protocol '
                               f'{esc(rob.get("protocol", default="unrecorded"))}'])
  if cfg is not None:
    rows.append(['config', '<a href="config.json">config.json</a> (the resolved config; usable '
                           'as a config again)'])
  parent = os.path.dirname(os.path.abspath(page_dir))
  if any(os.path.isfile(os.path.join(parent, f)) for f in SWEEP_REPORTS):
    rows.append(['sweep', f'part of a sweep: <a href="../{PAGE}">the sweep\'s page</a>'])
  return _facts(rows)


def _glance(rob: JsonFile) -> str:
  """The results at a glance: clean, the primary attack and the worst case at the report's ε
  and at the largest level, and the masking checks in one line."""
  metric = rob.get('metric')
  levels, curves = _levels(rob), dict(_curves(rob))
  primary = _curves(rob)[0][0]
  label = reports.metric_label(metric, rob.get('higher_is_better', default=True))
  rows = [[f'clean {esc(metric)}', rob.num('results', 0, metric)]]
  for k, i in enumerate(report_levels(levels)):
    which = 'the report\'s ε' if k == 0 else 'the largest ε'
    eps = f'ε = {rob.num("results", i, "eps")} ({which})'
    rows.append([f'{esc(primary)} at {eps}', rob.num(*curves[primary], i, metric)])
    if WORST in curves:
      rows.append([f'worst case over {len(rob.get("worst_case", "over", default=[]))} attacks '
                   f'at {eps}', rob.num(*curves[WORST], i, metric)])
  checks = rob.get('checks', default=[]) or []
  failed = _failed_checks(rob)
  if not checks:
    words = 'not run (config.eval.masking_checks = False)'
  elif failed:
    names = ', '.join(esc(checks[i]['name']) for i in failed)
    words = (f'<span class="fail">{len(failed)} of {len(checks)} failed ({names}): gradient '
             'masking suspected</span>')
  else:
    words = f'<span class="ok">all {len(checks)} passed</span>'
  rows.append(['gradient-masking checks', words])
  note = (f'<p>{esc(label)} on {rob.num("num_samples")} samples of the '
          f'{esc(rob.get("split", default="val"))} split, noise in the '
          f'{esc(str(rob.get("attack", "norm", default="")).upper())} norm. The report\'s ε is '
          'the middle nonzero level of the grid (the one examples.png shows first).</p>')
  return note + _table(['', esc(metric)], rows, {1})


def _masking(rob: JsonFile) -> str:
  """Every gradient-masking check in words, and the attacks they ran."""
  checks = rob.get('checks', default=[]) or []
  items = ''.join(f'<li class="{"ok" if c.get("passed") else "fail"}">{check_words(rob, i)}</li>'
                  for i, c in enumerate(checks))
  extra = rob.get('check_attacks', default={}) or {}
  lines = []
  if 'weak' in extra:
    lines.append(f'fewer steps: {esc(extra["weak"].get("name", ""))}')
  if 'random' in extra:
    lines.append(f'random noise: {esc(extra["random"].get("name", ""))}')
  if 'huge' in extra:
    lines.append(f'very large budget: {esc(extra["huge"].get("name", ""))} at ε = '
                 f'{rob.num("check_attacks", "huge", "eps")}')
  attacks = f'<p class="note">Check attacks: {"; ".join(lines)}.</p>' if lines else ''
  return ('<p>Checks that catch gradient masking (Carlini et al. 2019): a model that hides its '
          'gradients looks robust to gradient attacks without being robust.</p>'
          f'<ul>{items}</ul>{attacks}')


def _curves_section(page_dir: str, rob: JsonFile) -> str:
  """Every curve's metric at every level, the attacks, and robustness.png."""
  metric, levels = rob.get('metric'), _levels(rob)
  header = ['curve'] + [f'ε = {rob.num("results", i, "eps")}' for i in range(len(levels))]
  rows = [[esc(name)] + [rob.num(*path, i, metric) for i in range(len(levels))]
          for name, path in _curves(rob)]
  table = _table(header, rows, set(range(1, len(header))))
  attacks = rob.get('attacks', default=None) or [rob.get('attack', default={})]
  described = ''.join(
      f'<li>{esc(a.get("name", ""))}: {esc(str(a.get("norm", "")).upper())}, step size '
      f'{esc(a.get("step_size", ""))}, {esc(a.get("restarts", ""))} restart(s), random start '
      f'{esc(a.get("random_start", ""))}</li>' for a in attacks)
  rule = rob.get('worst_case', 'rule')
  worst = f'<li>{WORST}: {esc(rule)}</li>' if rule else ''
  figure = os.path.join(page_dir, 'robustness.png')
  image = _image(figure, 'robustness.png') if os.path.isfile(figure) else ''
  return f'{image}<p>{esc(metric)} per curve and noise level:</p>{table}<ul>{described}{worst}</ul>'


def _shift_section(page_dir: str, sh: JsonFile) -> str:
  """The shift report: clean, mean corruption, relative robustness, per corruption and
  severity, the shifted sets, and shift.png."""
  metric = sh.get('metric')
  parts = [f'<p>Clean {esc(metric)} {sh.num("clean", metric)}']
  if sh.get('mean_corruption') is not None:
    parts.append(f'; mean over corruptions and severities {sh.num("mean_corruption", metric)}; '
                 f'relative robustness {sh.num("relative_robustness")} (below 1: worse than '
                 'clean)')
  parts.append(f' ({sh.num("num_samples")} samples).</p>')
  corruptions = sh.get('corruptions', default={}) or {}
  severities = sh.get('severities', default=[]) or []
  if corruptions:
    header = ['corruption'] + [f'severity {sh.num("severities", j)}'
                               for j in range(len(severities))] + ['mean']
    rows = [[esc(name)] + [sh.num('corruptions', name, j, metric) for j in range(len(rs))]
            + [sh.num('per_corruption', name)] for name, rs in corruptions.items()]
    parts.append(_table(header, rows, set(range(1, len(header)))))
  shifted = sh.get('shifted_sets', default={}) or {}
  if shifted:
    rows = [[esc(n), sh.num('shifted_sets', n, 'num_samples'), sh.num('shifted_sets', n, metric)]
            for n in shifted]
    parts.append('<h3>Shifted copies of the split</h3>'
                 + _table(['set', 'samples', esc(metric)], rows, {1, 2}))
  figure = os.path.join(page_dir, os.path.dirname(sh.rel), 'shift.png')
  if os.path.isfile(figure):
    parts.append(_image(figure, 'shift.png'))
  return ''.join(parts)


def _interpret_files(page_dir: str) -> list[str]:
  """interpret.json files of the folder: its own and those of `interpret/<split>_<method>/`
  (robust_med.interpret's default --out for runs in this folder)."""
  found = [os.path.relpath(p, page_dir) for p in
           sorted(glob.glob(os.path.join(glob.escape(page_dir), 'interpret', '*',
                                         'interpret.json')))]
  own = ['interpret.json'] if os.path.isfile(os.path.join(page_dir, 'interpret.json')) else []
  return own + [p.replace(os.sep, '/') for p in found]


def resolved_words(p_holm, low, high) -> str:
  """'resolved' when the Holm-adjusted p is below 0.05 and the interval excludes 0
  (robust_med.stats.resolved), else 'not resolved'."""
  ok = all(_is_number(v) for v in (p_holm, low, high)) and p_holm < 0.05 and (low > 0 or high < 0)
  return 'resolved' if ok else 'not resolved'


def _interpret_one(page_dir: str, it: JsonFile) -> str:
  """One interpretability report: alignment per model and view, stability, paired tests."""
  names, models = it.get('metrics', default=[]), it.get('models', default=[])
  c = ('counts',)
  parts = [f'<h3>Saliency alignment: {esc(it.get("method", default=""))} on the '
           f'{esc(it.get("split", default=""))} split ({esc(it.rel)})</h3>',
           f'<p>{it.num(*c, "used")} images used of {it.num(*c, "split_size")} '
           f'({it.num(*c, "excluded_empty_mask")} without an annotation); saliency: '
           f'{esc(it.get("saliency", default=""))}.']
  attack = it.get('attack') or {}
  if attack:
    parts.append(f' Attacked images: {esc(attack.get("name", ""))} at ε = '
                 f'{it.num("attack", "eps")} against each model itself.')
  parts.append('</p>')
  views = ('clean', 'attacked') if attack else ('clean',)
  for view in views:
    rows = [[esc(m)] + [it.num('summary', m, view, 'alignment', n, 'mean') for n in names]
            for m in models]
    parts.append(f'<p>Alignment on {view} images (mean):</p>'
                 + _table(['model'] + [esc(n) for n in names], rows,
                          set(range(1, len(names) + 1))))
  if attack and models:
    keys = list(it.get('summary', models[0], 'stability', default={}) or {})
    rows = [[esc(m)] + [it.num('summary', m, 'stability', k, 'mean') for k in keys]
            for m in models]
    parts.append('<p>Stability, clean vs attacked maps of each model (mean):</p>'
                 + _table(['model'] + [esc(k) for k in keys], rows, set(range(1, len(keys) + 1))))
  parts.append(_interpret_tests(it))
  figure = os.path.join(page_dir, os.path.dirname(it.rel), 'interpret.png')
  if os.path.isfile(figure):
    parts.append(_image(figure, 'interpret.png'))
  return ''.join(parts)


def _interpret_tests(it: JsonFile) -> str:
  """The paired tests of an interpretability report with their verdicts: the resolved ones in
  view, every test in a folded table."""
  rows, resolved = [], []
  for i, t in enumerate(it.get('tests', default=[]) or []):
    what = (f'{esc(t.get("b"))} vs {esc(t.get("a"))}' if t.get('kind') == 'model'
            else f'{esc(t.get("model", ""))}: attacked vs clean')
    ci = t.get('mean_diff_ci') or [None, None]
    verdict = resolved_words(t.get('wilcoxon_p_holm'), *ci)
    rows.append([esc(t.get('condition', '')), what, esc(t.get('metric', '')),
                 f'{it.num("tests", i, "mean_diff")} [{it.num("tests", i, "mean_diff_ci", 0)}, '
                 f'{it.num("tests", i, "mean_diff_ci", 1)}]', it.num('tests', i, 'wilcoxon_p_holm'),
                 it.num('tests', i, 'n'), verdict])
    if verdict == 'resolved':
      resolved.append(rows[-1])
  if not rows:
    return ''
  header = ['condition', 'comparison', 'metric', 'mean diff [95% CI]', 'Wilcoxon p (Holm)', 'n',
            'verdict']
  shown = _table(header, resolved, {4, 5}) if resolved else ''
  return (f'<p>Paired tests ({esc(it.get("tests_rule", default=""))}). Resolved = Holm p &lt; 0.05 '
          f'and an interval without 0: {len(resolved)} of {len(rows)} tests.</p>{shown}'
          f'<details><summary>All {len(rows)} paired tests</summary>'
          f'{_table(header, rows, {4, 5})}</details>')


def _interpret_section(page_dir: str, files: list[str]) -> str:
  return ''.join(_interpret_one(page_dir, JsonFile(page_dir, rel)) for rel in files)


def _figure_section(page_dir: str, name: str, text: str) -> str:
  return f'<p>{esc(text)}</p>' + _image(os.path.join(page_dir, name), name)


RUN_FIGURES = (
    ('examples', 'Examples', 'examples.png',
     'Four evaluation samples, clean and under the primary attack at the grid\'s middle and '
     'largest level: input, perturbation, prediction against the ground truth.'),
    ('training', 'Training', 'training.png', 'Learning curves.'),
    ('margins', 'Margins', 'margins.png',
     'The margin histogram at the end of each epoch, and the mean, median, p10-p90 band and max '
     'against the training step: whether the margins have settled.'),
)


def _eval_links(page_dir: str) -> str:
  """Links to the pages of robust_med.evaluate's reports in `eval/<split>/`."""
  found = sorted(glob.glob(os.path.join(glob.escape(page_dir), 'eval', '*', 'robustness.json')))
  items = [os.path.basename(os.path.dirname(p)) for p in found]
  return ''.join(f'<li><a href="eval/{esc(s)}/{PAGE}">{esc(s)} split</a></li>' for s in items)


def run_page(page_dir: str) -> str:
  """The HTML of a run folder's page (see the module's docstring)."""
  def load(name):
    return JsonFile(page_dir, name) if os.path.isfile(os.path.join(page_dir, name)) else None
  rob, sh, cfg = load('robustness.json'), load('shift.json'), load('config.json')
  interprets = _interpret_files(page_dir)
  first = rob or sh or (JsonFile(page_dir, interprets[0]) if interprets else None)
  if first is None:
    raise UserError(f'{page_dir} holds no report ({", ".join(RUN_REPORTS)}).')
  sections = []
  if rob is not None or sh is not None:
    sections.append(('run', 'What this run is', _run_section(page_dir, rob, cfg, first)))
  if rob is not None:
    sections.append(('glance', 'Results at a glance', _glance(rob)))
    if rob.get('checks'):
      sections.append(('masking', 'Gradient-masking checks', _masking(rob)))
    sections.append(('curves', 'Robustness curves', _curves_section(page_dir, rob)))
  for sid, title, name, text in RUN_FIGURES:
    if os.path.isfile(os.path.join(page_dir, name)):
      sections.append((sid, title, _figure_section(page_dir, name, text)))
  if sh is not None:
    sections.append(('shift', 'Distribution shift', _shift_section(page_dir, sh)))
  if interprets:
    sections.append(('interpret', 'Interpretability', _interpret_section(page_dir, interprets)))
  links = _eval_links(page_dir)
  if links:
    sections.append(('evaluations', 'Other evaluations', f'<ul>{links}</ul>'))
  method = first.get('method', default='') or ''
  title = f'{method or "run"}: {first.get("task", default="")} on {first.get("split", default="")}'
  subtitle = f'Run folder {esc(os.path.basename(os.path.abspath(page_dir)))}; written by ' \
             'robust_med.report from the report files in it.'
  return _page(title, subtitle, _alert(rob) if rob is not None else '', sections)


# --- A sweep's page --------------------------------------------------------------------------

def _plan_section(page_dir: str, plan: JsonFile) -> str:
  """The sweep's plan: shared settings and one row per run."""
  shared = ('shared',)
  levels = plan.get(*shared, 'eval', 'noise_levels', default=[]) or []
  eps = ', '.join(plan.num(*shared, 'eval', 'noise_levels', i) for i in range(len(levels)))
  norm = str(plan.get(*shared, 'eval', 'norm', default=''))
  root = plan.get(*shared, 'data', 'root')
  facts = [['head (task)', esc(plan.get(*shared, 'task', default='—'))],
           ['data', esc(plan.get(*shared, 'data', 'name', default='—'))
            + (f' ({esc(root)})' if root else '')],
           ['evaluation split', esc(plan.get(*shared, 'data', 'eval_split', default='—'))],
           ['noise levels', f'{eps} ({esc(norm.upper())})'],
           ['epochs', plan.num(*shared, 'num_epochs')],
           ['base seed', plan.num(*shared, 'seed')]]
  rows = []
  for i, r in enumerate(plan.get('runs', default=[]) or []):
    name = r.get('name', '')
    done = os.path.isfile(os.path.join(page_dir, name, 'robustness.json'))
    link = (f'<a href="{esc(name)}/{PAGE}">{esc(name)}</a>' if _has_reports(
        os.path.join(page_dir, name)) else esc(name))
    rows.append([link, esc(r.get('label', '')), esc(r.get('method', {}).get('name', '')),
                 _method_budget(plan, ('runs', i, 'method')),
                 plan.num('runs', i, 'seed') if 'seed' in r else '—',
                 'evaluated' if done else 'not finished'])
  return (_facts(facts)
          + _table(['run (its page)', 'label', 'method', 'budget', 'seed', 'status'], rows))


def _summary_section(summary: CsvFile) -> str:
  """summary.csv: one table per curve (the worst case first), a row per model and seed."""
  header = summary.header
  metric_cols = [h for h in header if h.startswith('clean_')]
  metric = metric_cols[0][len('clean_'):] if metric_cols else ''
  levels = [h for h in header if h.startswith(f'{metric}@eps=') and h != f'{metric}@eps=0']
  mean = f'mean_{metric}_over_grid'
  cols = metric_cols + levels + [c for c in (mean, 'train_seconds_per_epoch') if c in header]
  names = {**{c: 'clean' for c in metric_cols}, mean: 'mean over grid',
           'train_seconds_per_epoch': 's / epoch',
           **{c: 'ε = ' + c[len(f'{metric}@eps='):] for c in levels}}
  seeded = any(r.get('seed', '') != '' for r in summary.rows)
  curves = sorted(dict.fromkeys(r.get('curve', '') for r in summary.rows), key=lambda c: c != WORST)
  parts = [f'<p>{esc(metric)} per model, curve and noise level (summary.csv; rows as written, '
           'one per model and seed; hover a column for its name in the file).</p>']
  for curve in curves:
    rows = []
    for i, r in enumerate(summary.rows):
      if r.get('curve') != curve:
        continue
      failed = r.get('checks_failed', '')
      checks = esc(r.get('checks_passed', '')) + (
          f' <span class="fail">failed: {esc(failed.replace(";", ", "))}</span>' if failed else '')
      rows.append([esc(r.get('model', ''))] + ([summary.num(i, 'seed')] if seeded else [])
                  + [summary.num(i, c) for c in cols] + [checks])
    head = (['model'] + (['seed'] if seeded else [])
            + [f'<abbr title="{esc(c)}">{esc(names[c])}</abbr>' for c in cols]
            + ['masking checks passed'])
    first = 2 if seeded else 1
    parts.append(f'<h3>{esc(curve)}</h3>' + _table(head, rows, set(range(1, first + len(cols)))))
  margins = [c for c in header if c.startswith('final_margin_')]
  with_margins = [i for i, r in enumerate(summary.rows)
                  if r.get('final_margin_mean', '') != '' and r.get('curve') == curves[0]]
  if with_margins:
    rows = [[esc(summary.rows[i].get('model', ''))] + [summary.num(i, c) for c in margins]
            for i in with_margins]
    parts.append('<h3>Margins at the end of training</h3>'
                 + _table(['model'] + [esc(c[len('final_margin_'):]) for c in margins], rows,
                          set(range(1, len(margins) + 1))))
  return ''.join(parts)


def comparison_verdict(row: dict, higher_is_better: bool) -> str:
  """A comparisons.csv row's verdict in words: 'resolved: AMAT better' or 'not resolved'."""
  if row.get('resolved') != 'True':
    return 'not resolved'
  diff = _csv_value(row.get('mean_diff', '0'))
  better = row['model'] if (diff > 0) == higher_is_better else row['reference']
  return f'resolved: {better} better'


def _comparisons_section(comp: CsvFile, higher_is_better: bool) -> str:
  """comparisons.csv: each model against STD and the best SAT, with interval, p and verdict."""
  rows = []
  for i, r in enumerate(comp.rows):
    ref = esc(r.get('reference', '')) + (' (best SAT)' if r.get('role') == 'best SAT' else '')
    rows.append([esc(r.get('model', '')), ref, esc(r.get('figure', '')),
                 f'{comp.num(i, "seeds_model")} / {comp.num(i, "seeds_reference")}',
                 comp.num(i, 'mean_model'), comp.num(i, 'mean_reference'),
                 f'{comp.num(i, "mean_diff")} [{comp.num(i, "ci_low")}, {comp.num(i, "ci_high")}]',
                 comp.num(i, 'wilcoxon_p_holm'), comp.num(i, 'mde'),
                 esc(comparison_verdict(r, higher_is_better))])
  curve = comp.rows[0].get('curve', '') if comp.rows else ''
  samples = comp.num(0, 'samples') if comp.rows else '—'
  direction = 'higher' if higher_is_better else 'lower'
  return (f'<p>Paired comparisons on the {esc(curve)} curve, on the same {samples} samples; '
          f'difference = model − reference ({direction} is better); interval: 95% bootstrap over '
          'samples and seeds; p: two-sided Wilcoxon signed-rank, Holm-adjusted over the table; '
          'resolved = adjusted p &lt; 0.05 and an interval without 0; MDE: the smallest '
          'difference these samples resolve. The best SAT is picked on this split, which favours '
          'it.</p>'
          + _table(['model', 'reference', 'figure', 'seeds (model / reference)', 'model',
                    'reference', 'difference [95% CI]', 'p (Holm)', 'MDE', 'verdict'], rows,
                   {4, 5, 7, 8}))


def _sweep_alert(summary: CsvFile | None) -> str:
  """The red box at the top of a sweep's page when a run's masking check failed."""
  if summary is None:
    return ''
  failed = {}
  seeds = len({r.get('seed', '') for r in summary.rows})
  for r in summary.rows:
    if r.get('checks_failed'):
      label = r.get('model', '') + (f' (seed {r["seed"]})' if seeds > 1 else '')
      failed.setdefault((label, r.get('run', '')), r['checks_failed'].replace(';', ', '))
  if not failed:
    return ''
  items = ''.join(f'<li><a href="{esc(run)}/{PAGE}">{esc(label)}</a>: {esc(checks)}</li>'
                  for (label, run), checks in failed.items())
  return ('<div class="alert" id="masking-alert"><strong>Gradient masking suspected:</strong> '
          f'gradient-masking checks failed in {len(failed)} run(s); their robust figures may '
          f'overstate robustness (each run\'s page says what the check saw).<ul>{items}</ul>'
          '</div>\n')


def _higher_is_better(page_dir: str, plan: JsonFile | None) -> bool:
  """The primary metric's direction, from the first run report of the sweep."""
  names = [r.get('name', '') for r in (plan.get('runs', default=[]) if plan else []) or []]
  for name in names or sorted(os.listdir(page_dir)):
    path = os.path.join(page_dir, name, 'robustness.json')
    if os.path.isfile(path):
      return bool(_read_json(path).get('higher_is_better', True))
  return True


def sweep_page(page_dir: str) -> str:
  """The HTML of a sweep folder's page (see the module's docstring)."""
  def exists(name):
    return os.path.isfile(os.path.join(page_dir, name))
  plan = JsonFile(page_dir, PLAN_FILE) if exists(PLAN_FILE) else None
  summary = CsvFile(page_dir, 'summary.csv') if exists('summary.csv') else None
  comp = CsvFile(page_dir, 'comparisons.csv') if exists('comparisons.csv') else None
  sections = []
  if plan is not None:
    sections.append(('plan', 'The sweep\'s plan', _plan_section(page_dir, plan)))
  if summary is not None:
    sections.append(('summary', 'Summary', _summary_section(summary)))
  if comp is not None:
    sections.append(('comparisons', 'Paired comparisons and verdicts',
                     _comparisons_section(comp, _higher_is_better(page_dir, plan))))
  if exists('curves.png'):
    sections.append(('curves', 'Robustness curves', _figure_section(
        page_dir, 'curves.png', 'Metric against noise level, one line per model (bands: 95% '
        'intervals over seeds).')))
  if exists('training.png'):
    sections.append(('training', 'Training', _figure_section(
        page_dir, 'training.png', 'Learning curves on the evaluation split and the mean margins '
        'of the methods with margins.')))
  interprets = _interpret_files(page_dir)
  if interprets:
    sections.append(('interpret', 'Interpretability', _interpret_section(page_dir, interprets)))
  if plan is None:
    runs = [d for d in sorted(os.listdir(page_dir)) if _has_reports(os.path.join(page_dir, d))]
    links = ''.join(f'<li><a href="{esc(d)}/{PAGE}">{esc(d)}</a></li>' for d in runs)
    sections.append(('runs', 'Runs', f'<ul>{links}</ul>'))
  task = plan.get('shared', 'task', default='') if plan else ''
  title = f'Sweep {os.path.basename(os.path.abspath(page_dir))}' + (f': {task}' if task else '')
  subtitle = 'Written by robust_med.report from the sweep\'s report files; each run\'s own page ' \
             'is linked from the plan.'
  return _page(title, subtitle, _sweep_alert(summary), sections)


# --- Writing ---------------------------------------------------------------------------------

def is_sweep(workdir: str) -> bool:
  """A folder is a sweep's when it has a sweep.json or a summary.csv."""
  return any(os.path.isfile(os.path.join(workdir, f)) for f in SWEEP_REPORTS)


def _has_reports(workdir: str) -> bool:
  return os.path.isdir(workdir) and (
      is_sweep(workdir) or any(os.path.isfile(os.path.join(workdir, f)) for f in RUN_REPORTS)
      or bool(_interpret_files(workdir)))


def _run_dirs(workdir: str) -> list[str]:
  """The folders of a sweep's runs that hold reports (the plan's, else every subfolder's)."""
  path = os.path.join(workdir, PLAN_FILE)
  if os.path.isfile(path):
    names = [r.get('name', '') for r in _read_json(path).get('runs', [])]
  else:
    names = sorted(os.listdir(workdir))
  return [os.path.join(workdir, n) for n in names if n and _has_reports(os.path.join(workdir, n))]


def write(workdir: str) -> str | None:
  """Writes `workdir/report.html` (for a sweep also each run's page, and for a run the pages of
  its `eval/<split>/` reports) from the report files alone; returns its path, or None when the
  folder holds no report files."""
  if not _has_reports(workdir):
    return None
  if is_sweep(workdir):
    for run_dir in _run_dirs(workdir):
      write(run_dir)
    text = sweep_page(workdir)
  else:
    for evaluation in sorted(glob.glob(os.path.join(glob.escape(workdir), 'eval', '*'))):
      if os.path.isfile(os.path.join(evaluation, 'robustness.json')):
        write(evaluation)
    text = run_page(workdir)
  path = os.path.join(workdir, PAGE)
  reports.write_text(path, text)
  return path


def write_pages(folder: str) -> list[str]:
  """Rewrites every page that shows the reports of `folder` and returns their paths: its own,
  and for a folder `X/interpret/<name>/` or `X/eval/<split>/` also X's (a sweep's with its
  runs'). What a command calls once it has written its reports into `folder`."""
  folder = os.path.abspath(folder)
  holder = os.path.dirname(os.path.dirname(folder))
  kind = os.path.basename(os.path.dirname(folder))
  if not (kind in ('interpret', 'eval') and _has_reports(holder)):
    return [p for p in [write(folder)] if p]
  if kind == 'eval' and not is_sweep(holder):  # A run's page writes its eval/<split>/ pages.
    return [os.path.join(folder, PAGE), write(holder)]
  return [p for p in [write(folder), write(holder)] if p]


def build(workdir: str) -> str:
  """`write` for the command line: a missing folder or one without reports is a `UserError`."""
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir} does not exist: pass --workdir=<a run or sweep folder> '
                    '(the --workdir of robust_med.main, robust_med.evaluate or robust_med.sweep).')
  path = write(workdir)
  if path is None:
    raise UserError(f'{workdir} holds no report files ({", ".join(RUN_REPORTS + SWEEP_REPORTS)}): '
                    'pass the --workdir of a finished run or sweep, or run robust_med.main / '
                    'robust_med.evaluate / robust_med.sweep there first.')
  return path


def main(argv=None) -> None:
  """`python -m robust_med.report --workdir=DIR`: (re)builds DIR's report.html."""
  from absl import app, flags
  from robust_med import cli
  flags.DEFINE_string('workdir', None, 'A run folder (robust_med.main, robust_med.evaluate) or '
                      'a sweep folder (robust_med.sweep).')
  flags.mark_flags_as_required(['workdir'])

  @cli.guard
  def run(argv):
    cli.reject_positional(argv)
    print(f'Done: {os.path.abspath(build(flags.FLAGS.workdir))}')

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
