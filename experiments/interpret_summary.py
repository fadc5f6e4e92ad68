"""One table from several robust_med.interpret reports: per saliency method and model, the mean
alignment on clean images, each model's difference to the reference with Cohen's d_z [95 % CI]
and the Wilcoxon p-value (Holm-adjusted within its report), and the clean-vs-attacked agreement.

  python experiments/interpret_summary.py runs/busi/interpret [--metrics=iou@10,energy,auc]
"""

import argparse
import json
import math
import os


def _p(v):
  if v is None or (isinstance(v, float) and math.isnan(v)):
    return 'n/a'
  return f'{v:.2g}' if v >= 1e-4 else f'{v:.1e}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('folder', help='folder holding <split>_<method>/interpret.json reports')
  parser.add_argument('--metrics', default='iou@10,dice@10,pointing,energy,auc')
  args = parser.parse_args()
  metrics = args.metrics.split(',')
  reports = []
  for name in sorted(os.listdir(args.folder)):
    path = os.path.join(args.folder, name, 'interpret.json')
    if os.path.isfile(path):
      with open(path) as f:
        reports.append((name, json.load(f)))
  if not reports:
    raise SystemExit(f'error: no <run>/interpret.json under {args.folder}')
  head = ('| report | target | model | ' + ' | '.join(metrics)
          + ' | spearman clean↔attacked | top-k IoU clean↔attacked | accuracy (clean → attacked) |')
  lines = [head, '|---' * (len(metrics) + 6) + '|']
  for name, r in reports:
    for m in r['models']:
      s = r['summary'][m]
      cells = []
      for metric in metrics:
        mean = s['clean']['alignment'][metric]['mean']
        test = next((t for t in r['tests'] if t['kind'] == 'model' and t['condition'] == 'clean'
                     and t['b'] == m and t['metric'] == metric), None)
        if test is None:
          cells.append(f'{mean:.3f}')
        else:
          lo, hi = test['cohens_dz_ci']
          cells.append(f'{mean:.3f} (d_z {test["cohens_dz"]:+.2f} [{lo:+.2f}, {hi:+.2f}], '
                       f'p {_p(test["wilcoxon_p_holm"])})')
      st = s.get('stability', {})
      agree = [f'{v["mean"]:.3f}' for v in st.values()] or ['n/a', 'n/a']
      acc = s['clean']['task_metrics'].get('accuracy', float('nan'))
      acc_adv = s.get('attacked', {}).get('task_metrics', {}).get('accuracy', float('nan'))
      lines.append(f'| {name} | {r["settings"]["target"]} | {m} | ' + ' | '.join(cells)
                   + f' | {agree[0]} | {agree[1]} | {acc:.3f} → {acc_adv:.3f} |')
  first = reports[0][1]
  c = first['counts']
  print(f'{first["split"]} split: {c["used"]} annotated images used, {c["excluded_empty_mask"]} '
        f'excluded (empty mask); masks cover {c["mask_fraction"]["mean"]:.1%} of an image on '
        f'average. Cells: mean on clean images (d_z of the paired difference to '
        f'{first["reference"]} [95 % bootstrap CI], two-sided Wilcoxon p Holm-adjusted over the '
        'report\'s tests); attack: ' + (f'{first["attack"]["name"]} {first["attack"]["norm"]} '
                                        f'ε = {first["attack"]["eps"]:.4g}' if first['attack']
                                        else 'none') + '.\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
