"""Recomputes the gradient-masking checks of finished runs from the curves their reports store
(no attack is rerun) with the current rules, e.g. after a head changed its floor metric, and
records that in each report ('checks_recomputed', with the verdicts before).

  python experiments/recheck_masking.py runs/bccd/std runs/bccd/sat_eps5
"""

from __future__ import annotations

import json
import os
import sys

from robust_med import cli, evaluate
from robust_med.tasks import get_task_class

if __name__ == '__main__':
  for run in sys.argv[1:]:
    with open(os.path.join(run, 'robustness.json')) as f:
      report = json.load(f)
    config = cli.load_workdir_config(run)
    task = get_task_class(config.task)(config)
    task.load_split(report['split'])  # A head's floor may depend on the split (landmarks).
    new = evaluate.recheck(task, config.eval, report)
    evaluate.write_report(run, new)
    print(run, 'now', {c['name']: c['passed'] for c in new['checks']},
          'before', new['checks_recomputed']['before'])
