"""Reading TensorBoard event files back in tests, with TensorBoard's own reader (a test extra)."""

import os


def event_files(folder) -> list[str]:
  folder = str(folder)
  return sorted(os.path.join(folder, f) for f in os.listdir(folder) if 'tfevents' in f)


def summaries(folder) -> list[tuple[int, str, object]]:
  """Every summary value of the event files in `folder`, in file order: (step, tag, value) with
  value the scalar (float), or the `Summary.Value` itself for histograms, images, text, hparams."""
  from tensorboard.backend.event_processing import event_file_loader
  from tensorboard.compat.proto import event_pb2
  out = []
  for path in event_files(folder):  # As written: the raw loader does not migrate the values.
    for record in event_file_loader.RawEventFileLoader(path).Load():
      event = event_pb2.Event.FromString(record)
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        kind = value.WhichOneof('value')
        out.append((int(event.step), value.tag, value.simple_value if kind == 'simple_value'
                    else value))
  return out


def scalars(folder) -> dict[tuple[str, int], list[float]]:
  """{(tag, step): [every value written]} of the scalars in `folder`."""
  table: dict[tuple[str, int], list[float]] = {}
  for step, tag, value in summaries(folder):
    if isinstance(value, float):
      table.setdefault((tag, step), []).append(value)
  return table


def hparams_session(folder) -> dict:
  """The HParams plugin's session start info in `folder`: {hparam name: value}."""
  from tensorboard.plugins.hparams import plugin_data_pb2
  for _, _, value in summaries(folder):
    if isinstance(value, float) or value.metadata.plugin_data.plugin_name != 'hparams':
      continue
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    if data.HasField('session_start_info'):
      out = {}
      for name, v in data.session_start_info.hparams.items():
        kind = v.WhichOneof('kind')
        out[name] = getattr(v, kind)
      return out
  return {}
