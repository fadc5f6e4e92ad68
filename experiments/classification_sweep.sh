#!/usr/bin/env bash
# The classification head's comparison (issue 11; robust_med's reconstruction of RTDA, whose seed
# summary gives no settings, on a CPU): RTDA, its six baselines (STD, AT, gradient
# regularisation, augmentation, AT + augmentation, AT + gradient regularisation) and AMAT, trained
# with otherwise identical settings
# (configs/<dataset>_*.py:cpu) and evaluated on the `val` split: L∞ PGD and APGD on the grid
# 0, 1/255, 2/255, 4/255, 8/255 with their per-image worst case and the gradient-masking checks
# (robustness.json), the corruption suite at severities 1–5 (shift.json; BUSI also on its 28 px
# copy upsampled: a cross-resolution shift), then the same checkpoints under L2 PGD/APGD on the
# grid 0, 0.25, 0.5, 1 (<run>/eval_l2/). Resumable: rerun the same command after a kill.
#   bash experiments/classification_sweep.sh DATASET [DATA_ROOT] [OUT_DIR] [--config.<key>=<value> ...]
# DATASET is busi or pneumonia.
set -euo pipefail
ds=${1:?busi or pneumonia}
case $ds in
  busi) default_root=../shared/data/busi ;;
  pneumonia) default_root=../shared/data/pneumoniamnist_variant ;;
  *) echo "error: unknown dataset $ds: use busi or pneumonia" >&2; exit 2 ;;
esac
root=${2:-$default_root}
out=${3:-runs/$ds}
common=(--config.data.root="$root" --config.progress_bar=False "${@:4}")
# RTDA and AT right after STD: the runs the claims need most come first.
methods=std,rtda,at,aug,gradreg,at_aug,at_gradreg,amat
files=$(echo "$methods" | tr , '\n' | sed "s|.*|configs/${ds}_&.py:cpu|" | paste -sd,)
python -m robust_med.sweep --config="configs/${ds}_rtda.py:cpu" --workdir="$out" \
  --method_configs="$files" "${common[@]}"
python experiments/classification_summary.py "$out" --l2=eval_l2 > "$out/table.md"
for m in ${methods//,/ }; do
  if [ ! -f "$out/$m/eval_l2/robustness.json" ]; then
    python -m robust_med.evaluate --workdir="$out/$m" --split=val --out="$out/$m/eval_l2" \
      --norm=l2 --noise_levels=0,0.25,0.5,1 --config.shift.corruptions='()' \
      --config.data.shift_image_key='' --config.progress_bar=False > /dev/null
  fi
done
python experiments/classification_summary.py "$out" --l2=eval_l2 > "$out/table.md"
cat "$out/table.md"
