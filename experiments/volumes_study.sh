#!/usr/bin/env bash
# Issue 32: 3-D vs 2-D segmentation of MSD Hippocampus volumes under attack, the budget per
# volume. The 3-D U-Nets (STD, SAT ε = 20, AMAT; configs/hippocampus3d_*.py:cpu) are trained and
# evaluated by one sweep on whole volumes; 2-D U-Nets (STD, AMAT, SAT ε = 5;
# configs/hippocampus_amat.py:cpu_long, seed 0, trained on slices here unless TWO_D_DIR already
# holds them, e.g. a seed of `verdict_reruns.sh hippocampus`) are evaluated on the same
# validation volumes slice by slice (`--config.model.ndim=2`), each volume attacked as one sample
# with the same L2 budgets in the same units (z-scored volume, `units.budgets=model`), the same
# attacks (PGD-20, APGD-20, VAFA at q_max 10 and 20 grey levels, 20 being the authors' budget),
# the same masking checks and the same 16 volumes. Per-volume Dice (ADI), HD95 and ASD per level
# in each robustness.json; then PGD-20 through the sliding window against the per-patch PGD-20 on
# the 3-D models. The comparison tables are `experiments/volumes_table.py OUT`.
#
#   bash experiments/volumes_study.sh [DATA_ROOT] [OUT] [TWO_D_DIR]
#
# Resumable: the sweep skips finished runs; a 2-D training or evaluation with a report is skipped.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs/volumes_study}
twod=${3:-$out/2d_models}
levels='(0.,5.,10.,20.,40.,80.)'
grid=(--config.eval.noise_levels="$levels" --config.eval.steps=20 --config.eval.apgd_steps=20
      --config.eval.max_samples=16 --config.progress_bar=False)
same_eval=("${grid[@]}" --config.eval.attacks='("pgd","apgd")'
           --config.eval.frequency_levels='(10.,20.)')
python -m robust_med.sweep --config=configs/hippocampus3d_amat.py:cpu --sat_eps=20 \
  --config.data.root="$data/msd_hippocampus" --workdir="$out/3d" "${same_eval[@]}"
for run in std amat sat_eps5; do
  if [ ! -d "$twod/$run/checkpoints" ]; then  # Trained with a token evaluation: the study's is below.
    case $run in std) m=(--config.method.name=std) ;; amat) m=(--config.method.name=amat) ;;
      sat_eps5) m=(--config.method.name=sat --config.method.eps=5.) ;; esac
    python -m robust_med.main --config=configs/hippocampus_amat.py:cpu_long "${m[@]}" \
      --config.data.root="$data/msd_hippocampus" --workdir="$twod/$run" \
      --config.eval.noise_levels='(0.,)' --config.eval.max_samples=8 \
      --config.eval.masking_checks=False --config.eval.transfer_from='' --config.progress_bar=False
  fi
  [ -f "$out/2d/$run/robustness.json" ] && continue
  python -m robust_med.evaluate --workdir="$twod/$run" --split=val --out="$out/2d/$run" \
    --config.data.root="$data/msd_hippocampus" --config.data.ndim=3 --config.model.ndim=2 \
    --config.data.spacing='(1.,1.,1.)' --config.units.budgets=model \
    --config.eval.transfer_from='' --config.eval.masking_checks=True "${same_eval[@]}"
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
