"""Square's cost per head: its query budget, wall time and forward passes per second, beside
PGD-<eval.steps> at the same budget, and how far each got (the primary metric under attack).

  python benchmarks/square_cost.py                       # every head's synthetic config
  python benchmarks/square_cost.py --queries=1000,5000 --configs=configs/busi_rtda.py:synthetic

Per config: its evaluation split (capped by eval.max_samples), a fresh initialisation (the cost
does not depend on the weights), the config's evaluation norm and the largest level of its noise
grid. Each attack runs once to compile, then is timed (best of --repeats).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (puts the repository root on the path)


from robust_med import evaluate, sharding, square  # noqa: E402

CONFIGS = ('configs/prostate_amat.py:synthetic', 'configs/ceph_amat.py:synthetic',
           'configs/bccd_amat.py:synthetic', 'configs/busi_rtda.py:synthetic')


def run(spec: str, queries: list[int], repeats: int) -> list[dict]:
  config, task, data, mesh, model, params = common.fresh_model(spec)
  eps = float(max(config.eval.noise_levels))
  clip = tuple(config.attack.clip) or None
  pgd = evaluate.evaluation_attacks(config.eval, clip)[0]
  attacks_ = [pgd] + [square.SquareSettings(queries=q, clip=clip, norm=config.eval.norm)
                      for q in queries]
  evaluator = evaluate.Evaluator(task, model, mesh, attacks_, batch_size=config.eval.batch_size,
                                 seed=config.eval.seed, progress=False)
  rows = []
  for attack in attacks_:
    measured = {}

    def once():
      measured['stats'] = evaluator.sample_stats(params, data, eps, attack)
    once()  # compile
    seconds = common.best_time(once, repeats, warmup=0)
    passes = (attack.queries if isinstance(attack, square.SquareSettings)
              else 2 * attack.steps + 1)  # PGD: a forward and a backward per step
    rows.append({'config': spec, 'task': task.name, 'samples': len(data['id']),
                 'input': 'x'.join(map(str, data['image'].shape[1:])), 'norm': config.eval.norm,
                 'eps': eps, 'attack': attack.describe()['name'], 'seconds': seconds,
                 'ms_per_image': 1000 * seconds / len(data['id']),
                 'passes_per_s': passes * len(data['id']) / seconds,
                 task.primary_metric: task.summarize(measured['stats'])[task.primary_metric]})
  for r in rows:
    r['x_pgd_time'] = r['seconds'] / rows[0]['seconds']
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--configs', default=','.join(CONFIGS))
  p.add_argument('--queries', default='1000,5000', help='Square budgets (forward passes)')
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--json', default='')
  args = p.parse_args()
  sharding.configure_host_devices(0)
  rows = []
  for spec in args.configs.split(','):
    rows += run(spec, [int(q) for q in args.queries.split(',')], args.repeats)
    print(common.table([r for r in rows if r['config'] == spec],
                       ['task', 'samples', 'input', 'norm', 'eps', 'attack', 'seconds',
                        'ms_per_image', 'passes_per_s', 'x_pgd_time']), flush=True)
  common.write_json(args.json, {'benchmark': 'square_cost', 'rows': rows})


if __name__ == '__main__':
  main()
