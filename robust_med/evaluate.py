"""Clean metrics and robustness curves: the task's metric under PGD at each noise level of a grid.

The attack uses the norm the report names (`config.eval.norm`), and every report carries the full
attack description, so a number never travels without the norm and strength that produced it.

Standalone: `python -m robust_med.evaluate --workdir=DIR` recomputes `robustness.json` and
`robustness.png` from the latest checkpoint in DIR with the config saved there.
"""

from __future__ import annotations

import json
import os
import sys
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from robust_med import attacks, methods, sharding
from robust_med import data as data_lib


class Evaluator:
  """Runs a task's model over a dataset, clean or under attack, on a device mesh."""

  def __init__(self, task, model, mesh, attack: attacks.PGDSettings, *, batch_size: int = 64,
               seed: int = 0, progress: bool = True):
    self.task, self.model, self.mesh, self.attack = task, model, mesh, attack
    self.seed = seed
    n = mesh.devices.size
    self.batch_size = sharding.round_up(batch_size, n)
    self.progress = progress
    unroll = attacks.default_unroll()
    # On CPU the attack runs as a host loop over jitted chunks of unrolled steps (fast convolutions,
    # bounded compile time); elsewhere as one fori_loop.
    self.chunk = min(10, attack.steps) if unroll else attack.steps
    self._stats = jax.jit(self._stats_impl)
    self._chunk = jax.jit(self._chunk_impl, static_argnames=('steps',))

  def _loss_fn(self, params, batch):
    return lambda x: methods.total(self.task.loss_terms(self.model.apply({'params': params}, x),
                                                        batch))

  def _stats_impl(self, params, batch, x):
    outputs = self.model.apply({'params': params}, x)
    stats = dict(self.task.eval_stats(outputs, batch))
    stats['loss'] = methods.total(self.task.loss_terms(outputs, batch))
    return stats

  def _chunk_impl(self, params, batch, delta, eps, *, steps):
    a = self.attack
    alpha = a.step_size(eps, delta)
    loss_fn = self._loss_fn(params, batch)

    def body(_, d):
      return attacks.pgd_update(loss_fn, batch['image'], d, eps, alpha, norm=a.norm, clip=a.clip)
    if self.chunk < a.steps:
      for i in range(steps):
        delta = body(i, delta)
      return delta
    return jax.lax.fori_loop(0, steps, body, delta)

  def perturb(self, params, batch, eps: float, key) -> jax.Array:
    """The attacked images of a (device) batch at budget `eps`."""
    x = batch['image']
    if eps == 0:
      return x
    eps_v = jnp.full(x.shape[:1], eps, x.dtype)
    delta = attacks.pgd_init(x, eps_v, norm=self.attack.norm,
                             key=key if self.attack.random_start else None, clip=self.attack.clip)
    done = 0
    while done < self.attack.steps:
      k = min(self.chunk, self.attack.steps - done)
      delta = self._chunk(params, batch, delta, eps_v, steps=k)
      done += k
    return x + delta

  def run(self, params, arrays: dict[str, np.ndarray], noise_levels=(0.0,),
          desc: str = 'eval') -> list[dict[str, float]]:
    """Metrics at each noise level: [{'eps': e, <metric>: value, ..., 'loss': mean loss}]."""
    n_batches = data_lib.num_batches(len(arrays['id']), self.batch_size, False)
    key = jax.random.key(self.seed)
    bar = tqdm(total=n_batches * len(noise_levels), desc=desc, disable=not self.progress,
               leave=False, file=sys.stderr)
    results = []
    for eps in noise_levels:

      def attacked_stats(b, batch):
        bar.update(1)
        x = self.perturb(params, batch, float(eps), jax.random.fold_in(key, b))
        return self._stats(params, batch, x)

      stats = per_sample_outputs(attacked_stats, arrays, self.mesh, self.batch_size)
      row = {'eps': float(eps), **self.task.summarize(stats), 'loss': float(stats['loss'].mean())}
      results.append(row)
    bar.close()
    return results


def per_sample_outputs(fn, arrays: dict[str, np.ndarray], mesh, batch_size: int) -> dict:
  """Runs `fn(batch_index, device_batch) -> {name: (B, ...)}` over `arrays` in order, on the
  mesh, and returns the outputs concatenated over the whole set, padding dropped."""
  batch_size = sharding.round_up(batch_size, mesh.devices.size)
  source = data_lib.ArraySource(arrays)
  out: dict[str, list[np.ndarray]] = {}
  for b, batch in enumerate(data_lib.batches(source, batch_size, shuffle=False,
                                              drop_remainder=False)):
    batch, valid = sharding.pad_batch(batch, batch_size)
    for k, v in jax.device_get(fn(b, sharding.put_batch(batch, mesh))).items():
      out.setdefault(k, []).append(np.asarray(v)[:valid])
  return {k: np.concatenate(v) for k, v in out.items()}


def robustness_report(task, attack: attacks.PGDSettings, results, *, num_samples: int,
                      extra: dict | None = None) -> dict:
  return {'task': task.name, 'metric': task.primary_metric, 'attack': attack.describe(),
          'num_samples': num_samples, 'results': results, **(extra or {})}


def write_report(workdir: str, report: dict) -> None:
  """Writes robustness.json and robustness.png (primary metric vs noise level)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'robustness.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(report, f, indent=2)
  os.replace(path + '.tmp', path)
  plot_curve(report, os.path.join(workdir, 'robustness.png'))


def plot_curve(report: dict, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  metric = report['metric']
  a = report['attack']
  eps = [r['eps'] for r in report['results']]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(eps, [r[metric] for r in report['results']], marker='o',
          label=report.get('method', 'model'))
  ax.set_xlabel(f'noise level ε ({a["norm"].upper()} norm)')
  ax.set_ylabel(metric.upper())
  ax.set_ylim(0, 1.0)
  ax.set_title(f'{metric.upper()} under {a["name"]} ({a["norm"].upper()})')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  from robust_med import cli
  cli.run_evaluate(argv)


if __name__ == '__main__':
  main()
