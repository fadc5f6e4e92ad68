#!/usr/bin/env bash
# Issue 32: 3-D vs 2-D segmentation of MSD Hippocampus volumes under attack, the budget per
# volume. The 3-D U-Nets (STD, SAT ε = 20, AMAT; configs/hippocampus3d_*.py:cpu) are trained and
# evaluated by one sweep on whole volumes; the 2-D U-Nets of the hippocampus study (trained on
# slices, `verdict_reruns.sh hippocampus`) are evaluated on the same validation volumes slice by
# slice (`--config.model.ndim=2`), each volume attacked as one sample with the same L2 budgets in
# the same units (z-scored volume, `units.budgets=model`), the same attacks (PGD-20, APGD-20,
# VAFA at q_max 10 and 20 grey levels, 20 being the authors' budget) and the same 16 volumes.
# Per-volume Dice (ADI), HD95 and ASD per level in each robustness.json; then PGD-20 through
# the sliding window against the per-patch PGD-20 on the 3-D models. The comparison tables are `experiments/volumes_table.py OUT`.
#
#   bash experiments/volumes_study.sh [DATA_ROOT] [OUT] [TWO_D_SWEEP]
#
# Resumable: the sweep skips finished runs; a 2-D evaluation with a report is skipped.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs/volumes_study}
twod=${3:-runs/verdicts/hippocampus}
levels='(0.,5.,10.,20.,40.,80.)'
grid=(--config.eval.noise_levels="$levels" --config.eval.steps=20 --config.eval.apgd_steps=20
      --config.eval.max_samples=16 --config.progress_bar=False)
same_eval=("${grid[@]}" --config.eval.attacks='("pgd","apgd")'
           --config.eval.frequency_levels='(10.,20.)')
python -m robust_med.sweep --config=configs/hippocampus3d_amat.py:cpu --sat_eps=20 \
  --config.data.root="$data/msd_hippocampus" --workdir="$out/3d" "${same_eval[@]}"
for run in std sat_eps5 sat_eps10 amat; do
  [ -f "$out/2d/$run/robustness.json" ] && continue
  [ -d "$twod/$run/checkpoints" ] || { echo "no 2-D run $twod/$run: skipped" >&2; continue; }
  python -m robust_med.evaluate --workdir="$twod/$run" --split=val --out="$out/2d/$run" \
    --config.data.root="$data/msd_hippocampus" --config.data.ndim=3 --config.model.ndim=2 \
    --config.data.spacing='(1.,1.,1.)' --config.units.budgets=model \
    --config.eval.transfer_from='' "${same_eval[@]}"
done
# The cheaper per-patch variant beside the whole-volume PGD, on the 3-D models (the 2-D models
# have no training patch to tile by): its own reports, so the 3-D vs 2-D worst cases above stay
# over the same attacks.
for run in std sat_eps20 amat; do
  [ -f "$out/3d_patch/$run/robustness.json" ] && continue
  python -m robust_med.evaluate --workdir="$out/3d/$run" --split=val --out="$out/3d_patch/$run" \
    --config.data.root="$data/msd_hippocampus" --config.eval.transfer_from='' \
    --config.eval.masking_checks=False "${grid[@]}" --config.eval.frequency_levels='()' \
    --config.eval.attacks='("pgd","pgd_patch")'
done
echo "wrote $out/3d (summary.md), $out/2d/<run> and $out/3d_patch/<run>/robustness.json"
