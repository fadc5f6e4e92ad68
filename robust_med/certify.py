"""Certified robustness by randomized smoothing, a lower bound beside the attacks' upper bound.

Any head that says what its certified metric is (`Task.smoothing`) can be certified:

  python -m robust_med.certify --workdir=DIR [--split=val] [--config.data.root=PATH] \
      [--sigma=0.25] [--n=1000] [--n0=100] [--alpha=0.001] [--radii=0,0.25,0.5] [--out=DIR2]

restores the parameters of DIR's checkpoint and certifies the smoothed model (the base model's
answers aggregated over Gaussian noise of std σ: `robust_med.smoothing`) on every image of the
split (or `--max_samples` of them), and writes into `DIR/certify/<split>/` (or `--out`):

- `certify.json`: the settings; per radius r (L2, model input units) the certified metric (the
  metric every perturbation of norm ≤ r leaves the smoothed model at or better, with probability
  ≥ 1 − α per image) and the abstained share; the smoothed model's own metric; per image, its
  certified metric at each radius (and, for one answer per image, Cohen et al.'s radius);
- `certify.png`: certified metric against radius, with the smoothed model's metric and, when the
  run's `robustness.json` is in L2, the base model's attacked worst case on the same axes;
- `certify_examples.png`: a few images certified at r = 0 and the consistency check's radii, as
  the head draws a certificate (`Task.draw_certified`).

The noise of image i is drawn from the key (`--seed`, id i), so a certificate is reproducible
image by image. σ should be the σ the model was trained with (`config.method.noise_sigma`); a
different σ is certified anyway, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from robust_med import attacks, cli, errors, evaluate, methods, sharding, smoothing
from robust_med.data.source import evaluation_subset
from robust_med.reports import metric_label, save_figure, write_json
from robust_med.tasks.base import within_image


def copies_flat(x: jax.Array) -> jax.Array:
  """(B, m, ...) copies as one batch (B·m, ...), image-major: the batch axis's sharding carries
  over (a vmapped copies axis in front would make the model's reshape gather the batch)."""
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class Sampler:
  """Draws the base model's answers on noisy copies of each image of a device batch, `chunk`
  copies per image at a time, jitted on the mesh (the batch axis stays sharded: each image's
  copies follow it, `copies_flat`)."""

  def __init__(self, task, model, sigma: float, chunk: int, seed: int = 0):
    self.task, self.model, self.sigma, self.chunk, self.seed = task, model, sigma, chunk, seed
    self._votes = jax.jit(self._votes_impl, static_argnames=('stream', 'count', 'num'))
    self._draws = jax.jit(self._draws_impl, static_argnames=('stream', 'count'))

  def _answers(self, params, batch, stream: int, start, count: int) -> jax.Array:
    keys = smoothing.image_keys(self.seed, batch['id'], stream)
    image = batch['image']
    x = jnp.moveaxis(smoothing.noisy_copies(keys, image, self.sigma, start, count), 0, 1)
    if 'in_image' in batch:  # Noise on the samples' own pixels only, as the attacks perturb.
      x = jnp.where(batch['in_image'][:, None, ..., None], x, image[:, None])
    answers = self.task.smoothing_answers(self.model.apply({'params': params},
                                                           copies_flat(x)))
    return answers.reshape(image.shape[0], count, *answers.shape[1:])  # (B, count, *E)

  def _votes_impl(self, params, batch, start, *, stream, count, num):
    answers = self._answers(params, batch, stream, start, count)
    return jnp.sum(jax.nn.one_hot(answers, num, dtype=jnp.int32), axis=1)

  def _draws_impl(self, params, batch, start, *, stream, count):
    return self._answers(params, batch, stream, start, count)

  def votes(self, params, batch, n: int, stream: int, num: int) -> jax.Array:
    """Counts (B, *E, num) of each answer over n noisy copies."""
    total = 0
    for start in range(0, n, self.chunk):
      total = total + self._votes(params, batch, start, stream=stream,
                                  count=min(self.chunk, n - start), num=num)
    return total

  def draws(self, params, batch, n: int, stream: int) -> jax.Array:
    """The answers (B, n, *E) on n noisy copies."""
    parts = [self._draws(params, batch, start, stream=stream, count=min(self.chunk, n - start))
             for start in range(0, n, self.chunk)]
    return jnp.concatenate(parts, axis=1)


_SAMPLERS: dict = {}


def sampler_for(task, model, sigma: float, chunk: int, seed: int = 0) -> Sampler:
  """The `Sampler` of these settings, made once: its jitted functions (and their compilations)
  serve the certificate, the consistency check and every later call alike. The last few are
  kept (each holds its task and model, so the ids in the key stay theirs)."""
  key = (id(task), id(model), float(sigma), int(chunk), int(seed))
  if key not in _SAMPLERS:
    while len(_SAMPLERS) >= 4:
      _SAMPLERS.pop(next(iter(_SAMPLERS)))
    _SAMPLERS[key] = Sampler(task, model, sigma, chunk, seed)
  return _SAMPLERS[key]


def sample(task, model, params, data: dict, mesh, settings: smoothing.SmoothingSettings, *,
           seed: int = 0, batch_size: int = 8) -> dict[str, np.ndarray]:
  """The Monte-Carlo evidence of every image of `data`: for a 'vote' head the counts of the
  n₀ selection copies ('select') and of the n estimation copies ('counts'), (N, *E, C), drawn
  from separate noise; for a 'median' head the answers of the n copies ('samples', (N, n, *E))."""
  if task.smoothing not in ('vote', 'median'):
    raise task._not_certifiable()
  sampler = sampler_for(task, model, settings.sigma, settings.chunk, seed)
  if task.smoothing == 'vote':
    like = jax.eval_shape(lambda x: model.apply({'params': params}, x),
                          jax.ShapeDtypeStruct((1, *data['image'].shape[1:]), jnp.float32))
    num = task.num_answers(like)

    def fn(_, batch):
      return {'select': sampler.votes(params, batch, settings.n0, 0, num),
              'counts': sampler.votes(params, batch, settings.n, 1, num)}
  else:
    def fn(_, batch):
      return {'samples': sampler.draws(params, batch, settings.n, 1)}
  return evaluate.per_sample_outputs(fn, data, mesh, batch_size)


def default_radii(sigma: float, attacked_levels=()) -> list[float]:
  """0 to 4σ in steps of σ/4, with the attacked curve's budgets in that range."""
  grid = {round(sigma * k / 4, 10) for k in range(17)}
  grid |= {float(e) for e in attacked_levels if 0 <= e <= 4 * sigma}
  return sorted(grid)


def certified_at(task, evidence: dict[str, np.ndarray], settings, radii) -> list[dict]:
  """Each image's certificate at each radius, in the form `Task.certified_metric` reads: for a
  'vote' head {'answer', 'num_answers'} (Cohen et al.'s CERTIFY for one answer per image,
  SegCertify for many), for a 'median' head {'lower', 'upper'} (every bound of an image at once:
  α split over its 2·answers bounds, Bonferroni)."""
  radii = [float(r) for r in radii]
  if task.smoothing == 'vote':
    select, counts = evidence['select'], evidence['counts']
    num = counts.shape[-1]
    if counts.ndim == 2:  # One answer per image: CERTIFY.
      answer, radius, _ = smoothing.certify_votes(select, counts, settings.sigma, settings.alpha)
      per_radius = [np.where((answer != smoothing.ABSTAIN) & (radius >= r), answer,
                             smoothing.ABSTAIN) for r in radii]
    else:  # One answer per element: SegCertify.
      per_radius = smoothing.certify_elements(select, counts, settings.sigma, settings.alpha,
                                              radii, settings.correction,
                                              evidence.get('valid'))
    return [{'answer': a, 'num_answers': num} for a in per_radius]
  samples = np.moveaxis(evidence['samples'], 1, 0)  # (n, N, *E)
  alpha = settings.alpha / (2 * int(np.prod(samples.shape[2:])))
  out = []
  for r in radii:
    lower, upper = smoothing.median_bounds(samples, settings.sigma, r, alpha)
    out.append({'lower': lower, 'upper': upper})
  return out


def unsettled(certified: dict, valid=None) -> np.ndarray:
  """Per image, the share of its answers without a certificate: abstained votes, or unbounded
  medians."""
  if 'answer' in certified:
    gone = certified['answer'] == smoothing.ABSTAIN
  else:
    gone = ~(np.isfinite(certified['lower']) & np.isfinite(certified['upper']))
  if gone.ndim == 1:
    return gone.astype(np.float64)
  ok = np.ones(gone.shape, bool) if valid is None else np.asarray(valid, bool)
  axes = tuple(range(1, gone.ndim))
  return (gone & ok).sum(axis=axes) / np.maximum(ok.sum(axis=axes), 1)


def smoothed_answers(task, evidence: dict[str, np.ndarray]) -> dict:
  """The smoothed model's own answers, without a test: the majority vote or the median."""
  if task.smoothing == 'vote':
    return {'answer': evidence['counts'].argmax(axis=-1),
            'num_answers': evidence['counts'].shape[-1]}
  med = smoothing.median(np.moveaxis(evidence['samples'], 1, 0))
  return {'lower': med, 'upper': med}


def certificates(task, evidence: dict[str, np.ndarray], data: dict, settings, radii) -> dict:
  """Per radius, each image's certified metric (`Task.certified_metric`) and unsettled share
  (abstained or unbounded answers); the smoothed model's own metric per image; and, for one
  answer per image, Cohen et al.'s certified radius per image."""
  evidence = dict(evidence, valid=task.answer_mask(data))
  out: dict = {'radii': [float(r) for r in radii]}
  out['smoothed'] = task.certified_metric(smoothed_answers(task, evidence), data)
  if task.smoothing == 'vote' and evidence['counts'].ndim == 2:
    answer, radius, p_lower = smoothing.certify_votes(evidence['select'], evidence['counts'],
                                                      settings.sigma, settings.alpha)
    out.update(answer=answer, radius=radius, p_lower=p_lower)
  metric, abstained = [], []
  for certified in certified_at(task, evidence, settings, out['radii']):
    metric.append(task.certified_metric(certified, data))
    abstained.append(unsettled(certified, evidence['valid']))
  out['metric'] = np.stack(metric, axis=1)        # (N, R)
  out['abstained'] = np.stack(abstained, axis=1)  # (N, R)
  return out


# --- The consistency check: the certificate against an attack on the smoothed model ----------

class SmoothedAttack:
  """L2 PGD on the smoothed model: it ascends the head's loss averaged over `samples` fixed noise
  draws per image (an expectation over transformations; Salman et al. 2019 attack the smoothed
  classifier alike), jitted on the mesh."""

  def __init__(self, task, model, sigma: float, pgd: attacks.PGDSettings, samples: int,
               seed: int = 0):
    self.task, self.model, self.sigma, self.pgd, self.samples = task, model, sigma, pgd, samples
    self.seed = seed
    self._run = jax.jit(self._impl)

  def _impl(self, params, batch, eps):
    image = batch['image']
    b, m = image.shape[0], self.samples
    keys = smoothing.image_keys(self.seed, batch['id'], 3)
    noise = jnp.moveaxis(smoothing.noisy_copies(keys, jnp.zeros_like(image), self.sigma, 0, m),
                         0, 1)  # (B, m, ...)
    # Each record m times, image-major like the copies (`copies_flat`; a `jnp.repeat` here made
    # XLA all-gather the batch, which could hang 2 host devices under load).
    repeated = jax.tree.map(lambda a: copies_flat(jnp.broadcast_to(a[:, None],
                                                                   (b, m, *a.shape[1:]))),
                            dict(batch))

    def loss_fn(x):
      noisy = copies_flat(within_image(batch, x)[:, None] + noise)
      outputs = self.model.apply({'params': params}, within_image(repeated, noisy))
      per_copy = methods.total(self.task.loss_terms(outputs, repeated))
      return jnp.mean(per_copy.reshape(b, m), axis=1)
    return within_image(batch, self.pgd(loss_fn, image, eps))

  def __call__(self, params, batch, eps: float) -> jax.Array:
    return self._run(params, batch, jnp.float32(eps))

  def describe(self) -> dict:
    return {**self.pgd.describe(), 'name': f'smoothed-pgd-{self.pgd.steps}',
            'noise_samples': self.samples}


def consistency(task, model, params, data: dict, mesh, settings, evidence, radii, *,
                steps: int = 20, samples: int = 8, seed: int = 0, batch_size: int = 8) -> list:
  """At each radius r, each image attacked within ‖δ‖₂ ≤ r on the smoothed model
  (`SmoothedAttack`), its smoothed answers estimated again from n noisy copies of the attacked
  image, and compared with the certificate at r. A violation is an answer the certificate fixes
  that the attacked smoothed model shows to be otherwise at family-wise error α over the image's
  answers: a certified vote whose attacked majority is another answer by the binomial test (Holm
  or Bonferroni over the elements), or a median whose confidence interval on the attacked image
  lies outside the certified bounds. Either means a bug in the certificate or the attack (or an
  event of probability ≤ 2α). Also per radius: the attacked smoothed model's metric (its plain
  majority or median, untested) beside the certified one."""
  radii = [float(r) for r in radii if r > 0]
  if not radii:
    return []
  attack = SmoothedAttack(task, model, settings.sigma,
                          attacks.PGDSettings(norm='l2', steps=steps), samples, seed)
  sampler = sampler_for(task, model, settings.sigma, settings.chunk, seed)
  num = evidence['counts'].shape[-1] if task.smoothing == 'vote' else 0
  valid = task.answer_mask(data)
  full = dict(evidence, valid=valid)
  rows = []
  for r, certified in zip(radii, certified_at(task, full, settings, radii)):
    def fn(_, batch):
      attacked = {**batch, 'image': attack(params, batch, r)}
      if task.smoothing == 'vote':
        return {'counts': sampler.votes(params, attacked, settings.n, 2, num)}
      return {'samples': sampler.draws(params, attacked, settings.n, 2)}
    seen = evaluate.per_sample_outputs(fn, data, mesh, batch_size)
    violated = _violations(task, certified, seen, settings, valid)
    after = task.certified_metric(smoothed_answers(task, seen), data)
    flat = violated.reshape(len(violated), -1)
    rows.append({'radius': r, 'attack': attack.describe(),
                 'certified': _finite_mean(task.certified_metric(certified, data)),
                 'attacked_smoothed': _finite_mean(after),
                 'violating_images': int(flat.any(axis=1).sum()),
                 'violating_answers': int(flat.sum()),
                 'per_image_violations': flat.sum(axis=1).astype(int).tolist()})
  return rows


def _violations(task, certified: dict, seen: dict, settings, valid) -> np.ndarray:
  """(N, *E) bool: the certified answers the attacked smoothed model contradicts."""
  if task.smoothing == 'vote':
    top, pvalues = smoothing.majority_test(seen['counts'])
    answer = certified['answer']
    if answer.ndim == 1:
      shown = pvalues <= settings.alpha
    else:
      b = answer.shape[0]
      shown = smoothing.rejections(pvalues.reshape(b, -1), settings.alpha, settings.correction,
                                   None if valid is None else np.asarray(valid).reshape(b, -1))
      shown = shown.reshape(answer.shape)
    return (answer != smoothing.ABSTAIN) & shown & (top != answer)
  samples = np.moveaxis(seen['samples'], 1, 0)
  alpha = settings.alpha / (2 * int(np.prod(samples.shape[2:])))
  lo, hi = smoothing.median_bounds(samples, settings.sigma, 0.0, alpha)  # the median's interval
  return (hi < certified['lower']) | (lo > certified['upper'])


def _finite_mean(values: np.ndarray) -> float | None:
  v = np.asarray(values, np.float64)
  return float(v.mean()) if np.all(np.isfinite(v)) else None


def attacked_curve(report: dict, ids) -> dict | None:
  """The base model's worst case per radius from a run's report (`robustness.json`): the mean
  of its per-sample metric over the images certified here, when its attacks were in L2."""
  norm = (report.get('attack') or {}).get('norm') or report.get('eval_settings', {}).get('norm')
  per = report.get('per_sample') or {}
  if norm != 'l2' or not per.get('values'):
    return None
  name = 'worst-case' if 'worst-case' in per['values'] else next(iter(per['values']))
  where = {int(i): k for k, i in enumerate(per['ids'])}
  rows = [where[int(i)] for i in ids if int(i) in where]
  if not rows:
    return None
  values = np.asarray(per['values'][name], np.float64)[:, rows]
  return {'curve': name, 'eps': [float(e) for e in per['eps']],
          'metric': [float(v) for v in values.mean(axis=1)], 'num_samples': len(rows)}


def certify_report(task, evidence, data, settings, radii, extra: dict | None = None,
                   checks: list | None = None) -> dict:
  """certify.json's content (`checks`: the rows of `consistency`)."""
  cert = certificates(task, evidence, data, settings, radii)
  rows = []
  for k, r in enumerate(cert['radii']):
    rows.append({'radius': r, 'certified': _finite_mean(cert['metric'][:, k]),
                 'certified_median': float(np.median(cert['metric'][:, k])),
                 'abstained': float(cert['abstained'][:, k].mean())})
  per_image = {'ids': np.asarray(data['id']).astype(int).tolist(),
               'certified': np.round(cert['metric'], 6).tolist(),
               'abstained': np.round(cert['abstained'], 6).tolist(),
               'smoothed': np.round(cert['smoothed'], 6).tolist()}
  if 'radius' in cert:
    per_image['radius'] = np.round(cert['radius'], 6).tolist()
    per_image['answer'] = cert['answer'].astype(int).tolist()
  report = {
      'task': task.name, 'metric': task.primary_metric, 'higher_is_better': task.higher_is_better,
      'certified_metric': task.certified_metric_name, 'sample_metric': task.sample_metric_label(),
      'smoothing': task.smoothing, 'num_samples': int(len(data['id'])), 'norm': 'l2',
      'settings': {'sigma': settings.sigma, 'n': settings.n, 'n0': settings.n0,
                   'alpha': settings.alpha, 'correction': settings.correction,
                   'chunk': settings.chunk},
      # Votes: no radius beyond this can be certified with n samples (a limit of n, not of the
      # model; `smoothing.largest_radius`).
      'largest_radius': (smoothing.largest_radius(settings.n, settings.sigma, settings.alpha)
                         if task.smoothing == 'vote' else None),
      'smoothed': _finite_mean(cert['smoothed']),
      'curve': rows, 'per_image': per_image, 'consistency': checks or [], **(extra or {})}
  return json.loads(json.dumps(report, default=_json_default).replace('Infinity', 'null')
                    .replace('NaN', 'null'))


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f'{type(value)} is not JSON-able')


def plot(report: dict, path: str) -> None:
  """Certified metric against radius, the smoothed model's metric at r = 0, and the base model's
  attacked worst case when the run's report is in L2."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.4))
  s = report['settings']
  rows = [r for r in report['curve'] if r['certified'] is not None]
  ax.plot([r['radius'] for r in rows], [r['certified'] for r in rows], 'o-', ms=3,
          label=f'certified (smoothed, σ={s["sigma"]:g}, n={s["n"]}, α={s["alpha"]:g})')
  if report.get('smoothed') is not None:
    ax.plot([0], [report['smoothed']], 's', color='k', ms=5, label='smoothed model, no attack')
  checks = [c for c in report.get('consistency', []) if c['attacked_smoothed'] is not None]
  if checks:
    ax.plot([c['radius'] for c in checks], [c['attacked_smoothed'] for c in checks], 'D',
            color='tab:green', ms=4, label='smoothed model, attacked (consistency check)')
  attacked = report.get('attacked')
  if attacked:
    ax.plot(attacked['eps'], attacked['metric'], 'x--', color='tab:red',
            label=f'base model, attacked ({attacked["curve"]})')
  if report.get('smoothing') == 'vote':
    limit = smoothing.largest_radius(s['n'], s['sigma'], s['alpha'])
    ax.axvline(limit, color='gray', ls=':', lw=1,
               label=f'largest radius n={s["n"]} copies can certify ({limit:.3g})')
  ax.set_xlabel('L2 radius (model input units)')
  ax.set_ylabel(metric_label(report['metric'], report['higher_is_better']) + ', per image',
                fontsize=8)
  ax.set_title(f'{report.get("method", "") or report["task"]}: certified vs attacked', fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  fig.tight_layout()
  save_figure(fig, path)


def examples_figure(task, evidence: dict, data: dict, settings, radii, *, num: int = 4,
                    title: str = ''):
  """certify_examples.png: `num` images spread over `data` (the same ones every time), each
  certified at each of `radii` and drawn by the head (`Task.draw_certified`: the certified
  segmentation with its abstained pixels, the landmarks' certified boxes, the certified boxes),
  titled with that image's certified metric."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  n = len(data['id'])
  index = np.unique(np.linspace(0, n - 1, min(num, n)).round().astype(int))
  records = {k: np.asarray(v)[index] for k, v in data.items()}
  chosen = {k: np.asarray(v)[index] for k, v in evidence.items()}
  chosen['valid'] = task.answer_mask(records)
  radii = [float(r) for r in radii]
  certs = certified_at(task, chosen, settings, radii)
  metrics = [task.certified_metric(c, records) for c in certs]
  fig, axes = plt.subplots(len(index), len(radii), figsize=(2.2 * len(radii),
                                                              2.3 * len(index) + 0.5),
                           squeeze=False)
  for i in range(len(index)):
    item = {k: v[i] for k, v in records.items()}
    cut = evaluate.section_cut(task, item)
    item = {k: cut(v) for k, v in item.items()}
    for j, (r, certified) in enumerate(zip(radii, certs)):
      ax = axes[i][j]
      one = {k: (cut(np.asarray(v)[i]) if np.ndim(v) else v) for k, v in certified.items()}
      task.draw_certified(ax, item['image'], one, item)
      ax.set_axis_off()
      ax.set_title(f'id {int(item["id"])}, r = {r:g}: {metrics[j][i]:.3g}', fontsize=7)
  s = settings
  width = max(40, int(18 * len(radii)))
  fig.suptitle(f'{title or task.name}: certified at radius r (L2; σ={s.sigma:g}, n={s.n}, '
               f'α={s.alpha:g})\n' + textwrap.fill(task.certified_metric_name, width), fontsize=7)
  fig.tight_layout()
  return fig


def certify_checkpoint(config, workdir: str, settings: smoothing.SmoothingSettings, *,
                       split: str = '', out: str = '', radii=None, max_samples: int = 0,
                       seed: int = 0, batch_size: int = 0, step: int | None = None,
                       check_radii=None, check_steps: int = 20, check_samples: int = 8) -> dict:
  """Certifies the checkpoint of the run in `workdir` on `split`, checks the certificate against
  an attack on the smoothed model at `check_radii` (default σ/2 and σ; `consistency`), and writes
  certify.json and certify.png into `out` (default `workdir/certify/<split>/`). Returns the
  report."""
  from robust_med import units
  from robust_med.tasks import get_task_class
  split = split or config.data.eval_split
  out = os.path.abspath(out or os.path.join(workdir, 'certify', split))
  task = get_task_class(config.task)(config)
  if task.smoothing not in ('vote', 'median'):
    raise task._not_certifiable()
  if split not in task.splits():
    raise errors.UserError(f'unknown split {split!r}: the data ({config.data.root or config.data.name}) '
                           f'declares the splits {list(task.splits())}; pass --split=<one of them>.')
  data, info = task.load_split(split)
  config = units.resolve(config, data['image'].shape[1:])
  mesh = sharding.make_mesh(config.mesh.num_devices)
  model, params, meta, step = evaluate.restore_model(task, workdir, info, data['image'], mesh,
                                                     step, what=f'The {split!r} split of the data')
  warnings = []
  trained = float(config.method.get('noise_sigma', 0.0))
  if not math.isclose(trained, settings.sigma, rel_tol=1e-6):
    warnings.append(f'σ = {settings.sigma:g} but the model was trained with noise σ = '
                    f'{trained:g} (config.method.noise_sigma): the certificate holds, but a '
                    'model certifies best at the σ it was trained with.')
  data = evaluation_subset(data, max_samples)
  run_report = {}
  path = os.path.join(workdir, 'robustness.json')
  if os.path.exists(path):
    with open(path) as f:
      run_report = json.load(f)
  attacked = attacked_curve(run_report, data['id'])
  if radii is None:
    radii = default_radii(settings.sigma, attacked['eps'] if attacked else ())
  extra = {'method': meta.get('method', ''), **evaluate.data_provenance(config, split,
                                                                        len(data['id'])),
           'checkpoint': {'workdir': os.path.abspath(workdir), 'step': int(step)},
           'seed': seed, 'attacked': attacked, 'warnings': warnings}
  evaluate.note_subset(task, info, extra)
  for line in warnings:
    print(f'warning: {line}', file=sys.stderr)
  batch = sharding.round_up(batch_size or max(1, config.eval.batch_size // settings.chunk),
                            mesh.devices.size)
  evidence = sample(task, model, params, data, mesh, settings, seed=seed, batch_size=batch)
  if check_radii is None:
    check_radii = [settings.sigma / 2, settings.sigma]
  checks = consistency(task, model, params, data, mesh, settings, evidence, check_radii,
                       steps=check_steps, samples=check_samples, seed=seed, batch_size=batch)
  for c in checks:
    if c['violating_answers']:
      warnings.append(f'consistency: at radius {c["radius"]:g} the attacked smoothed model '
                      f'contradicts {c["violating_answers"]} certified answers in '
                      f'{c["violating_images"]} images: a bug in the certificate or the attack '
                      '(or an event of probability ≤ 2α).')
      print(f'warning: {warnings[-1]}', file=sys.stderr)
  report = certify_report(task, evidence, data, settings, radii, extra, checks)
  os.makedirs(out, exist_ok=True)
  plot(report, os.path.join(out, 'certify.png'))
  shown = sorted({0.0, *[float(r) for r in check_radii]} if check_radii else
                 {0.0, settings.sigma / 2, settings.sigma})
  save_figure(examples_figure(task, evidence, data, settings, shown, title=extra['method']),
              os.path.join(out, 'certify_examples.png'))
  write_json(os.path.join(out, 'certify.json'), report)  # Last: marks a finished certificate.
  return report


def main(argv=None) -> None:
  """`python -m robust_med.certify`: bad input ends in one `error:` line with exit status 2."""
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config (default: the run\'s own config.json); '
                                  'override keys with --config.<key>=<value>.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir of a robust_med.main run.')
  flags.DEFINE_string('split', '', 'Split to certify (default: config.data.eval_split).')
  flags.DEFINE_string('out', '', 'Folder for the report (default: <workdir>/certify/<split>).')
  flags.DEFINE_float('sigma', None, 'Std of the smoothing noise, model input units (default: '
                     'config.method.noise_sigma, the σ the model was trained with).')
  flags.DEFINE_integer('n', 1000, 'Noisy copies per image that estimate (Cohen et al.: 100000).')
  flags.DEFINE_integer('n0', 100, 'Noisy copies per image that select the answer.')
  flags.DEFINE_float('alpha', 0.001, 'Failure probability of each image\'s certificate.')
  flags.DEFINE_enum('correction', 'holm', list(smoothing.CORRECTIONS),
                    'Multiple testing over an image\'s answers (per-pixel heads).')
  flags.DEFINE_list('radii', None, 'L2 radii (model units) to certify at (default: 0 to 4σ in '
                    'steps of σ/4 and the run\'s attacked budgets in that range).')
  flags.DEFINE_integer('max_samples', 0, 'Certify this many images, spread over the split (0: '
                       'all).')
  flags.DEFINE_integer('chunk', 32, 'Noisy copies of each image per forward pass.')
  flags.DEFINE_integer('batch_size', 0, 'Images per forward pass (default: '
                       'config.eval.batch_size // chunk).')
  flags.DEFINE_list('check_radii', None, 'Radii of the consistency check (an attack on the '
                    'smoothed model against the certificate; default σ/2,σ; "" skips it).')
  flags.DEFINE_integer('check_steps', 20, 'PGD steps of the consistency check\'s attack.')
  flags.DEFINE_integer('check_samples', 8, 'Noise draws per image its attack averages over.')
  flags.DEFINE_integer('seed', 0, 'Seed of the noise (each image\'s key: this seed and its id).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.mark_flags_as_required(['workdir'])

  @cli.guard
  def main(argv):
    cli.reject_positional(argv)
    f = flags.FLAGS
    config = f.config
    cli.prepare(config)
    sigma = f.sigma if f.sigma is not None else float(config.method.get('noise_sigma', 0.0))
    if f.sigma is None and sigma <= 0:
      raise errors.UserError('the model was trained without noise (config.method.noise_sigma = '
                             '0): pass the smoothing σ with --sigma=<std>, e.g. --sigma=0.25.')
    settings = smoothing.SmoothingSettings(sigma=sigma, n=f.n, n0=f.n0, alpha=f.alpha,
                                           correction=f.correction, chunk=f.chunk)
    radii = None
    if f.radii is not None:
      try:
        radii = [float(r) for r in f.radii]
      except ValueError:
        raise errors.UserError(f'--radii={",".join(f.radii)} is not a list of numbers: use e.g. '
                               '--radii=0,0.25,0.5.') from None
      if any(r < 0 or not math.isfinite(r) for r in radii):
        raise errors.UserError(f'--radii={",".join(f.radii)}: radii are L2 norms, ≥ 0.')
    check_radii = None
    if f.check_radii is not None:
      try:
        check_radii = [float(r) for r in f.check_radii if r.strip()]
      except ValueError:
        raise errors.UserError(f'--check_radii={",".join(f.check_radii)} is not a list of '
                               'numbers: use e.g. --check_radii=0.125,0.25.') from None
    if f.check_steps < 1 or f.check_samples < 1:
      raise errors.UserError(f'--check_steps={f.check_steps}, --check_samples={f.check_samples}: '
                             'the consistency check needs at least one of each.')
    report = certify_checkpoint(config, f.workdir, settings, split=f.split, out=f.out,
                                radii=radii, max_samples=f.max_samples, seed=f.seed,
                                batch_size=f.batch_size, step=f.step, check_radii=check_radii,
                                check_steps=f.check_steps, check_samples=f.check_samples)
    for row in report['curve']:
      print(json.dumps(row))
    for row in report['consistency']:
      print(json.dumps({k: v for k, v in row.items() if k not in ('attack',
                                                                  'per_image_violations')}))
    out = f.out or os.path.join(f.workdir, 'certify', report['split'])
    print(f'Done: certify.json, certify.png, certify_examples.png in {os.path.abspath(out)}')

  app.run(main, argv=argv, flags_parser=lambda a: cli.parse_flags(cli.with_saved_config(a)))


if __name__ == '__main__':
  main()
