"""Clean metrics and robustness curves: the task's metric under attack at each noise level of a grid.

The attack uses the norm the report names (`config.eval.norm`), and every report carries the full
attack description, so a number never travels without the norm and strength that produced it.

Standalone, on any split of any data folder in the same format:

  python -m robust_med.evaluate --workdir=DIR [--split=test] [--config.data.root=PATH] \
      [--step=N] [--out=DIR2]

restores the parameters alone of DIR's checkpoint (never the training split, the optimizer state
or the margins) and writes `robustness.json`, `robustness.png` and `examples.png` into
`DIR/eval/<split>/` (or `--out`); the run's own report is never touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from robust_med import attacks, cli, errors, gradient_masking, methods, patchwise, precision
from robust_med import sharding
from robust_med import report as report_page
from robust_med import tensorboard_log
from robust_med.reports import metric_label, save_figure, write_json
from robust_med import data as data_lib
from robust_med.data.source import evaluation_subset, in_order
from robust_med.tasks.base import within_image


class Evaluator:
  """Runs a task's model over a dataset, clean or under attack, on a device mesh.

  `attack` is one iterative attack (`attacks.PGDSettings`, `apgd.APGDSettings`,
  `attacks.RandomNoise`) or a sequence of them; the first is the primary one.
  """

  def __init__(self, task, model, mesh, attack, *, batch_size: int = 64, seed: int = 0,
               progress: bool = True, chunk_steps: int = 0, square_remaining_only: bool = False):
    self.task, self.model, self.mesh = task, model, mesh
    # Gradient-free attacks only on the samples the attacks before them left above the head's
    # floor (AutoAttack's protocol; `curves`).
    self.square_remaining_only = square_remaining_only
    self.attacks = tuple(self.resolve(a) for a in (
        attack if isinstance(attack, (list, tuple)) else (attack,)))
    self.attack = self.attacks[0]
    self.seed = seed
    n = mesh.devices.size
    self.batch_size = sharding.round_up(batch_size, n)
    self.progress = progress
    # Each attack runs as one jitted `fori_loop` over all its steps (no host round trip, seconds
    # to compile; the models' convolutions run as fast in a loop as unrolled: models/conv.py);
    # with `chunk_steps` > 0, as a host loop over jitted chunks of that many unrolled steps.
    self.unroll = chunk_steps > 0
    self.chunk = chunk_steps or 1 << 30
    self._stats = jax.jit(self._stats_impl)
    self._apply = jax.jit(lambda params, x: model.apply({'params': params}, x))
    self._init = jax.jit(self._init_impl, static_argnames=('attack',))
    self._chunk = jax.jit(self._chunk_impl, static_argnames=('attack', 'steps'))
    self._loop = jax.jit(self._loop_impl)
    # The attacked input, with any padding (batch['in_image']) left clean: `within_image`.
    self._result = jax.jit(lambda batch, x, state, *, attack: within_image(
        batch, attack.result(x, state)), static_argnames=('attack',))
    self._tile = jax.jit(patchwise.tile_batch, static_argnums=1)
    self._untile = jax.jit(patchwise.from_tiles, static_argnums=1)

  def resolve(self, attack):
    """`attack` with what it takes from the model filled in (a per-patch attack's patch)."""
    return attack.resolve(self.model) if isinstance(attack, patchwise.PerPatch) else attack

  def _loss_fn(self, params, batch, attack=None):
    """The per-sample objective `attack` maximises: the task's loss, or the head's
    `attack_objective` named by the attack (e.g. APGD-T's 'dlr'), of the input with any padding
    left clean (`within_image`)."""
    objective = getattr(attack, 'objective', 'loss')
    outputs = lambda x: self.model.apply({'params': params}, within_image(batch, x))
    if objective != 'loss':
      return lambda x: self.task.attack_objective(objective, outputs(x), batch)
    return lambda x: methods.total(self.task.loss_terms(outputs(x), batch))

  def _stats_impl(self, params, batch, x):
    outputs = self.model.apply({'params': params}, within_image(batch, x))
    stats = dict(self.task.eval_stats(outputs, batch))
    stats['loss'] = methods.total(self.task.loss_terms(outputs, batch))
    return stats

  def _init_impl(self, params, batch, eps, key, *, attack):
    return attack.init(self._loss_fn(params, batch, attack), batch['image'], eps, key)

  def _chunk_impl(self, params, batch, state, eps, start, *, attack, steps):
    """`steps` steps of `attack` (static: a compile per attack and chunk length), unrolled or
    as a `fori_loop`."""
    return self._steps(params, batch, state, eps, start, steps, attack, self.unroll)

  def _loop_impl(self, params, batch, state, eps, start, steps, attack):
    """`steps` steps of `attack` (a pytree: `PGDSettings`' step count and step-size factor are
    traced, so PGDs differing only in those share this compiled loop) as one `fori_loop`."""
    return self._steps(params, batch, state, eps, start, steps, attack, False)

  def _steps(self, params, batch, state, eps, start, steps, attack, unroll: bool):
    loss_fn, x = self._loss_fn(params, batch, attack), batch['image']

    def body(j, s):
      return attack.step(loss_fn, x, s, eps, start + j)
    if unroll:
      for j in range(steps):
        state = body(j, state)
      return state
    return jax.lax.fori_loop(0, steps, body, state)

  def perturb(self, params, batch, eps: float, key, attack=None) -> jax.Array:
    """The attacked images of a (device) batch at budget `eps` (the primary attack by default).

    An attack with several runs — restarts, or APGD-T's target classes (each the next most
    likely wrong answer on the clean batch, `Task.attack_target`) — keeps per sample the run
    that left it worst by the worst-case rule (lowest `task.sample_scores`, ties: the higher
    loss)."""
    attack = attack or self.attack
    x = batch['image']
    if np.all(np.asarray(eps) == 0):
      return x
    if isinstance(attack, patchwise.PerPatch):
      return self._perturb_per_patch(params, batch, eps, key, attack)
    eps_v = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    restarts = range(getattr(attack, 'restarts', 1))
    runs = [(r, None) for r in restarts]
    if getattr(attack, 'targets', 0):
      clean = self._apply(params, x)
      ranks = range(1, min(attack.targets, self.task.num_attack_targets(clean)) + 1)
      runs = [(r, rank) for rank in ranks for r in restarts]
    best, best_stats = None, None
    for i, (_, rank) in enumerate(runs):
      k = key if key is None or i == 0 else jax.random.fold_in(key, i)
      run_batch = batch if rank is None else {
          **batch, 'attack_target': self.task.attack_target(clean, batch, rank)}
      state = self._init(params, run_batch, eps_v, k, attack=attack)
      done = 0
      while done < attack.steps:
        n = min(self.chunk, attack.steps - done)
        if self.unroll or jax.tree.leaves(attack) == [attack]:  # Unrolled, or not a pytree.
          state = self._chunk(params, run_batch, state, eps_v, jnp.int32(done), attack=attack,
                              steps=n)
        else:
          state = self._loop(params, run_batch, state, eps_v, jnp.int32(done), jnp.int32(n),
                             attack)
        done += n
      x_adv = self._result(run_batch, x, state, attack=attack)
      if len(runs) == 1:
        return x_adv
      stats = jax.device_get(self._stats(params, batch, x_adv))
      if best is None:
        best, best_stats = x_adv, stats
        continue
      worse = self._worse(stats, best_stats)
      best = jnp.where(jnp.asarray(worse).reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, best)
      best_stats = {name: np.where(worse.reshape((-1,) + (1,) * (v.ndim - 1)), stats[name], v)
                    for name, v in best_stats.items()}
    return best

  def _perturb_per_patch(self, params, batch, eps, key, attack: patchwise.PerPatch) -> jax.Array:
    """`attack.base` on each tile of the batch alone, the samples' budgets split over their
    tiles (`robust_med.patchwise`); the tiles put back, padding left clean."""
    attack = self.resolve(attack)
    x = batch['image']
    spatial = x.shape[1:1 + len(attack.patch)]
    tiles = patchwise.tiles_per_sample(spatial, attack.patch)
    tiled = self._tile(batch, attack.patch)
    eps_t = patchwise.tile_budgets(jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1]),
                                   tiled[patchwise.MASK], tiles, attack.norm)
    x_adv = self.perturb(params, tiled, eps_t, key, attack.base)
    return within_image(batch, self._untile(x_adv, spatial))

  def _worse(self, stats, than) -> np.ndarray:
    """Per sample, whether `stats` is worse than `than` by the worst-case rule."""
    new, old = (np.asarray(self.task.sample_scores(s), np.float64) for s in (stats, than))
    return (new < old) | ((new == old) & (np.asarray(stats['loss']) > np.asarray(than['loss'])))

  def sample_stats(self, params, arrays: dict[str, np.ndarray], eps: float, attack=None,
                   bar=None) -> dict[str, np.ndarray]:
    """Per-sample statistics (and loss) of the whole set attacked at `eps`."""
    key = jax.random.key(self.seed)

    def attacked_stats(b, batch):
      if bar is not None:
        bar.update(1)
      k = jax.random.fold_in(key, b)
      if isinstance(attack, TransferAttack):  # crafted on the source model, applied to this one
        x = attack.evaluator.perturb(attack.params, batch, float(eps), k, attack.base)
      else:
        x = self.perturb(params, batch, float(eps), k, attack)
      return self._stats(params, batch, x)
    return per_sample_outputs(attacked_stats, arrays, self.mesh, self.batch_size)

  def clean(self, params, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Clean metrics (and mean loss) of `params` on `arrays`."""
    return self._row(0.0, self.sample_stats(params, arrays, 0.0))

  def _row(self, eps: float, stats) -> dict[str, float]:
    return {'eps': float(eps), **self.task.summarize(stats), 'loss': float(stats['loss'].mean())}

  def curves(self, params, arrays: dict[str, np.ndarray], noise_levels=(0.0,), attacks_=None,
             *, worst_case: bool = True, desc: str = 'eval',
             per_sample: dict | None = None) -> dict[str, list[dict]]:
    """Metric rows at each noise level for each attack, by attack name, plus 'worst-case' (each
    sample under whichever attack hurt it most, by `task.sample_scores`) when there are several.

    Worst-case rows also count, under 'worst_of', how many samples each attack won. A dict given
    as `per_sample` receives, per curve, one array of `task.sample_metric` per noise level.

    With `square_remaining_only` and a head with a floor (`Task.sample_metric_floor`), a
    gradient-free attack (Square) runs only on the samples the attacks listed before it left
    above the floor — the rest cannot get worse; they keep their worst case so far in its curve —
    as AutoAttack runs each attack on the points still robust. Its rows say on how many samples
    it ran ('attacked').
    """
    attacks_ = tuple(attacks_ or self.attacks)
    names = [a.describe()['name'] for a in attacks_]
    n_batches = data_lib.num_batches(len(arrays['id']), self.batch_size, False)
    bar = tqdm(total=n_batches * len(noise_levels) * len(attacks_), desc=desc,
               disable=not self.progress, leave=False, file=sys.stderr)
    out: dict[str, list[dict]] = {n: [] for n in names}
    several = worst_case and len(attacks_) > 1
    if several:
      out[WORST_CASE] = []
    # With a gradient-free or transfer attack among several white-box gradient ones, also the
    # white-box attacks' own worst case: the masking checks compare it with those curves.
    gradient = [i for i, a in enumerate(attacks_) if is_white_box(a)]
    white_box = several and 1 < len(gradient) < len(attacks_)
    if white_box:
      out[WHITE_BOX_WORST_CASE] = []
    for eps in noise_levels:
      if eps == 0:  # Every attack leaves the clean set unchanged.
        clean = self.sample_stats(params, arrays, 0.0, attacks_[0], bar)
        bar.update(n_batches * (len(attacks_) - 1))
        stats = [clean] * len(attacks_)
      else:
        stats, attacked = [], {}
        for a in attacks_:
          if stats and self._remaining_only(a):
            s, attacked[len(stats)] = self._remaining_stats(params, arrays, eps, a, stats, bar)
          else:
            s = self.sample_stats(params, arrays, eps, a, bar)
          stats.append(s)
      curve_stats = list(zip(names, stats))
      for i, (n, s) in enumerate(curve_stats):
        out[n].append(self._row(eps, s))
        if eps > 0 and i in attacked:
          out[n][-1]['attacked'] = attacked[i]
      if several:
        worst, index = worst_per_sample(self.task, stats)
        row = self._row(eps, worst)
        row['worst_of'] = {n: int((index == i).sum()) for i, n in enumerate(names)}
        out[WORST_CASE].append(row)
        curve_stats.append((WORST_CASE, worst))
      if white_box:
        gradient_worst = worst_per_sample(self.task, [stats[i] for i in gradient])[0]
        out[WHITE_BOX_WORST_CASE].append(self._row(eps, gradient_worst))
        curve_stats.append((WHITE_BOX_WORST_CASE, gradient_worst))
      if per_sample is not None:
        for n, s in curve_stats:
          per_sample.setdefault(n, []).append(np.asarray(self.task.sample_metric(s), np.float64))
    bar.close()
    return out

  def _remaining_only(self, attack) -> bool:
    return (self.square_remaining_only and getattr(attack, 'gradient_free', False) and
            self.task.sample_metric_floor is not None)

  def _remaining_stats(self, params, arrays, eps, attack, earlier, bar) -> tuple[dict, int]:
    """Per-sample statistics of `attack` run on the samples the `earlier` attacks left above
    the head's floor, the others' worst case so far; and how many samples it ran on."""
    worst = worst_per_sample(self.task, earlier)[0]
    metric = np.asarray(self.task.sample_metric(worst), np.float64)
    alive = np.flatnonzero(metric != self.task.sample_metric_floor)
    out = {k: np.array(v) for k, v in worst.items()}
    n = len(arrays['id'])
    if len(alive):
      sub = self.sample_stats(params, {k: np.asarray(v)[alive] for k, v in arrays.items()}, eps,
                              attack, bar)
      for k in out:
        out[k][alive] = sub[k]
    bar.update(data_lib.num_batches(n, self.batch_size, False) -
               (data_lib.num_batches(len(alive), self.batch_size, False) if len(alive) else 0))
    return out, int(len(alive))

  def run(self, params, arrays: dict[str, np.ndarray], noise_levels=(0.0,),
          desc: str = 'eval') -> list[dict[str, float]]:
    """Metrics under the primary attack at each noise level: [{'eps': e, <metric>: value, ...,
    'loss': mean loss}]."""
    name = self.attack.describe()['name']
    return self.curves(params, arrays, noise_levels, (self.attack,), desc=desc)[name]


WORST_CASE = 'worst-case'
WHITE_BOX_WORST_CASE = 'worst-case-gradient'  # over the white-box gradient attacks only


def is_white_box(attack) -> bool:
  """Whether `attack` follows the evaluated model's own gradient (not Square, not a transfer)."""
  return not getattr(attack, 'gradient_free', False) and not isinstance(attack, TransferAttack)


@dataclasses.dataclass(frozen=True, eq=False)
class TransferAttack(attacks.OnBase):
  """A transfer attack: `base` (the evaluation's PGD) crafted on another model — the source,
  run by its own `evaluator` with its `params`, e.g. a sweep's STD — and applied to the model
  evaluated. A model whose gradients mislead white-box attacks (gradient masking) is often
  hurt more by perturbations crafted on a model that does not mask them (Carlini et al. 2019).
  Each batch uses the same key as the white-box attacks, so a model attacked through itself
  gets exactly the white-box curve."""
  base: object
  evaluator: 'Evaluator'
  params: object
  source: str  # the source run's workdir

  def describe(self) -> dict:
    d = self.base.describe()
    return {**d, 'name': f'transfer-{d["name"]}', 'source': self.source}


def transfer_attack(task, info, images: np.ndarray, mesh, config, base) -> TransferAttack | None:
  """The transfer attack of `config.eval.transfer_from` (a trained run's workdir of the same
  head and data; None when empty): its model (from its own config.json) and latest parameters,
  attacked with `base`."""
  source = config.eval.get('transfer_from', '')
  if not source:
    return None
  if not os.path.isdir(source):
    raise errors.UserError(f'config.eval.transfer_from = {source!r} is not a folder: set it to '
                           "the workdir of a trained run of this head (e.g. a sweep's std), or to "
                           "'' for no transfer attack.")
  source_config = cli.load_workdir_config(source)
  model, params, _, _ = restore_model(task, source, info, images, mesh, config=source_config,
                                      what='The evaluation data')
  evaluator = Evaluator(task, model, mesh, base, batch_size=config.eval.batch_size,
                        seed=config.eval.seed, progress=False)
  return TransferAttack(base=base, evaluator=evaluator, params=params,
                        source=os.path.abspath(source))


def worst_per_sample(task, stats: list[dict[str, np.ndarray]]) -> tuple[dict, np.ndarray]:
  """Per sample, the statistics of the attack with the lowest `task.sample_scores` (ties: the
  highest loss), and the index of that attack for each sample."""
  scores = np.stack([np.asarray(task.sample_scores(s), np.float64) for s in stats])
  losses = np.stack([np.asarray(s['loss'], np.float64) for s in stats])
  index = np.lexsort((-losses, scores), axis=0)[0]
  cols = np.arange(scores.shape[1])
  return {k: np.stack([s[k] for s in stats])[index, cols] for k in stats[0]}, index


def per_sample_outputs(fn, arrays, mesh, batch_size: int) -> dict:
  """Runs `fn(batch_index, device_batch) -> {name: (B, ...)}` over `arrays` in order, on the
  mesh, and returns the outputs concatenated over the whole set, padding dropped. `arrays`: a
  split's columns, or a source read batch by batch (`data.source.in_order`: records on disk). A
  set smaller than one batch runs as one batch of its own size (rounded up to the device count),
  not padded to `batch_size`."""
  n = mesh.devices.size
  source = arrays if hasattr(arrays, 'read') else data_lib.ArraySource(arrays)
  batch_size = min(sharding.round_up(batch_size, n), sharding.round_up(len(source), n))
  out: dict[str, list[np.ndarray]] = {}

  def fetch(pending):  # Blocks on that batch only; the next one is already dispatched.
    outputs, valid = pending
    for k, v in jax.device_get(outputs).items():
      out.setdefault(k, []).append(np.asarray(v)[:valid])

  pending = None
  for b, batch in enumerate(in_order(source, batch_size)):
    batch, valid = sharding.pad_batch(batch, batch_size)
    outputs = fn(b, sharding.put_batch(batch, mesh))
    if pending is not None:
      fetch(pending)
    pending = (outputs, valid)
  if pending is not None:
    fetch(pending)
  return {k: np.concatenate(v) for k, v in out.items()}


def evaluation_attacks(eval_cfg, clip=None) -> list:
  """The attacks of `config.eval.attacks`, PGD first (the primary curve, named in `attack`),
  the others in the order listed (AutoAttack's: apgd, apgd_t, square)."""
  from robust_med import apgd, square
  clip = tuple(clip) if clip else None
  built = {'pgd': lambda: attacks.PGDSettings.from_config(eval_cfg, clip=clip),
           'apgd': lambda: dataclasses.replace(apgd.APGDSettings.from_config(eval_cfg, clip=clip),
                                               restarts=eval_cfg.apgd_restarts),
           'apgd_t': lambda: dataclasses.replace(apgd.APGDSettings.from_config(eval_cfg, clip=clip),
                                                 objective='dlr',
                                                 targets=eval_cfg.get('apgd_targets', 9)),
           'pgd_patch': lambda: patchwise.PerPatch(
               attacks.PGDSettings.from_config(eval_cfg, clip=clip),
               tuple(eval_cfg.get('patch_attack_size', ()))),
           'square': lambda: square.SquareSettings(
               queries=eval_cfg.get('square_queries', 1000),
               p_init=eval_cfg.get('square_p_init', 0.0), clip=clip, norm=eval_cfg.norm)}
  names = ['pgd'] + [n for n in eval_cfg.attacks if n != 'pgd']
  return [built[n]() for n in names]


def robustness_report(evaluator: Evaluator, params, data: dict[str, np.ndarray], eval_cfg, *,
                      clip=None, extra: dict | None = None, transfer=None) -> dict:
  """Clean metrics, a curve per evaluation attack (and the `transfer` attack's, when given:
  a function of the primary attack returning a `TransferAttack`) and their per-sample worst case
  over the noise grid, and (with `eval_cfg.masking_checks`) the gradient-masking checks, as one
  JSON-able dict."""
  task = evaluator.task
  metric = task.primary_metric
  levels = sorted(set([0.0, *map(float, eval_cfg.noise_levels)]))
  attacks_ = [evaluator.resolve(a) for a in evaluation_attacks(eval_cfg, clip)]
  if transfer is not None:
    attacks_.append(transfer(attacks_[0]))
  per_sample: dict[str, list[np.ndarray]] = {}
  curves = evaluator.curves(params, data, levels, attacks_, desc='robustness',
                            per_sample=per_sample)
  primary = attacks_[0].describe()
  report = {'task': task.name, 'metric': metric, 'higher_is_better': task.higher_is_better,
            'num_samples': len(data['id']), **(extra or {}),
            'attack': primary, 'results': curves[primary['name']],
            'attacks': [a.describe() for a in attacks_], 'curves': curves,
            'per_sample': per_sample_entry(task, data['id'], levels, per_sample)}
  if len(attacks_) > 1:
    report['worst_case'] = {
        'over': [a.describe()['name'] for a in attacks_],
        'rule': f'per sample, the attack with the lowest {task.sample_score_name}; '
                'ties: the higher loss'}
  if eval_cfg.masking_checks:
    report.update(masking_checks(evaluator, params, data, eval_cfg, attacks_[0], curves, levels))
  if eval_cfg.get('frequency_levels', ()):
    report['frequency'] = frequency_curve(evaluator, params, data, eval_cfg, clip)
  return report


def frequency_curve(evaluator: Evaluator, params, data: dict[str, np.ndarray], eval_cfg,
                    clip=None) -> dict:
  """The VAFA curve (`vafa.VAFASettings`) at each budget of `eval_cfg.frequency_levels`
  (q_max, grey levels), with the largest L2 norm each budget allows per sample (input units):
  its own section of the report, since its budgets are not Lp radii."""
  from robust_med import vafa
  grey = float(eval_cfg.get('frequency_grey_level', 0.0) or 0.0)
  how = 'config.eval.frequency_grey_level'
  if not grey:
    if clip:
      grey, how = (float(clip[1]) - float(clip[0])) / 255, '1/255 of the data range'
    else:
      lo, hi = np.percentile(np.asarray(data['image'], np.float64), [0.5, 99.5])
      grey = float(hi - lo) / 255 or 1 / 255
      how = "1/255 of the evaluated images' 0.5–99.5th percentile range"
  block = int(eval_cfg.get('frequency_block', 8))
  attack = vafa.VAFASettings(steps=int(eval_cfg.get('frequency_steps', 20)), block=block,
                             grey_level=grey, clip=tuple(clip) if clip else None)
  levels = sorted(set([0.0, *map(float, eval_cfg.frequency_levels)]))
  rows = evaluator.curves(params, data, levels, (attack,), desc='frequency',
                          worst_case=False)[attack.describe()['name']]
  shape = np.shape(data['image'])[1:]
  for row in rows:
    row['q_max'] = row['eps']
    row['max_l2'] = vafa.max_l2(shape, row['eps'], block, grey)
  return {'attack': {**attack.describe(), 'grey_level_from': how}, 'results': rows,
          'note': 'budgets are quantization steps (q_max, grey levels), not comparable with the '
                  'Lp noise grid; this curve is not part of the worst case'}


def per_sample_entry(task, ids, levels, values: dict[str, list[np.ndarray]]) -> dict:
  """The report's per-sample metric (`task.sample_metric`) of every curve at every noise level,
  with the samples' ids: what paired comparisons of models evaluated on the same samples read
  (`robust_med.stats.compare_runs`). Values are rounded to 6 decimals."""
  return {'metric': task.sample_metric_label(), 'higher_is_better': task.higher_is_better,
          'eps': [float(e) for e in levels], 'ids': np.asarray(ids).astype(int).tolist(),
          'values': {name: [np.round(v, 6).tolist() for v in per_level]
                     for name, per_level in values.items()}}


def masking_checks(evaluator: Evaluator, params, data, eval_cfg, pgd: attacks.PGDSettings,
                   curves: dict, levels: list[float]) -> dict:
  """Runs the extra attacks the gradient-masking checks need and the checks themselves."""
  task = evaluator.task
  weak = dataclasses.replace(pgd, steps=eval_cfg.weak_steps or max(1, pgd.steps // 5))
  noise = attacks.RandomNoise(norm=pgd.norm, clip=pgd.clip)
  pgd_name, weak_name, noise_name = (a.describe()['name'] for a in (pgd, weak, noise))
  nonzero = [e for e in levels if e > 0]
  extra = evaluator.curves(params, data, nonzero, (weak, noise), worst_case=False,
                           desc='masking checks')
  huge_eps = eval_cfg.huge_eps or gradient_masking.auto_huge_eps(data['image'], pgd.norm,
                                                                 pgd.clip)
  huge = evaluator.curves(params, data, [huge_eps], (pgd,), desc='huge ε')[pgd_name][0]
  checks = checks_from_curves(task, eval_cfg, curves, pgd_name, extra[weak_name], weak_name,
                              extra[noise_name], huge)
  return {'checks': checks,
          'check_attacks': {'weak': weak.describe(), 'random': noise.describe(),
                            'huge': {**attacks.describe_at(pgd, huge_eps, data['image']),
                                     'eps_rule': 'config.eval.huge_eps' if eval_cfg.huge_eps
                                     else gradient_masking.auto_huge_eps.__doc__.split('\n')[0]}},
          'check_curves': {weak_name: extra[weak_name], noise_name: extra[noise_name],
                           'huge-eps': [huge]},
          'warnings': gradient_masking.warnings_for(checks)}


def checks_from_curves(task, eval_cfg, curves: dict, pgd_name: str, weak: list, weak_name: str,
                       noise: list, huge: dict) -> list[dict]:
  """The gradient-masking checks of a report's curves (the attacks already run)."""
  metric = task.primary_metric
  clean = curves[pgd_name][0]
  free = [n for n in curves if n.startswith('square-')]  # gradient-free curves
  transfer = [n for n in curves if n.startswith('transfer-')]
  return gradient_masking.run_checks(
      metric=metric, higher_is_better=task.higher_is_better, floor=task.metric_floor(),
      clean=clean[metric], curves=curves, strong=pgd_name, weak=weak, weak_name=weak_name,
      random=noise, huge=huge, tolerance=eval_cfg.check_tolerance,
      floor_tolerance=eval_cfg.floor_tolerance, floor_metric=task.floor_metric,
      floor_clean=clean.get(task.floor_metric or metric),
      gradient_free=curves[free[0]] if free else None,
      gradient_free_name=free[0] if free else '',
      transfer=curves[transfer[0]] if transfer else None,
      transfer_name=transfer[0] if transfer else '',
      white_box=WHITE_BOX_WORST_CASE if WHITE_BOX_WORST_CASE in curves else pgd_name)


def recheck(task, eval_cfg, report: dict) -> dict:
  """`report` with its masking checks recomputed by the current rules from the curves it
  stores (no attack is rerun; the task's floor must be set, e.g. by loading the report's
  split), and the fact recorded under 'checks_recomputed'."""
  stored = report['check_curves']
  pgd_name = report['attack']['name']
  weak_name = report['check_attacks']['weak']['name']
  noise_name = report['check_attacks']['random']['name']
  checks = checks_from_curves(task, eval_cfg, report['curves'], pgd_name, stored[weak_name],
                              weak_name, stored[noise_name], stored['huge-eps'][0])
  before = {c['name']: c['passed'] for c in report['checks']}
  return {**report, 'checks': checks, 'warnings': gradient_masking.warnings_for(checks),
          'checks_recomputed': {'from': 'the stored curves (no attack rerun)',
                                'before': before}}


def make_evaluator(task, model, mesh, config) -> Evaluator:
  """The evaluator of `config.eval`'s attacks."""
  return Evaluator(task, model, mesh, evaluation_attacks(config.eval, config.attack.clip),
                   batch_size=config.eval.batch_size, seed=config.eval.seed,
                   progress=config.progress_bar, chunk_steps=config.eval.get('chunk_steps', 0),
                   square_remaining_only=config.eval.get('square_remaining_only', True))


def note_subset(task, info, extra: dict) -> None:
  """Says `task.subset_note(info)` (a capped split, a missing class) on stderr now and keeps it in
  the report's data section (`extra['data']['subset']`)."""
  note = task.subset_note(info)
  if note:
    print(f'warning: {note}', file=sys.stderr)
    extra['data']['subset'] = note


def data_provenance(config, split: str, split_size: int) -> dict:
  """Report entries saying which data it was computed on: the split, and the data root, the
  split's size and the dataset settings."""
  root = config.data.root
  return {'split': split,
          'data': {'root': os.path.abspath(os.path.expanduser(root)) if root else '',
                   'split_size': int(split_size), 'settings': config.data.to_dict()}}


def evaluate_and_write(evaluator: Evaluator, params, data: dict[str, np.ndarray], config,
                       out: str, extra: dict, info=None) -> dict:
  """The robustness report of `params` on `data` (capped by `config.eval.max_samples`), written
  into `out` as robustness.json, robustness.png and examples.png (and, when `config.shift` asks
  for it, shift.json and shift.png: `robust_med.shift`; when `config.physical` asks for it,
  physical.json and physical.png: `robust_med.physical_report`); failed checks are printed as
  warnings on stderr."""
  from robust_med import units
  data = evaluation_subset(data, config.eval.max_samples)
  extra = dict(extra, compute_dtype=config.model.get('compute_dtype', 'float32'),
               protocol=config.get('protocol', 'robust_med'),
               eval_settings=json.loads(config.eval.to_json_best_effort()))
  unit_report = units.report(config)
  if unit_report:
    extra['units'] = unit_report
  transfer = None
  if config.eval.get('transfer_from', ''):
    transfer = lambda base: transfer_attack(evaluator.task, info, data['image'], evaluator.mesh,
                                            config, base)
  report = robustness_report(evaluator, params, data, config.eval, clip=config.attack.clip,
                             extra=extra, transfer=transfer)
  if unit_report:  # Every row also in the paper's units.
    for rows in report['curves'].values():
      for row in rows:
        row['eps_paper'] = row['eps'] / unit_report['model_per_paper']
  os.makedirs(out, exist_ok=True)
  write_examples(evaluator, params, data, config.eval.noise_levels,
                 os.path.join(out, 'examples.png'), title=extra.get('method', 'model'))
  from robust_med import shift  # Before robustness.json, which marks a finished evaluation.
  if shift.wanted(config):
    shift.evaluate_and_write(evaluator, params, data, config, out, extra)
  from robust_med import physical_report
  if physical_report.wanted(config):
    physical = physical_report.evaluate_and_write(evaluator, params, data, config, out, extra)
    write_physical_examples(evaluator, params, data, config, physical, out,
                            title=extra.get('method', 'model'))
    report.setdefault('warnings', []).extend(physical['warnings'])
  write_report(out, report)
  tensorboard_log.write_robustness(out, report, active=tensorboard_log.enabled(config))
  report_page.write_pages(out)  # report.html, from the files just written
  for line in report.get('warnings', []):
    print(f'warning: {line}', file=sys.stderr)
  return report


def example_levels(noise_levels) -> list[float]:
  """Clean and two noise levels of the grid for examples.png: its middle and its largest."""
  nonzero = sorted(e for e in set(map(float, noise_levels)) if e > 0)
  picked = [nonzero[(len(nonzero) - 1) // 2], nonzero[-1]] if nonzero else []
  return [0.0, *dict.fromkeys(picked)]


def write_examples(evaluator: Evaluator, params, data: dict[str, np.ndarray], noise_levels,
                   path: str, *, num: int = 4, title: str = 'model') -> None:
  """examples.png (`examples_figure`)."""
  save_figure(examples_figure(evaluator, params, data, noise_levels, num=num, title=title), path)


def write_physical_examples(evaluator: Evaluator, params, data: dict[str, np.ndarray], config,
                            report: dict, out: str, *, num: int = 3, title: str = 'model') -> None:
  """physical_<kind>.png for each kind of a physical report: `num` samples clean and under the
  worst parameters the kind's attack finds at its largest budget, the change it makes (the
  field, the ghosts) beside the prediction."""
  from robust_med import physical_report
  for kind, r in report['kinds'].items():
    pgd = physical_report.attacks_for(config, kind, tuple(report['value_range']))[0]
    one = Evaluator(evaluator.task, evaluator.model, evaluator.mesh, pgd,
                    batch_size=evaluator.batch_size, seed=evaluator.seed, progress=False)
    save_figure(examples_figure(one, params, data, [0.0, max(r['budgets'])], num=num,
                                title=f'{title}, {kind}', unit=r['unit']),
                os.path.join(out, f'physical_{kind}.png'))


def section_cut(task, item: dict[str, np.ndarray]):
  """For one sample's record, the function that cuts an array on the sample's grid to the 2-D
  section its figures show (`Task.section`: volumes); other arrays pass unchanged."""
  index = task.section(item)
  grid = np.shape(item['image'])[:-1]

  def cut(a):
    a = np.asarray(a)
    return a[index] if index is not None and a.shape[:len(grid)] == grid else a
  return cut


def examples_figure(evaluator: Evaluator, params, data: dict[str, np.ndarray], noise_levels, *,
                    num: int = 4, title: str = 'model', unit: str = ''):
  """The examples figure: `num` samples spread over `data` (fixed: the same ones every time),
  clean and under the primary attack at two noise levels: the input, and per level the
  perturbation (amplified to its own range, with its norm) and the prediction against the ground
  truth, drawn by the task (`Task.draw`) and titled with the task's per-sample score. With `unit`
  (a physical attack's budget unit) the budget is labelled in it and no pixel norm is measured."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from robust_med.tasks.base import show_image
  task = evaluator.task
  n = len(data['id'])
  index = np.unique(np.linspace(0, n - 1, min(num, n)).round().astype(int))
  records = {k: v[index] for k, v in data.items()}
  batch, valid = sharding.pad_batch(records, sharding.round_up(len(index),
                                                               evaluator.mesh.devices.size))
  device_batch = sharding.put_batch(batch, evaluator.mesh)
  levels = example_levels(noise_levels)
  norm = evaluator.attack.norm
  views = []
  for eps in levels:
    x = evaluator.perturb(params, device_batch, eps, jax.random.key(evaluator.seed))
    outputs = jax.device_get(evaluator._apply(params, x))
    stats = jax.device_get(evaluator._stats(params, device_batch, x))
    scores = task.sample_scores({k: np.asarray(v)[:valid] for k, v in stats.items()})
    views.append((eps, np.asarray(x)[:valid], outputs, scores))
  clean = records['image']
  cols = 2 + 2 * (len(levels) - 1)
  fig, axes = plt.subplots(valid, cols, figsize=(2.1 * cols, 2.2 * valid + 0.5), squeeze=False)
  for i in range(valid):
    item = {k: v[i] for k, v in records.items()}
    cut = section_cut(task, item)
    item = {k: cut(v) for k, v in item.items()}
    show_image(axes[i][0], cut(clean[i]))
    axes[i][0].set_title(f'input (id {int(item["id"])})', fontsize=7)
    col = 1
    for eps, x, outputs, scores in views:
      if eps > 0:
        delta = x[i] - clean[i]
        size = float(np.max(np.abs(delta))) or 1.0
        span = float(clean[i].max() - clean[i].min())
        ax = axes[i][col]
        ax.imshow(cut(delta)[..., 0], cmap='seismic', vmin=-size, vmax=size)
        ax.set_axis_off()
        if unit:
          ax.set_title(f'change at {eps:g} ({unit})\n(shown ×{span / (2 * size):.0f})',
                       fontsize=7)
        else:
          measured = float(attacks.perturbation_norm(delta[None], norm)[0])  # The whole sample's.
          ax.set_title(f'noise at ε={eps:g}: {norm.upper()} {measured:.3g}\n'
                       f'(shown ×{span / (2 * size):.0f})', fontsize=7)
        col += 1
      ax = axes[i][col]
      task.draw(ax, cut(x[i]), jax.tree.map(lambda o: cut(np.asarray(o)[i]), outputs), item)
      ax.set_axis_off()
      ax.set_title(f'{"clean" if eps == 0 else f"ε={eps:g}"}: score {scores[i]:.2f}', fontsize=7)
      col += 1
  attack = evaluator.attack.describe()['name']
  fig.suptitle(f'{title}: prediction vs ground truth, clean and under {attack} '
               f'({unit or norm.upper()}); score = {task.sample_score_name}', fontsize=8)
  fig.tight_layout()
  return fig


def write_report(workdir: str, report: dict) -> None:
  """Writes robustness.png (primary metric vs noise level), then robustness.json, each
  atomically: a report's JSON present means the run's evaluation is complete."""
  os.makedirs(workdir, exist_ok=True)
  plot_curve(report, os.path.join(workdir, 'robustness.png'))
  write_json(os.path.join(workdir, 'robustness.json'), report)


def plot_curve(report: dict, path: str) -> None:
  """Metric vs noise level: every attack's curve, the worst case, and random noise if checked."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  metric = report['metric']
  norm = report['attack']['norm'].upper()
  curves = dict(report.get('curves') or {report['attack']['name']: report['results']})
  for name, rows in (report.get('check_curves') or {}).items():
    if name == 'random-noise':
      curves[name] = [report['results'][0], *rows]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  styles = {WORST_CASE: dict(lw=2.5, color='k'), 'random-noise': dict(ls=':', color='gray')}
  values = []
  for name, rows in curves.items():
    ys = [r[metric] for r in rows]
    values += ys
    ax.plot([r['eps'] for r in rows], ys, marker='o', ms=3, label=name,
            **styles.get(name, {}))
  ax.set_xlabel(f'noise level ε ({norm} norm)')
  ax.set_ylabel(metric_label(metric, report.get('higher_is_better', True)))
  if report.get('higher_is_better', True) and values and 0 <= min(values) and max(values) <= 1:
    ax.set_ylim(0, 1.0)
  failed = [c['name'] for c in report.get('checks', []) if not c['passed']]
  title = f'{report.get("method", "model")}: {metric.upper()} under attack ({norm})'
  ax.set_title(title + ('\nFAILED: ' + ', '.join(failed) if failed else ''), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  save_figure(fig, path)


def evaluate_checkpoint(config, workdir: str, *, split: str = '', out: str = '',
                        step: int | None = None) -> dict:
  """Evaluates the checkpoint at `step` (default: the latest) of the run in `workdir` on the
  named `split` (default `config.data.eval_split`) of the data `config.data` describes, which may
  be another folder than the one it was trained on. Restores the parameters alone; writes the
  report into `out` (default `workdir/eval/<split>/`) with the data root, split, sample count and
  checkpoint step that produced it. Returns the report."""
  from robust_med.tasks import get_task_class
  split = split or config.data.eval_split
  out = os.path.abspath(out or os.path.join(workdir, 'eval', split))
  if out == os.path.abspath(workdir):
    raise errors.UserError(f'--out={out} is the run\'s own workdir: its robustness.json is the training '
                    'run\'s report; pick another folder (default: <workdir>/eval/<split>).')
  if os.path.exists(out) and not os.path.isdir(out):
    raise errors.UserError(f'--out={out} is a file: pass a folder for the report.')
  task = get_task_class(config.task)(config)
  splits = task.splits()
  if split not in splits:
    raise errors.UserError(f'unknown split {split!r}: the data ({config.data.root or config.data.name}) '
                    f'declares the splits {list(splits)}; pass --split=<one of them>.')
  data, info = task.load_split(split)
  from robust_med import units
  config = units.resolve(config, data['image'].shape[1:])
  mesh = sharding.make_mesh(config.mesh.num_devices)
  model, params, meta, step = restore_model(task, workdir, info, data['image'], mesh, step,
                                            what=f'The {split!r} split of the data')
  extra = {'method': meta.get('method', ''), **data_provenance(config, split, len(data['id'])),
           'checkpoint': {'workdir': os.path.abspath(workdir), 'step': int(step)}}
  note_subset(task, info, extra)
  os.makedirs(out, exist_ok=True)
  write_json(os.path.join(out, 'config.json'), json.loads(config.to_json_best_effort()))
  return evaluate_and_write(make_evaluator(task, model, mesh, config), params, data, config, out,
                            extra, info)


def restore_model(task, workdir: str, info, images: np.ndarray, mesh, step: int | None = None,
                  *, what: str = 'The data', config=None):
  """The model (built by `task` from the data `info`, with `config`'s model settings, default
  the task's) and the parameters alone of the checkpoint at `step` (default: the latest) of the
  run in `workdir`, replicated on `mesh`; with the checkpoint's header and step. One clear
  `UserError` when the checkpoint belongs to another head or was trained on data whose signature
  (`Task.data_signature`) differs from `info`'s."""
  from robust_med import checkpointing
  mngr = checkpointing.reader(workdir)
  step = checkpointing.pick_step(mngr, step)
  meta = checkpointing.read_meta(mngr, step)
  where = checkpointing.checkpoint_dir(workdir)
  if meta.get('task') != task.name:
    raise errors.UserError(f'The checkpoint in {where} belongs to the {meta.get("task")!r} head but the '
                    f'config is for the {task.name!r} head: evaluate it with the config it was '
                    'trained with (leave --config out to use the run\'s config.json).')
  signature = task.data_signature(info)
  if meta.get('data', signature) != signature:
    root = task.config.data.root or task.config.data.name
    raise errors.UserError(f'{what} ({root}) has {_pairs(signature)} but the checkpoint\'s model in '
                    f'{where} was trained on {_pairs(meta["data"])}: evaluate on data with the '
                    f'same {" and ".join(signature)} (or train a model for this data).')
  model = precision.build_model(task if config is None else type(task)(config), info)
  like = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)['params'],
                        jax.ShapeDtypeStruct((1, *images.shape[1:]), images.dtype))
  rep = sharding.replicated(mesh)
  like = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), like)
  params = checkpointing.restore_params(
      mngr, step, like, fix='evaluate it with the config it was trained with (leave --config out '
      'to use the run\'s config.json).')
  mngr.close()
  return model, params, meta, step


def _pairs(d: dict) -> str:
  return ', '.join(f'{k}={v}' for k, v in d.items())


def main(argv=None) -> None:
  """`python -m robust_med.evaluate`: parses the flags and evaluates a run's checkpoint; bad input
  ends in one `error:` line with exit status 2."""
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config to evaluate with (default: the run\'s '
                                  'own config.json); override keys with --config.<key>=<value>, '
                                  'e.g. --config.data.root=PATH.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir of a robust_med.main run.')
  flags.DEFINE_string('split', '', 'Split of the data to evaluate on (default: '
                      'config.data.eval_split, i.e. val): e.g. test, or any list in splits.json.')
  flags.DEFINE_string('out', '', 'Folder for the report (default: <workdir>/eval/<split>).')
  flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
  flags.DEFINE_list('noise_levels', None, 'Shorthand for --config.eval.noise_levels, e.g. 0,1,5.')
  flags.DEFINE_integer('steps', None, 'Shorthand for --config.eval.steps (PGD iterations).')
  flags.DEFINE_enum('norm', None, ['l2', 'linf'], 'Shorthand for --config.eval.norm.')
  flags.mark_flags_as_required(['workdir'])

  @cli.guard
  def main(argv):
    cli.reject_positional(argv)
    f = flags.FLAGS
    config = f.config
    if f.noise_levels is not None:
      try:
        config.eval.noise_levels = tuple(float(e) for e in f.noise_levels)
      except ValueError:
        raise errors.UserError(f'--noise_levels={",".join(f.noise_levels)} is not a list of numbers: '
                        'use e.g. --noise_levels=0,1,5.') from None
    if f.steps is not None:
      config.eval.steps = f.steps
    if f.norm is not None:
      config.eval.norm = f.norm
    cli.prepare(config)
    report = evaluate_checkpoint(config, f.workdir, split=f.split, out=f.out,
                                          step=f.step)
    data = report['data']
    print(f'{report["split"]} split of {data["root"] or config.data.name}: '
          f'{report["num_samples"]} of {data["split_size"]} samples, checkpoint step '
          f'{report["checkpoint"]["step"]} of {report["checkpoint"]["workdir"]}')
    if data.get('subset'):
      print(f'Note: {data["subset"]}.')
    for name, rows in report['curves'].items():
      for row in rows:
        print(json.dumps({'attack': name, **{k: v for k, v in row.items() if k != 'worst_of'}}))
    out = f.out or os.path.join(f.workdir, 'eval', report['split'])
    print(f'Done: robustness.json, robustness.png, examples.png in {os.path.abspath(out)}')

  app.run(main, argv=argv, flags_parser=lambda a: cli.parse_flags(cli.with_saved_config(a)))


if __name__ == '__main__':
  main()
