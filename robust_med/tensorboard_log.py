"""TensorBoard event files for runs, reports and sweeps, written by tensorboardX (no TensorFlow).

Low floor: imports nothing of robust_med. Every writer owns one folder, `<workdir>/tb/<name>/`
(a TensorBoard "run"), and only process 0 writes:

- `tb/train/`: training (`Trainer` forwards every `metrics.jsonl` record with a step, the margin
  histograms, example figures and the config). A resumed run appends to it and drops whatever it
  already holds (every step at or below the last step on disk), so no step is written twice.
- `tb/robustness/`, `tb/shift/`, `tb/interpret/`: a report's curves and figures. A report is a
  snapshot: its folder is emptied and written anew each time the report is.
- `tb/hparams/` of each run of a sweep: the HParams plugin's session (the swept keys → final
  metrics), so `tensorboard --logdir=SWEEP_DIR` compares every run in one table.

The writer is tensorboardX (`SummaryWriter`), a maintained, TensorFlow-free event writer whose
only dependencies (protobuf, numpy, packaging) the core install already has; clu's
`metric_writers` would pull TensorFlow and TensorBoard's own writer the whole TensorBoard server.
A folder that cannot be written is one `warning:` line and the run goes on without events.

TensorBoard steps are integers: curves against a noise level are written at step = round(1000·ε)
(the x axis reads "ε × 1000"), curves against a corruption's severity at step = severity.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
import warnings

import numpy as np

TB_DIR = 'tb'
_WARNED: set[str] = set()  # tb/ folders already warned about in this process
EPS_SCALE = 1000  # Report curves: step = round(EPS_SCALE · ε).


def enabled(config, key: str = 'tensorboard') -> bool:
  """Whether `config.log.<key>` is on (`tensorboard`: write events at all; on by default, also
  for configs saved before the setting existed)."""
  log = config.get('log', None)
  on = bool(log.get(key, True)) if log is not None else True
  return on and (key == 'tensorboard' or enabled(config))


def folder(workdir: str, name: str) -> str:
  return os.path.join(workdir, TB_DIR, name)


def eps_step(eps: float) -> int:
  """The TensorBoard step of noise level `eps` on a report curve."""
  return int(round(EPS_SCALE * float(eps)))


def _is_main_process() -> bool:
  try:
    import jax
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except
    return True


def last_step(path: str) -> int:
  """The largest step of any summary in the event files of folder `path` (-1 when none)."""
  from tensorboardX.proto import event_pb2
  best = -1
  if not os.path.isdir(path):
    return best
  for name in sorted(os.listdir(path)):
    if 'tfevents' not in name:
      continue
    with open(os.path.join(path, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):  # TFRecord: length, its CRC, the record, the record's CRC.
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      start, end = pos + 12, pos + 12 + length
      if end + 4 > len(data):
        break  # A record cut short by a kill: ignored (TensorBoard ignores it too).
      event = event_pb2.Event()
      try:
        event.ParseFromString(data[start:end])
      except Exception:  # pylint: disable=broad-except
        break
      if event.HasField('summary'):
        best = max(best, int(event.step))
      pos = end + 4
  return best


def _png_size(png: bytes) -> tuple[int, int]:
  """(height, width) from a PNG's IHDR chunk."""
  width, height = struct.unpack('>II', png[16:24])
  return height, width


class Writer:
  """Event files in `<workdir>/tb/<name>/`. `fresh=True` empties the folder first (a report
  rewritten); otherwise an existing folder is appended to and steps at or below its last step are
  dropped (a resumed run). A no-op when `active` is False or outside process 0; a folder that
  cannot be written is one warning and a no-op."""

  def __init__(self, workdir: str, name: str, *, active: bool = True, fresh: bool = False):
    self.path = folder(workdir, name)
    self._writer = None
    self._open = False
    self.skip_through = -1
    if not (active and _is_main_process()):
      return
    try:
      if fresh and os.path.isdir(self.path):
        shutil.rmtree(self.path)
      os.makedirs(self.path, exist_ok=True)
      probe = os.path.join(self.path, '.writable')
      with open(probe, 'w'):
        pass
      os.remove(probe)
      self.skip_through = last_step(self.path)
      self._open = True  # The event file itself is created by the first write (`_file`).
    except OSError as e:
      root = os.path.dirname(self.path)
      if root not in _WARNED:  # One warning per run's tb/ folder, not one per writer.
        _WARNED.add(root)
        warnings.warn(f'cannot write TensorBoard events to {self.path} ({e.strerror or e}): '
                      'the run goes on without them; make the folder writable or set '
                      '--config.log.tensorboard=False.', UserWarning, stacklevel=2)

  @property
  def active(self) -> bool:
    return self._open

  def _keep(self, step: int) -> bool:
    return self._open and int(step) > self.skip_through

  def _file(self):
    """The SummaryWriter, created at the first write: a run that stops before writing anything
    (a refused resume) leaves no empty event file."""
    if self._writer is None:
      from tensorboardX import SummaryWriter
      # A file of its own, even when a resume starts within the second the last one did
      # (tensorboardX names files by the second and would overwrite).
      self._writer = SummaryWriter(logdir=self.path, flush_secs=30,
                                   filename_suffix=f'.{os.getpid()}.{time.time_ns()}')
    return self._writer

  def scalars(self, prefix: str, values: dict, step: int) -> None:
    """Every finite number of `values` as scalar `<prefix>/<key>` at `step` (strings, lists and
    booleans are left out)."""
    if not self._keep(step):
      return
    for key, value in values.items():
      if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        continue
      self._file().add_scalar(f'{prefix}/{key}' if prefix else key, float(value), int(step))

  def histogram(self, tag: str, values, step: int) -> None:
    if self._keep(step):
      values = np.asarray(values, np.float64).ravel()
      values = values[np.isfinite(values)]
      if values.size:
        self._file().add_histogram(tag, values, int(step), bins='auto')

  def png(self, tag: str, png: bytes, step: int) -> None:
    """An encoded PNG (a figure as written to disk) as image `tag`, without decoding it."""
    if not self._keep(step):
      return
    from tensorboardX.proto.summary_pb2 import Summary
    height, width = _png_size(png)
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    self._file()._get_file_writer().add_summary(  # pylint: disable=protected-access
        Summary(value=[Summary.Value(tag=tag, image=image)]), int(step))

  def figure_file(self, tag: str, path: str, step: int) -> None:
    """The PNG file at `path` (when it exists) as image `tag`."""
    if self._keep(step) and os.path.isfile(path):
      with open(path, 'rb') as f:
        self.png(tag, f.read(), step)

  def text(self, tag: str, text: str, step: int = 0) -> None:
    if self._keep(step):
      self._file().add_text(tag, text, int(step))

  def hparams(self, hparams: dict, metrics: dict) -> None:
    """One HParams plugin session in this folder: `hparams` (str, float, int or bool values) →
    `metrics` (scalars of the same names, step 0)."""
    if not self._open:
      return
    from tensorboardX.summary import hparams as hparams_summary
    exp, ssi, sei = hparams_summary(hparams, metrics)
    file_writer = self._file()._get_file_writer()  # pylint: disable=protected-access
    for summary in (exp, ssi, sei):
      file_writer.add_summary(summary)
    for key, value in metrics.items():
      self._file().add_scalar(key, float(value), 0)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
    self._writer, self._open = None, False


def train_record(writer: Writer, record: dict) -> None:
  """A `metrics.jsonl` record as scalars: 'train' → `train/<key>`, 'val' → `val/<key>`, 'xi' →
  `xi/<name>`, 'epoch' → `train/epoch_seconds`; records without a step (units, the offline
  copies' note) and the evaluation's rows (the robustness board has them) are left out."""
  kind, step = record.get('type'), record.get('step')
  if step is None or kind not in ('train', 'val', 'xi', 'epoch'):
    return
  body = {k: v for k, v in record.items() if k not in ('type', 'step', 'epoch')}
  if kind == 'epoch':
    writer.scalars('train', {'epoch_seconds': record['seconds']}, step)
  elif kind == 'xi':
    writer.scalars('', {k: v for k, v in body.items() if k.startswith('xi/')}, step)
  else:
    writer.scalars(kind, body, step)


def write_report_board(workdir: str, name: str, curves: dict[str, dict[int, dict]],
                       figures: dict[str, str], *, step: int = 0, text: str = '',
                       active: bool = True) -> None:
  """A report's board in `<workdir>/tb/<name>/`, written anew: `curves` maps a curve name to
  {TensorBoard step: {metric: value}} (scalars `<name>/<curve>/<metric>`), `figures` an image tag
  to a PNG file, drawn at `step` (the checkpoint's training step), `text` a note on the axes."""
  writer = Writer(workdir, name, active=active, fresh=True)
  if not writer.active:
    return
  for curve, rows in curves.items():
    for x, values in sorted(rows.items()):
      writer.scalars(f'{name}/{curve}', values, x)
  for tag, path in figures.items():
    writer.figure_file(f'{name}/{tag}', path, step)
  if text:
    writer.text(f'{name}/about', text, 0)
  writer.close()


def write_robustness(workdir: str, report: dict, active: bool = True) -> None:
  """robustness.json's curves (every attack and the worst case, every metric, x = 1000·ε) and
  the report's figures (robustness.png, examples.png, margins.png where present)."""
  curves = {}
  for curve, rows in (report.get('curves') or {}).items():
    curves[curve] = {eps_step(r['eps']): {k: v for k, v in r.items() if k != 'eps'}
                     for r in rows}
  step = int((report.get('checkpoint') or {}).get('step') or 0)
  figures = {f: os.path.join(workdir, f'{f}.png') for f in ('robustness', 'examples', 'margins')}
  norm = (report.get('attack') or {}).get('norm', '')
  write_report_board(workdir, 'robustness', curves, figures, step=step, active=active,
                     text=f'Curves against the noise level: step = round(1000 · ε) ({norm}); '
                          f'figures at the checkpoint\'s training step {step}.')


def write_sweep_hparams(run_dir: str, hparams: dict, metrics: dict, active: bool = True) -> None:
  """A sweep run's HParams session in `<run_dir>/tb/hparams/`, written anew."""
  writer = Writer(run_dir, 'hparams', active=active, fresh=True)
  writer.hparams(hparams, metrics)
  writer.close()
