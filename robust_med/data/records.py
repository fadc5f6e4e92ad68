"""A head's data splits as a TFDS dataset in array_record files, for data larger than memory.

One generic builder, `RobustMedRecords`, serves every head: its examples are the records of the
head's own loader (`Task.load_split`) for every split the dataset declares (`Task.splits`), one
feature per column with the column's dtype and per-record shape ('id' included), each stored as
raw bytes so that every value reads back bit for bit. Writing and reading need no TensorFlow:
`download_and_prepare` with ``file_format='array_record'`` serializes through the tf.train.Example
protos that tensorflow_datasets ships, and `as_data_source` decodes with numpy.

  python -m robust_med.data.records --config=configs/prostate_amat.py:synthetic --records_dir=DIR

writes DIR/robust_med_records/1.0.0/. Training reads it through grain when
``config.data.pipeline = 'grain'`` and ``config.data.records_dir = DIR`` (robust_med.data.pipeline).
The data settings that shaped the records are stored with them (`record_settings`); reading them
with a config whose settings differ is refused, naming the keys. Beside them, `splits.json` keeps
what a run needs to start without reading a split (`header`): each split's record count, its
columns' dtypes and per-record shapes, and the head's data info (`Task.load_split`'s second value,
a dataclass) — so a trainer reading records never holds a whole split in memory.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from robust_med import reports
from robust_med.errors import ConfigError, DataError

NAME = 'robust_med_records'
VERSION = '1.0.0'
SPLITS_FILE = 'splits.json'  # Per split: record count, column spec and the head's data info.
# Data keys that say where or how the records are read, not what they hold: a records folder
# serves a config whatever their values (config.data.root included, so that records prepared on
# one machine train on another that lacks the raw files).
_READ_KEYS = ('root', 'task_folder', 'eval_split', 'pipeline', 'records_dir', 'worker_count')

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
manual_dir is the dataset folder, config.data.root (for MSD: the folder with dataset.json,
imagesTr/ and labelsTr/; for the classification, landmark and detection heads: the folder their
README in shared/data describes). Synthetic datasets need none. The records are the head's own
loader's output (Task.load_split) for every split it declares, so download the data as the head's
README says and run
  python -m robust_med.data.records --config=<config file>[:variant] --records_dir=<DIR>
"""


def _tfds():
  import tensorflow_datasets as tfds  # Local import: the in-memory path does not need it.
  return tfds


def records_path(records_dir: str) -> str:
  """The folder of the prepared dataset inside `records_dir` (holds dataset_info.json)."""
  return os.path.join(os.fspath(records_dir), NAME, VERSION)


def record_settings(config) -> dict:
  """What shaped the records: the head, its own config sections and the data section (less the
  keys in `_READ_KEYS`), as JSON values."""
  from robust_med import config_base  # Local import keeps this module light.
  base = config_base.base_config()
  out = {'task': str(config.task),
         'data': {k: v for k, v in json.loads(config.data.to_json_best_effort()).items()
                  if k not in _READ_KEYS}}
  for section in sorted(config_base.task_config(config.task)):
    node = config.get(section)
    if section not in base and hasattr(node, 'to_json_best_effort'):
      out[section] = json.loads(node.to_json_best_effort())
  return out


def _differences(stored: dict, current: dict) -> list[str]:
  keys = []
  for section in sorted(set(stored) | set(current)):
    a, b = stored.get(section), current.get(section)
    if isinstance(a, dict) and isinstance(b, dict):
      keys += [f'{section}.{k}' for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    elif a != b:
      keys.append(section)
  return keys


def _features(arrays: Mapping[str, np.ndarray]):
  """One raw-bytes Tensor feature per column: per-record shape and dtype kept exactly."""
  tfds = _tfds()
  features = {}
  for key, value in arrays.items():
    value = np.asarray(value)
    if value.dtype.kind not in 'biuf':
      raise DataError(f'data column {key!r} has dtype {value.dtype}: records hold numeric and '
                      'boolean columns only; encode it as numbers in the head\'s load_split.')
    features[key] = tfds.features.Tensor(shape=value.shape[1:], dtype=value.dtype,
                                         encoding=tfds.features.Encoding.BYTES)
  return tfds.features.FeaturesDict(features)


def _column_spec(arrays: Mapping[str, np.ndarray]) -> dict:
  return {k: (np.asarray(v).dtype.str, tuple(np.shape(v)[1:])) for k, v in arrays.items()}


def _column_json(arrays: Mapping[str, np.ndarray]) -> dict:
  return {k: {'dtype': dtype, 'shape': list(shape)}
          for k, (dtype, shape) in _column_spec(arrays).items()}


def _split_header(arrays: Mapping[str, np.ndarray], info: Any) -> dict:
  """A split's `SPLITS_FILE` entry: record count, column spec and encoded data info."""
  return {'num_records': len(arrays['id']), 'columns': _column_json(arrays),
          'info': encode_info(info)}


def encode_info(info: Any) -> dict | None:
  """A head's data info (a dataclass of numbers, strings and tuples of them) as JSON: its class
  and fields. None for anything else (a run then reads the split's info from the head's loader)."""
  if not dataclasses.is_dataclass(info) or isinstance(info, type):
    return None
  cls = type(info)
  return {'class': f'{cls.__module__}:{cls.__qualname__}',
          'fields': json.loads(json.dumps(dataclasses.asdict(info)))}


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def decode_info(encoded: dict | None) -> Any:
  """The info `encode_info` wrote (lists back to tuples), or None."""
  if not encoded:
    return None
  module, _, name = encoded['class'].partition(':')
  try:
    cls = importlib.import_module(module)
    for part in name.split('.'):
      cls = getattr(cls, part)
    return cls(**{k: _tuples(v) for k, v in encoded['fields'].items()})
  except (ImportError, AttributeError, TypeError) as e:
    raise DataError(f'the records\' data info is a {encoded["class"]} that this robust_med cannot '
                    f'rebuild ({e}): prepare the records again with this version (python -m '
                    'robust_med.data.records ... --overwrite).') from None


class SplitHeader(NamedTuple):
  """What a run needs of a split without reading it: its record count, each column's
  (dtype, per-record shape), and the head's data info (None when the head's info is not a
  dataclass)."""
  num_records: int
  columns: dict[str, tuple[np.dtype, tuple[int, ...]]]
  info: Any


def _builder_class():
  """`RobustMedRecords`, defined on first use so that importing this module needs no tfds."""
  global _BUILDER
  if _BUILDER is not None:
    return _BUILDER
  tfds = _tfds()

  class RobustMedRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The records of a robust_med head's splits, whatever the head (see the module docstring).

    Built from a config: its head's `load_split` supplies the examples of each split and the
    first split fixes the features (every split must have the same columns, dtypes and shapes).
    Examples keep the loader's order (record i has position i), so ids map to positions.
    """

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): 'Columns of Task.load_split as raw-bytes tensors, id included.'}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, *, config, splits: Sequence[str] | None = None, **kwargs):
      from robust_med.tasks import get_task_class  # Local import keeps this module light.
      self._config = config
      self._task = get_task_class(config.task)(config)
      self._splits = tuple(splits) if splits else tuple(self._task.splits())
      if not self._splits:
        raise DataError(f'the {config.task!r} head declares no splits for data.name='
                        f'{config.data.get("name")!r}: nothing to prepare.')
      self._loaded: dict[str, dict[str, np.ndarray]] = {}
      self.split_headers: dict[str, dict] = {}  # Filled as each split is read.
      kwargs.setdefault('file_format', 'array_record')
      super().__init__(**kwargs)

    def _arrays(self, split: str) -> dict[str, np.ndarray]:
      if split in self._loaded:
        return self._loaded.pop(split)  # Held only until its examples are written.
      from robust_med.data.source import ArraySource
      arrays, info = self._task.load_split(split)
      arrays = ArraySource(arrays).arrays  # Checks the 'id' column and the lengths.
      self.split_headers[split] = _split_header(arrays, info)
      return arrays

    def _info(self):
      first = self._splits[0]
      self._loaded[first] = self._arrays(first)
      self._spec = _column_spec(self._loaded[first])
      return tfds.core.DatasetInfo(
          builder=self,
          description=f'robust_med {self._config.task} head, data.name='
                      f'{self._config.data.get("name")!r}: the records of Task.load_split.',
          features=_features(self._loaded[first]),
          disable_shuffling=True,  # Record i of a split stays at position i.
          metadata=tfds.core.MetadataDict(robust_med={
              'settings': record_settings(self._config),
              'root': str(self._config.data.get('root', '') or ''),
              'splits': list(self._splits)}),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # The head's loader reads config.data.root (= manual_dir) itself.
      return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split: str):
      arrays = self._arrays(split)
      spec = _column_spec(arrays)
      if spec != self._spec:
        diff = sorted(k for k in set(spec) | set(self._spec) if spec.get(k) != self._spec.get(k))
        raise DataError(f'split {split!r} differs from split {self._splits[0]!r} in column(s) '
                        f'{diff} ({ {k: spec.get(k) for k in diff} } vs '
                        f'{ {k: self._spec.get(k) for k in diff} }): records need one dtype and '
                        'per-record shape per column; make the head\'s load_split consistent '
                        '(for volumes: one grid for every split, data.volume_shape).')
      for i in range(len(arrays['id'])):
        yield i, {key: value[i] for key, value in arrays.items()}

  _BUILDER = RobustMedRecords
  return _BUILDER


_BUILDER = None


def prepare(config, records_dir: str, *, splits: Sequence[str] | None = None,
            overwrite: bool = False) -> dict[str, int]:
  """Writes the records of `splits` (default: every split the head declares) into `records_dir`
  and returns {split: number of records}. Records already there from the same settings are kept
  (nothing is rewritten); records from other settings are replaced only with `overwrite`."""
  tfds = _tfds()
  if not records_dir:
    raise ConfigError('no records folder: pass --records_dir=DIR (or set config.data.records_dir).')
  if os.path.exists(records_dir) and not os.path.isdir(records_dir):
    raise DataError(f'records_dir {records_dir} is a file: pass a folder (new, or one that holds '
                    'records).')
  path = records_path(records_dir)
  from robust_med.tasks import get_task_class  # Local import keeps this module light.
  wanted = tuple(splits) if splits else tuple(get_task_class(config.task)(config).splits())
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if os.path.exists(os.path.join(path, 'dataset_info.json')):
    stored = _read_metadata(path)
    diff = _differences(stored.get('settings', {}), record_settings(config))
    missing = [s for s in wanted if s not in stored.get('splits', ())]
    if not diff and not missing:  # Already there: nothing to write but missing headers.
      _complete_headers(config, path, wanted)
      return _counts(path)
    if not overwrite:
      what = (f'other settings (they differ in {", ".join(diff)})' if diff
              else f'other splits ({stored.get("splits")}, not {missing})')
      raise DataError(f'{path} holds records prepared with {what}: pass --overwrite to replace '
                      'them, or another --records_dir.')
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Deletes and rewrites them.
  os.makedirs(records_dir, exist_ok=True)
  root = str(config.data.get('root', '') or '')
  builder = _builder_class()(config=config, splits=wanted, data_dir=records_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=root or None, download_mode=mode))
  reports.write_json(os.path.join(path, SPLITS_FILE), builder.split_headers)
  return _counts(path)


def _complete_headers(config, path: str, splits: Sequence[str]) -> None:
  """Writes the headers of records prepared before `SPLITS_FILE` existed (from the loader)."""
  headers = _read_headers(path)
  if all(s in headers for s in splits):
    return
  from robust_med.data.source import ArraySource
  from robust_med.tasks import get_task_class  # Local import keeps this module light.
  task = get_task_class(config.task)(config)
  for split in splits:
    if split not in headers:
      arrays, info = task.load_split(split)
      arrays = ArraySource(arrays).arrays
      headers[split] = _split_header(arrays, info)
  reports.write_json(os.path.join(path, SPLITS_FILE), headers)


def _read_headers(path: str) -> dict:
  try:
    with open(os.path.join(path, SPLITS_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _counts(path: str) -> dict[str, int]:
  info = _tfds().builder_from_directory(path).info
  return {name: int(split.num_examples) for name, split in info.splits.items()}


def _read_metadata(path: str) -> dict:
  try:
    with open(os.path.join(path, 'metadata.json')) as f:
      return json.load(f).get('robust_med', {})
  except (OSError, ValueError):
    return {}


def _missing_message(records_dir: str, what: str) -> str:
  return (f'{what}: prepare them with python -m robust_med.data.records --config=<the config> '
          f'--records_dir={records_dir}, or set config.data.pipeline=memory.')


def open_builder(records_dir: str):
  """The read-only TFDS builder of the records in `records_dir` (DataError if there are none)."""
  if not records_dir:
    raise ConfigError("config.data.pipeline is 'grain' but config.data.records_dir is empty: set "
                      'it to the folder python -m robust_med.data.records wrote.')
  path = records_path(records_dir)
  if not os.path.isdir(records_dir):
    raise DataError(_missing_message(records_dir, f'records_dir {records_dir} does not exist'))
  if not os.path.exists(os.path.join(path, 'dataset_info.json')):
    raise DataError(_missing_message(records_dir, f'{records_dir} holds no robust_med records '
                                     f'(no {path}/dataset_info.json)'))
  return _tfds().builder_from_directory(path)


def open_split(config, split: str, records_dir: str | None = None):
  """Random access to the records of `split` (a TFDS array_record data source: ``len(source)``
  and ``source[i]`` -> dict of numpy arrays, record i having id i). Refuses records prepared with
  other data settings than `config`'s, and splits that were not prepared (DataError)."""
  records_dir = config.data.get('records_dir', '') if records_dir is None else records_dir
  builder = open_builder(records_dir)
  stored = builder.info.metadata.get('robust_med', {}) if builder.info.metadata else {}
  diff = _differences(stored.get('settings', {}), record_settings(config))
  if diff:
    raise DataError(f'the records in {records_dir} were prepared with other data settings (they '
                    f'differ in {", ".join(diff)}): prepare them again for this config (python -m '
                    f'robust_med.data.records ... --records_dir={records_dir} --overwrite) or '
                    'point config.data.records_dir at the matching folder.')
  splits = list(builder.info.splits.keys())
  if split not in splits:
    raise DataError(f'unknown split {split!r}: the records in {records_dir} have the splits '
                    f'{splits}.')
  return builder.as_data_source(split)


def header(config, split: str, records_dir: str | None = None) -> SplitHeader:
  """The `SplitHeader` of `split`, read from the records' `SPLITS_FILE` alone (no record is
  read). Checks the settings and the split as `open_split` does."""
  records_dir = config.data.get('records_dir', '') if records_dir is None else records_dir
  source = open_split(config, split, records_dir)
  entry = _read_headers(records_path(records_dir)).get(split)
  if entry is None:
    raise DataError(f'the records in {records_dir} have no {SPLITS_FILE} entry for split '
                    f'{split!r} (prepared by an older robust_med): run python -m '
                    f'robust_med.data.records ... --records_dir={records_dir} again to add it.')
  if int(entry['num_records']) != len(source):
    raise DataError(f'{SPLITS_FILE} in {records_dir} says split {split!r} has '
                    f'{entry["num_records"]} records but it holds {len(source)}: prepare the '
                    'records again (python -m robust_med.data.records ... --overwrite).')
  columns = {k: (np.dtype(v['dtype']), tuple(v['shape'])) for k, v in entry['columns'].items()}
  return SplitHeader(len(source), columns, decode_info(entry.get('info')))


def read_arrays(config, split: str, records_dir: str | None = None) -> dict[str, np.ndarray]:
  """Every record of `split` as columns (for tests and small sets: it reads all into memory)."""
  source = open_split(config, split, records_dir)
  rows = source.__getitems__(list(range(len(source))))
  if not rows:
    return {}
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def main(argv=None) -> None:
  from absl import app, flags
  from ml_collections import config_flags

  from robust_med import cli

  config_flags.DEFINE_config_file('config', None, 'Config file of the data, e.g. '
                                  'configs/prostate_amat.py or configs/busi_std.py:synthetic.',
                                  lock_config=True)
  flags.DEFINE_string('records_dir', '', 'Folder to write the records into (default: '
                      'config.data.records_dir).')
  flags.DEFINE_list('splits', None, 'Splits to prepare (default: every split the data declares).')
  flags.DEFINE_bool('overwrite', False, 'Replace records prepared with other settings.')
  flags.mark_flags_as_required(['config'])

  @cli.guard
  def run(argv):
    cli.reject_positional(argv)
    from robust_med import config_base
    f = flags.FLAGS
    config = f.config
    config_base.validate(config)
    records_dir = f.records_dir or config.data.records_dir
    if not records_dir:
      raise ConfigError('no records folder: pass --records_dir=DIR (or set '
                        '--config.data.records_dir=DIR).')
    _tfds().disable_progress_bar()
    counts = prepare(config, records_dir, splits=[s for s in f.splits or () if s] or None,
                     overwrite=f.overwrite)
    for split, n in counts.items():
      print(f'{split}: {n} records')
    print(f'Done: records in {os.path.abspath(records_path(records_dir))}; train from them with '
          f'--config.data.pipeline=grain --config.data.records_dir={records_dir}')

  app.run(run, argv=argv, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  main()
