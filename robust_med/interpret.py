"""Saliency comparison of several checkpoints: alignment with annotations, paired tests, attacks.

Do robust models look where clinicians look? Saliency of several checkpoints on the same
annotated images, its alignment with the annotation masks, a paired test, and how the saliency
changes under attack.

  python -m robust_med.interpret --workdirs=runs/busi/std,runs/busi/at,runs/busi/rtda \\
      --method=gradcam [--split=val] [--out=DIR] [--eps=0.00784] [--config.interpret.<key>=...]

For each checkpoint (parameters only, the latest step), on every image of the split whose
annotation mask (`config.interpret.mask_key`) is non-empty — images with an empty mask are left
out and counted — it computes the saliency map (`robust_med.saliency`) of the explained target
(`config.interpret.target`: the predicted class by default) on the clean image x and on
x̃ = PGD(x) at budget `eps` in `config.eval`'s norm, with `config.eval`'s steps, against that same
model; the alignment metrics (`robust_med.alignment`) of both; and the agreement of the two maps.
Every other model is compared with the first (the reference) on the same images: paired
Wilcoxon signed-rank and t-tests (scipy), the mean difference and Cohen's d_z with bootstrap
confidence intervals, and Holm-adjusted p-values over all the comparisons of the report. Each
model's attacked alignment is also compared with its clean alignment.

Writes `interpret.png` (rows: images; columns: the image with the mask's outline, then each
model's map on x, then on x̃), `interpret.md` (the tables) and, last, `interpret.json` (settings,
summaries, tests and every per-image value), each atomically, into `--out` (default:
`<parent of the first workdir>/interpret/<split>_<method>`). The data and interpret settings come
from the first workdir's config.json with the command's overrides; each model is built from its
own run's config.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np

from robust_med import alignment, attacks, cli, evaluate, reports, saliency, sharding, stats
from robust_med.data.source import evaluation_subset
from robust_med.errors import UserError


def middle_level(noise_levels) -> float:
  """The middle nonzero level of an evaluation grid (0 when it has none): `interpret.eps = 0`."""
  levels = evaluate.example_levels(noise_levels)
  return levels[1] if len(levels) > 1 else 0.0


def _data_identity(config) -> dict:
  d = config.data
  return {'name': d.name, 'root': os.path.abspath(os.path.expanduser(d.root)) if d.root else '',
          'seed': d.seed if d.name == 'synthetic' else None}


def check_same_head_and_data(workdirs, configs) -> None:
  """One `UserError` when the runs belong to different heads or were trained on different data."""
  first = configs[0]
  for w, c in zip(workdirs[1:], configs[1:]):
    if c.task != first.task:
      raise UserError(f'{workdirs[0]} is a {first.task!r} run but {w} is a {c.task!r} run: '
                      'compare checkpoints of one head.')
    a, b = _data_identity(first), _data_identity(c)
    if a != b:
      diff = ', '.join(f'{k} {a[k]!r} vs {b[k]!r}' for k in a if a[k] != b[k])
      raise UserError(f'{workdirs[0]} and {w} were trained on different images ({diff}): '
                      'compare models trained on the same data.')


def annotated_images(task, config, split: str) -> tuple[dict, object, dict]:
  """The records of `split` whose annotation mask is non-empty, the data info, and counts."""
  splits = task.splits()
  if split not in splits:
    raise UserError(f'unknown split {split!r}: the data ({config.data.root or config.data.name}) '
                    f'declares the splits {list(splits)}; pass --split=<one of them>.')
  data, info = task.load_split(split)
  key = config.interpret.mask_key
  where = f'the {split!r} split of {config.data.root or config.data.name}'
  if key not in data:
    raise UserError(f'{where} has no annotation masks (no {key!r} records; it has '
                    f'{sorted(data)}): saliency alignment needs masks — use data with masks (e.g. '
                    'a split-column npz with a masks array) or name them with '
                    '--config.interpret.mask_key.')
  masks = np.asarray(data[key])
  if masks.shape != data['image'].shape[:3]:
    raise UserError(f'{where}: the {key!r} masks have shape {masks.shape} but the images '
                    f'{data["image"].shape[:3]}: masks must be (N, H, W) like the images.')
  keep = alignment.annotated(masks)
  if not keep.any():
    raise UserError(f'every {key!r} mask of {where} is empty: there is nothing to align the '
                    'saliency with; use a split with annotated images.')
  counts = {'split_size': int(len(keep)), 'annotated': int(keep.sum()),
            'excluded_empty_mask': int((~keep).sum())}
  data = {k: v[keep] for k, v in data.items()}
  data = evaluation_subset(data, config.interpret.max_samples)
  counts['used'] = int(len(data['id']))
  fraction = np.asarray(data[key]).astype(bool).reshape(counts['used'], -1).mean(axis=1)
  counts['mask_fraction'] = _summary(fraction)
  return data, info, counts


class ModelSaliency:
  """One checkpoint's saliency maps and decisions on a set of images, clean and under attack."""

  def __init__(self, task, model, params, mesh, config, method: str, image_shape: tuple):
    self.task, self.model, self.params, self.mesh = task, model, params, mesh
    i = config.interpret
    self.which = i.target
    settings = saliency.SaliencySettings.from_config(i, method)
    layer = ''
    if settings.method in saliency.CAM_METHODS:
      layer = saliency.resolve_layer(model, params, (1, *image_shape), i.layer)
    self.layer = layer
    self.explainer = saliency.Explainer(model, task.saliency_score, settings, layer)
    self.pgd = attacks.PGDSettings.from_config(
        config.eval, clip=tuple(config.attack.clip) if config.attack.clip else None)
    self.evaluator = evaluate.Evaluator(task, model, mesh, self.pgd,
                                        batch_size=i.batch_size, seed=config.eval.seed,
                                        progress=False, chunk_steps=config.eval.chunk_steps)
    self._target = jax.jit(lambda p, batch, x: task.saliency_target(
        model.apply({'params': p}, x), batch, self.which))

  def run(self, data: dict, eps: float) -> dict[str, np.ndarray]:
    key = jax.random.key(self.evaluator.seed)

    def fn(b, batch):
      x = batch['image']
      out = {}
      views = [('clean', x)]
      if eps > 0:
        views.append(('attacked', self.evaluator.perturb(self.params, batch, eps,
                                                         jax.random.fold_in(key, b))))
      for name, v in views:
        target = self._target(self.params, batch, v)
        if self.explainer.settings.method == 'integrated_gradients':
          attributions, gap = self.explainer.attributions(self.params, v, target)
          out[f'{name}/map'] = saliency.attribution_map(attributions)
          out[f'{name}/ig_completeness_error'] = saliency.completeness_error(attributions, gap)
        else:
          out[f'{name}/map'] = self.explainer.maps(self.params, v, target)
        out[f'{name}/target'] = target
        out[f'{name}/stats'] = self.evaluator._stats(self.params, batch, v)
      return out

    return evaluate.per_sample_outputs(lambda b, batch: _flatten(fn(b, batch)), data,
                                       self.mesh, self.evaluator.batch_size)


def _flatten(tree: dict) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update({f'{k}/{kk}': vv for kk, vv in v.items()})
    else:
      out[k] = v
  return out


def _summary(values: np.ndarray) -> dict:
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return {'mean': float('nan'), 'median': float('nan'), 'sd': float('nan'), 'n': 0}
  return {'mean': float(v.mean()), 'median': float(np.median(v)),
          'sd': float(v.std(ddof=1)) if len(v) > 1 else 0.0, 'n': int(len(v))}


def compare(workdirs: list[str], configs: list, labels: list[str], *, method: str = '',
            split: str = '', eps: float | None = None, out: str = '', command: str = '') -> dict:
  """Runs the whole analysis (see the module docstring) and writes the report; returns it.
  `configs[0]` (the first run's config with the user's overrides) gives the data and interpret
  settings; `configs[k]` builds the model of `workdirs[k]`."""
  from robust_med.tasks import get_task_class
  config = configs[0]
  method = method or config.interpret.method
  split = split or config.data.eval_split
  if len(set(labels)) != len(labels):
    raise UserError(f'the model labels {labels} repeat: pass distinct --labels.')
  # Compare what the runs were trained on (their saved configs, not the overrides of this
  # command, which may point all of them at the user's own test data).
  check_same_head_and_data(workdirs, [cli.load_workdir_config(workdirs[0]), *configs[1:]])
  task = get_task_class(config.task)(config)
  probe = saliency.SaliencySettings.from_config(config.interpret, method)
  saliency.check_settings(probe)
  ks = alignment.check_top_k(config.interpret.top_k)
  data, info, counts = annotated_images(task, config, split)
  from robust_med import units
  config = units.resolve(config, data['image'].shape[1:])
  figure_rows(data, config)  # Bad figure ids are refused before any work.
  eps = middle_level(config.eval.noise_levels) if eps is None and not config.interpret.eps \
      else float(config.interpret.eps if eps is None else eps)
  if eps < 0:
    raise UserError(f'--eps={eps} is negative: noise budgets must be ≥ 0.')
  if not config.interpret.attack:
    eps = 0.0
  out = os.path.abspath(out or os.path.join(os.path.dirname(os.path.abspath(workdirs[0])),
                                            'interpret', f'{split}_{method}'))
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f'--out={out} is a file: pass a folder for the report.')
  mesh = sharding.make_mesh(config.mesh.num_devices)
  masks = np.asarray(data[config.interpret.mask_key]).astype(bool)
  results, models = {}, {}
  for w, c, label in zip(workdirs, configs, labels):
    model, params, meta, step = evaluate.restore_model(
        task, w, info, data['image'], mesh, what=f'The {split!r} split of the data', config=c)
    runner = ModelSaliency(task, model, params, mesh, config, method, data['image'].shape[1:])
    attacked = f', clean and under {runner.pgd.describe()["name"]} at eps={eps:.4g}' if eps else ''
    layer = f', layer {runner.layer}' if runner.layer else ''
    print(f'{label}: saliency of {counts["used"]} images ({method}{layer}{attacked})',
          file=sys.stderr)
    raw = runner.run(data, eps)
    per = {'checkpoint': {'workdir': os.path.abspath(w), 'step': int(step),
                          'method': meta.get('method', '')}, 'layer': runner.layer}
    for view in ('clean', 'attacked') if eps > 0 else ('clean',):
      sample_stats = {k.split('/', 2)[2]: v for k, v in raw.items()
                      if k.startswith(f'{view}/stats/')}
      per[view] = {'metrics': alignment.alignment_metrics(raw[f'{view}/map'], masks, ks),
                   'target': raw[f'{view}/target'],
                   'sample_score': np.asarray(task.sample_scores(sample_stats), np.float64),
                   'task_metrics': task.summarize(sample_stats)}
      if f'{view}/ig_completeness_error' in raw:
        per[view]['ig_completeness_error'] = raw[f'{view}/ig_completeness_error']
    if eps > 0:
      per['stability'] = alignment.map_agreement(raw['clean/map'], raw['attacked/map'], ks[0])
    models[label] = raw
    results[label] = per
  report = build_report(task, config, results, labels, counts, data, method, split, eps, ks,
                        runner.pgd, command)
  os.makedirs(out, exist_ok=True)
  if config.interpret.figure_images or config.interpret.figure_ids:  # 0 and no ids: no figure
    draw_figure(task, info, data, masks, models, results, labels, config, eps, report,
                os.path.join(out, 'interpret.png'))
  reports.write_text(os.path.join(out, 'interpret.md'), markdown(report))
  reports.write_json(os.path.join(out, 'interpret.json'), report)
  write_board(out, report, config, eps)
  from robust_med import report as report_page
  report_page.write_pages(out)
  report['out'] = out
  return report


def write_board(out: str, report: dict, config, eps: float) -> None:
  """interpret.json's summary in TensorBoard (`out/tb/interpret/`): per model and view (clean,
  attacked) the mean of each alignment metric and the task's metrics, at step = round(1000·ε),
  and interpret.png."""
  from robust_med import tensorboard_log
  curves = {}
  for model, summary in report['summary'].items():
    for view in ('clean', 'attacked'):
      if view in summary:
        values = {f'alignment/{m}': v['mean']
                  for m, v in summary[view].get('alignment', {}).items()}
        values.update({f'task/{m}': v for m, v in summary[view].get('task_metrics', {}).items()})
        curves[f'{model}/{view}'] = {tensorboard_log.eps_step(eps): values}
  tensorboard_log.write_report_board(
      out, 'interpret', curves, {'interpret': os.path.join(out, 'interpret.png')},
      text=f'Mean alignment and task metrics per model and view at step = round(1000 · ε), '
           f'ε = {eps:g}.', active=tensorboard_log.enabled(config))


def build_report(task, config, results, labels, counts, data, method, split, eps, ks, pgd,
                 command) -> dict:
  i = config.interpret
  names = alignment.metric_names(ks)
  views = ('clean', 'attacked') if eps > 0 else ('clean',)
  ci = dict(n_resamples=i.bootstrap_resamples, confidence=i.confidence, seed=i.seed)
  summary = {}
  for label in labels:
    r = results[label]
    entry = {'checkpoint': r['checkpoint'], 'layer': r['layer']}
    for view in views:
      entry[view] = {'alignment': {m: _summary(r[view]['metrics'][m]) for m in names},
                     'task_metrics': r[view]['task_metrics']}
      if 'ig_completeness_error' in r[view]:
        # |Σ attributions − (score(x) − score(baseline))| / |score(x) − score(baseline)|.
        entry[view]['ig_completeness_error'] = _summary(r[view]['ig_completeness_error'])
    if eps > 0:
      entry['stability'] = {m: _summary(v) for m, v in r['stability'].items()}
    summary[label] = entry
  tests = []
  ref = labels[0]
  for view in views:
    for other in labels[1:]:
      for m in names:
        tests.append({'kind': 'model', 'condition': view, 'a': ref, 'b': other, 'metric': m,
                      **stats.paired_comparison(results[ref][view]['metrics'][m],
                                                results[other][view]['metrics'][m], **ci)})
  if eps > 0:
    for label in labels:
      for m in names:
        tests.append({'kind': 'attack', 'condition': 'attacked vs clean', 'a': 'clean',
                      'b': 'attacked', 'model': label, 'metric': m,
                      **stats.paired_comparison(results[label]['clean']['metrics'][m],
                                                results[label]['attacked']['metrics'][m], **ci)})
  for key in ('wilcoxon_p', 't_p'):
    adjusted = stats.holm([t[key] for t in tests])
    for t, p in zip(tests, adjusted):
      t[f'{key}_holm'] = float(p)
  per_image = {'id': np.asarray(data['id']).tolist()}
  for label in labels:
    r = results[label]
    per_image[label] = {view: {**{m: r[view]['metrics'][m].tolist() for m in names},
                               'target': np.asarray(r[view]['target']).tolist(),
                               'sample_score': r[view]['sample_score'].tolist()}
                        for view in views}
    if eps > 0:
      per_image[label]['stability'] = {m: v.tolist() for m, v in r['stability'].items()}
  return {
      'task': task.name, 'command': command, 'method': method,
      'settings': {**i.to_dict(), 'method': method, 'top_k': list(ks)},
      'saliency': saliency.DESCRIPTIONS[method],
      'score': (task.saliency_score.__doc__ or "the head's saliency score").strip().rstrip('.'),
      'interpolation': f'{saliency.INTERPOLATION} (jax.image.resize, half-pixel centres)',
      'alignment_rules': alignment.__doc__.strip(),
      **evaluate.data_provenance(config, split, counts['split_size']),
      'counts': counts, 'metrics': names, 'reference': ref, 'models': labels,
      'attack': {**pgd.describe(), 'eps': eps} if eps > 0 else None,
      'summary': summary, 'tests': tests,
      'tests_rule': ('paired over the same images, b − a; two-sided Wilcoxon signed-rank '
                     '(scipy.stats.wilcoxon, zero differences dropped) and paired t-test '
                     '(scipy.stats.ttest_rel); effect sizes: the mean difference and Cohen\'s d_z '
                     f'with {i.confidence:.0%} bootstrap intervals (scipy.stats.bootstrap, BCa, '
                     f'{i.bootstrap_resamples} resamples); *_holm: Holm-adjusted over every test '
                     'of this report'),
      'per_image': per_image,
  }


def _fmt(v: float, digits: int = 3) -> str:
  return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else f'{v:.{digits}f}'


def _p(v: float) -> str:
  if v is None or math.isnan(v):
    return 'n/a'
  return f'{v:.2g}' if v >= 1e-4 else f'{v:.1e}'


def markdown(report: dict) -> str:
  """interpret.md: the settings, the alignment tables and the paired tests."""
  names, labels = report['metrics'], report['models']
  c = report['counts']
  lines = [f'# Saliency alignment: {report["method"]} on the {report["split"]} split', '']
  if report['command']:
    lines += ['```', report['command'], '```', '']
  lines += [f'Data: {report["data"]["root"] or report["data"]["settings"]["name"]}, split '
            f'{report["split"]}: {c["split_size"]} images, {c["annotated"]} with a non-empty '
            f'annotation mask, {c["excluded_empty_mask"]} excluded (empty mask); {c["used"]} used.',
            f'Explained target: {report["settings"]["target"]}; score: {report["score"]}; '
            f'saliency: {report["saliency"]}'
            + (f' (layer {", ".join(sorted({report["summary"][m]["layer"] for m in labels}))})'
               if report['method'] in saliency.CAM_METHODS else '') + '.']
  a = report['attack']
  if a:
    lines.append(f'Attacked images: {a["name"]} ({a["norm"].upper()}, ε = {a["eps"]:.4g}, '
                 f'{a["steps"]} steps) against each model itself.')
  lines.append('')
  views = ('clean', 'attacked') if a else ('clean',)
  for view in views:
    lines += [f'## Alignment on {"clean" if view == "clean" else "attacked"} images (mean ± sd)',
              '', '| model | ' + ' | '.join(names) + ' | task metrics |',
              '|---' * (len(names) + 2) + '|']
    for m in labels:
      s = report['summary'][m][view]
      task_metrics = ', '.join(f'{k} {_fmt(v)}' for k, v in s['task_metrics'].items()
                               if '/' not in k)
      lines.append(f'| {m} | ' + ' | '.join(
          f'{_fmt(s["alignment"][n]["mean"])} ± {_fmt(s["alignment"][n]["sd"], 2)}'
          for n in names) + f' | {task_metrics} |')
    errors = [report['summary'][m][view].get('ig_completeness_error') for m in labels]
    if all(errors):
      lines += ['Integrated-gradients completeness error |Σ attributions − (score(x) − '
                'score(baseline))| / |score(x) − score(baseline)|, median per model: '
                + ', '.join(f'{m} {e["median"]:.2%}' for m, e in zip(labels, errors)) + '.', '']
    lines.append('')
  if a:
    lines += ['## Explanation stability: clean vs attacked maps of each model (mean)', '',
              '| model | ' + ' | '.join(report['summary'][labels[0]]['stability']) + ' |',
              '|---' * (1 + len(report['summary'][labels[0]]['stability'])) + '|']
    for m in labels:
      st = report['summary'][m]['stability']
      lines.append(f'| {m} | ' + ' | '.join(_fmt(v['mean']) for v in st.values()) + ' |')
    lines.append('')
  lines += ['## Paired tests', '', report['tests_rule'] + '.', '',
            '| condition | comparison | metric | mean a | mean b | mean diff [CI] | d_z [CI] | '
            'Wilcoxon p (Holm) | t-test p (Holm) | n |', '|---' * 10 + '|']
  for t in report['tests']:
    comp = f'{t["b"]} vs {t["a"]}' if t['kind'] == 'model' else f'{t["model"]}: attacked vs clean'
    lo, hi = t['mean_diff_ci']
    dlo, dhi = t['cohens_dz_ci']
    lines.append(
        f'| {t["condition"]} | {comp} | {t["metric"]} | {_fmt(t["mean_a"])} | '
        f'{_fmt(t["mean_b"])} | {t["mean_diff"]:+.3f} [{_fmt(lo)}, {_fmt(hi)}] | '
        f'{_fmt(t["cohens_dz"], 2)} [{_fmt(dlo, 2)}, {_fmt(dhi, 2)}] | '
        f'{_p(t["wilcoxon_p"])} ({_p(t["wilcoxon_p_holm"])}) | {_p(t["t_p"])} '
        f'({_p(t["t_p_holm"])}) | {t["n"]} |')
  lines.append('')
  return '\n'.join(lines)


def figure_rows(data: dict, config) -> np.ndarray:
  """Indices of the images drawn: `figure_ids` (record ids), else a random choice by seed."""
  ids = np.asarray(data['id'])
  wanted = tuple(int(i) for i in config.interpret.figure_ids)
  if wanted:
    missing = [i for i in wanted if i not in set(ids.tolist())]
    if missing:
      raise UserError(f'config.interpret.figure_ids {missing} are not ids of annotated images of '
                      'the split: pick ids from interpret.json\'s per_image.id.')
    return np.array([int(np.flatnonzero(ids == i)[0]) for i in wanted])
  n = min(config.interpret.figure_images, len(ids))
  rng = np.random.default_rng(config.interpret.seed)
  return np.sort(rng.choice(len(ids), size=n, replace=False))


def draw_figure(task, info, data, masks, models, results, labels, config, eps, report,
                path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from robust_med.tasks.base import show_image
  rows = figure_rows(data, config)
  views = ('clean', 'attacked') if eps > 0 else ('clean',)
  cols = 1 + len(labels) * len(views)
  names = list(getattr(info, 'class_names', ()) or ())
  target_name = lambda t: names[t] if 0 <= t < len(names) else str(t)  # noqa: E731
  k0 = report['metrics'][0]
  fig, axes = plt.subplots(len(rows), cols, figsize=(1.9 * cols, 2.0 * len(rows) + 0.6),
                           squeeze=False)
  for r, i in enumerate(rows):
    image = np.asarray(data['image'][i])
    show_image(axes[r][0], image)
    axes[r][0].contour(masks[i], levels=[0.5], colors='lime', linewidths=0.8)
    axes[r][0].set_title(f'id {int(data["id"][i])}: mask', fontsize=7)
    col = 1
    for view in views:
      for label in labels:
        ax = axes[r][col]
        smap = saliency.normalise(models[label][f'{view}/map'][i:i + 1])[0]
        show_image(ax, image)
        ax.imshow(smap, cmap='jet', alpha=0.45, vmin=0, vmax=1)
        ax.contour(masks[i], levels=[0.5], colors='white', linewidths=0.6)
        m = results[label][view]['metrics']
        t = int(results[label][view]['target'][i])
        ax.set_title(f'{label} {view}: {target_name(t)}\n{k0} {m[k0][i]:.2f} · energy '
                     f'{m["energy"][i]:.2f}', fontsize=6)
        col += 1
  attack = report['attack']
  fig.suptitle(f'{report["method"]} saliency (jet, each map scaled to its max) with the annotation '
               f'outline; split {report["split"]}'
               + (f'; attacked: {attack["name"]} {attack["norm"].upper()} ε={eps:.4g}' if attack
                  else ''), fontsize=8)
  fig.tight_layout()
  reports.save_figure(fig, path)


def main(argv=None) -> None:
  """`python -m robust_med.interpret`: parses the flags and compares the runs' saliency; bad input
  ends in one `error:` line with exit status 2."""
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config of the data and interpret settings '
                                  '(default: the first run\'s own config.json); override keys '
                                  'with --config.<key>=<value>, e.g. '
                                  '--config.interpret.top_k="(5,10)".', lock_config=True)
  flags.DEFINE_list('workdirs', None, 'Workdirs of robust_med.main runs of one head on the same '
                    'data; the first is the reference of the paired tests.')
  flags.DEFINE_list('labels', None, 'Names of the models in the report (default: the workdirs\' '
                    'folder names).')
  flags.DEFINE_enum('method', None, list(saliency.METHODS), 'Saliency method (default: '
                    'config.interpret.method).')
  flags.DEFINE_string('split', '', 'Split to analyse (default: config.data.eval_split, i.e. val).')
  flags.DEFINE_string('out', '', 'Folder for interpret.json/md/png (default: <parent of the first '
                      'workdir>/interpret/<split>_<method>).')
  flags.DEFINE_float('eps', None, 'Budget of the attack the saliency is also measured under '
                     '(default: config.interpret.eps; 0 there = the middle level of '
                     'config.eval.noise_levels).')
  flags.mark_flags_as_required(['workdirs'])

  @cli.guard
  def main(argv):
    cli.reject_positional(argv)
    f = flags.FLAGS
    workdirs = [w for w in f.workdirs if w]
    if not workdirs:
      raise UserError('--workdirs is empty: pass one or more run folders, e.g. '
                      '--workdirs=runs/busi/std,runs/busi/at.')
    labels = list(f.labels) if f.labels else [os.path.basename(os.path.normpath(w))
                                              for w in workdirs]
    if len(labels) != len(workdirs):
      raise UserError(f'--labels has {len(labels)} names for {len(workdirs)} workdirs: pass one '
                      'per workdir.')
    config = f.config
    if f.eps is not None and f.eps < 0:
      raise UserError(f'--eps={f.eps} is negative: noise budgets must be ≥ 0.')
    cli.prepare(config)
    for w in workdirs[1:]:  # Another head's config.json has keys this head does not know.
      path = os.path.join(w, 'config.json')
      if not os.path.isfile(path):
        raise UserError(f'{path} not found: pass the --workdirs of robust_med.main runs.')
      with open(path) as fh:
        task = json.load(fh).get('task', 'segmentation')
      if task != config.task:
        raise UserError(f'{workdirs[0]} is a {config.task!r} run but {w} is a {task!r} run: '
                        'compare checkpoints of one head.')
    configs = [config] + [cli.load_workdir_config(w) for w in workdirs[1:]]
    report = compare(workdirs, configs, labels, method=f.method or '', split=f.split,
                               eps=f.eps, out=f.out, command=' '.join(
                                   ['python -m robust_med.interpret', *sys.argv[1:]]))
    print(markdown(report))
    figure = ', interpret.png' if config.interpret.figure_images or config.interpret.figure_ids \
        else ''
    print(f'Done: interpret.json, interpret.md{figure} in {report["out"]}')

  def parse(argv):
    argv = list(argv)
    if not any(a == '--config' or a.startswith('--config=') for a in argv[1:]):
      first = next((a[len('--workdirs='):].split(',')[0] for a in argv[1:]
                    if a.startswith('--workdirs=')), '')
      if first:
        if not os.path.isfile(os.path.join(first, 'config.json')):
          cli.fail(f'{os.path.join(first, "config.json")} not found: pass the --workdirs of '
               'robust_med.main runs.')
        argv = [argv[0], f'--config={cli.SAVED_CONFIG}:{first}', *argv[1:]]
    return cli.parse_flags(argv)

  app.run(main, argv=argv, flags_parser=parse)


if __name__ == '__main__':
  main()
