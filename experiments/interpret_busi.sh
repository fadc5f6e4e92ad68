#!/usr/bin/env bash
# Issue 12: do robust models look where clinicians look? STD vs AT vs RTDA (configs/busi_*.py:cpu,
# the classification comparison's settings) explained on the BUSI val split, each saliency map
# scored against the lesion masks, AT and RTDA each tested against STD (paired Wilcoxon and t-test,
# bootstrap effect sizes), and every model's maps under its own L∞ PGD-20 at ε = 2/255.
# Trains the three runs that are missing (the sweep's robustness report without the corruption
# suite), then one report per saliency method in RUNS/interpret/val_<method>/. Resumable: a
# finished report or run is skipped, an interrupted run resumes from its checkpoints.
#   bash experiments/interpret_busi.sh [RUNS] [DATA_ROOT] [METHODS]
set -euo pipefail
runs=${1:-runs/busi}
root=${2:-../shared/data/busi}
methods=${3:-gradcam,gradcam++,gradient,smoothgrad,integrated_gradients}
for m in std at rtda; do
  if [ ! -f "$runs/$m/robustness.json" ]; then
    python -m robust_med.main --config="configs/busi_$m.py:cpu" --config.data.root="$root" \
      --workdir="$runs/$m" --config.progress_bar=False --config.shift.corruptions='()' \
      --config.data.shift_image_key=''
  fi
done
for s in ${methods//,/ }; do
  if [ ! -f "$runs/interpret/val_$s/interpret.json" ]; then
    python -m robust_med.interpret --workdirs="$runs/std,$runs/at,$runs/rtda" \
      --labels=STD,AT,RTDA --method="$s" --split=val --config.data.root="$root" \
      --config.progress_bar=False > /dev/null
  fi
done
# Sensitivity analysis: Grad-CAM of the true class instead of the predicted one (a model that
# calls a lesion 'normal' is otherwise explained looking away from it).
if [ ! -f "$runs/interpret/val_gradcam_label/interpret.json" ]; then
  python -m robust_med.interpret --workdirs="$runs/std,$runs/at,$runs/rtda" \
    --labels=STD,AT,RTDA --method=gradcam --split=val --config.data.root="$root" \
    --config.interpret.target=label --out="$runs/interpret/val_gradcam_label" \
    --config.progress_bar=False > /dev/null
fi
