"""The cost of a physical attack step against a pixel PGD step (issue 34's target: ≤ 1.2×).

  python benchmarks/physical_cost.py                         # the segmentation demo
  python benchmarks/physical_cost.py --kinds=bias_field,motion,gamma --steps=50 --repeats=3

On one config's evaluation split (capped by eval.max_samples; a fresh initialisation: the cost
does not depend on the weights), the evaluator runs pixel PGD-<steps> at the largest level of the
config's grid and PGD-<steps> on each physical perturbation's parameters at its largest default
budget, the same number of steps, batches and final scoring pass. Each attack runs once to
compile, then is timed (best of --repeats); `x_pixel` is its time over the pixel PGD's, so the
ratio per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)


from robust_med import config_base, evaluate, physical, sharding, shift  # noqa: E402


def run(spec: str, kinds: list[str], steps: int, repeats: int) -> list[dict]:
  config, task, data, mesh, model, params = common.fresh_model(spec)
  clip = tuple(config.attack.clip) or None
  pixel = dataclasses.replace(evaluate.evaluation_attacks(config.eval, clip)[0], steps=steps)
  value_range = shift.value_range(config, data['image'])
  runs = [(pixel, float(max(config.eval.noise_levels)))]
  for kind in kinds:
    settings = tuple(sorted(config_base.physical_settings(config, kind).items()))
    runs.append((physical.PhysicalPGD(kind, settings, steps=steps, clip=value_range),
                 physical.BUDGETS[kind][-1]))
  evaluator = evaluate.Evaluator(task, model, mesh, [a for a, _ in runs],
                                 batch_size=config.eval.batch_size, seed=config.eval.seed,
                                 progress=False)
  rows = []
  for attack, budget in runs:
    measured = {}

    def once():
      measured['stats'] = evaluator.sample_stats(params, data, budget, attack)
    once()  # compile
    seconds = common.best_time(once, repeats, warmup=0)
    rows.append({'config': spec, 'task': task.name, 'samples': len(data['id']),
                 'input': 'x'.join(map(str, data['image'].shape[1:])),
                 'attack': attack.describe()['name'], 'budget': budget, 'steps': steps,
                 'seconds': seconds, 'ms_per_step_per_image':
                     1000 * seconds / steps / len(data['id']),
                 task.primary_metric: task.summarize(measured['stats'])[task.primary_metric]})
  for r in rows:
    r['x_pixel'] = r['seconds'] / rows[0]['seconds']
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/prostate_amat.py:synthetic')
  p.add_argument('--kinds', default=','.join(physical.KINDS))
  p.add_argument('--steps', type=int, default=50)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--json', default='')
  args = p.parse_args()
  sharding.configure_host_devices(0)
  rows = run(args.config, args.kinds.split(','), args.steps, args.repeats)
  print(common.table(rows, ['task', 'samples', 'input', 'attack', 'budget', 'steps', 'seconds',
                            'ms_per_step_per_image', 'x_pixel']), flush=True)
  common.write_json(args.json, {'benchmark': 'physical_cost', 'steps': args.steps, 'rows': rows})


if __name__ == '__main__':
  main()
