#!/usr/bin/env bash
# Issue 28: the four heads' comparisons re-run with 3 training seeds each, Square in the
# evaluation ensemble (and APGD-T with the DLR loss for classification: AutoAttack's order minus
# FAB-T), the transfer attack crafted on each seed's STD model, and the paired comparisons with
# intervals, Holm-adjusted p-values, verdicts and the minimum detectable difference in each
# summary.md. Plus the FGSM-augmentation claim on Hippocampus (STD vs fgsm_aug vs
# inverse_fgsm_aug vs fgsm_both_aug). The segmentation, landmark and detection configs run the
# `paper` protocol (their default since issue 27); classification runs robust_med's
# reconstruction of RTDA and its baselines.
#
#   bash experiments/verdict_reruns.sh STUDY [DATA_ROOT] [OUT]
#   STUDY: fgsm | hippocampus | ceph | bccd | busi | pneumonia
#
# Resumable: rerun the same command after a kill (finished runs are skipped; a sweep rerun with
# other evaluation settings re-evaluates its trained models). Sizes are the :cpu presets'. The
# evaluation sets, where the whole split does not fit a CPU session (each model's report runs
# PGD-100, APGD-100, Square-1000 and the transfer PGD-100 at every level), are capped and say
# so in summary.md; the how-many-samples line says whether the cap can resolve the question.
set -euo pipefail
study=${1:?fgsm, hippocampus, ceph, bccd, busi or pneumonia}
data=${2:-../shared/data}
out=${3:-runs/verdicts}
common=(--seeds=3 --transfer_from=std --config.progress_bar=False)
square=(--config.eval.attacks='("pgd","apgd","square")')
case $study in
  fgsm)  # 96 of the 1047 validation slices
    python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu_long \
      --methods=std,fgsm_aug,inverse_fgsm_aug,fgsm_both_aug --config.method.eps=0.1 \
      --config.data.root="$data/msd_hippocampus" --workdir="$out/fgsm" "${square[@]}" \
      "${common[@]}" ;;
  hippocampus)  # 96 of the 1047 validation slices; SAT at the two best budgets of the 1-seed sweep
    python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu_long --sat_eps=5,10 \
      --config.data.root="$data/msd_hippocampus" --workdir="$out/hippocampus" "${square[@]}" \
      "${common[@]}" ;;
  ceph)  # 32 of the 100 test images (Test1 less the 50 of val), as the one-seed study did: on 2
    # cores PGD-100 + APGD-100 on all 100 took about 50 min per model there, and Square-1000
    # costs about five PGD-100s (benchmarks/square_cost.py), so the whole split does not fit
    python -m robust_med.sweep --config=configs/ceph_amat.py:cpu --sat_eps=3 \
      --config.data.root="$data/isbi2015_ceph" --config.data.eval_split=test \
      --config.eval.max_samples=32 --config.eval.every_epochs=0 --workdir="$out/ceph" \
      "${square[@]}" "${common[@]}" ;;
  bccd)  # 32 of the 87 validation images
    python -m robust_med.sweep --config=configs/bccd_amat.py:cpu --sat_eps=5 \
      --config.data.root="$data/bccd" --config.eval.every_epochs=0 --config.eval.max_samples=32 \
      --workdir="$out/bccd" "${square[@]}" "${common[@]}" ;;
  busi|pneumonia)  # the whole validation split; all eight methods
    folder=$([ "$study" = busi ] && echo busi || echo pneumoniamnist_variant)
    files=$(echo std,rtda,at,aug,gradreg,at_aug,at_gradreg,amat | tr , '\n' \
            | sed "s|.*|configs/${study}_&.py:cpu|" | paste -sd,)
    python -m robust_med.sweep --config="configs/${study}_rtda.py:cpu" --method_configs="$files" \
      --config.data.root="$data/$folder" --workdir="$out/$study" \
      --config.eval.attacks='("pgd","apgd","apgd_t","square")' --config.shift.corruptions='()' \
      "${common[@]}" ;;
  *) echo "error: unknown study $study: use fgsm, hippocampus, ceph, bccd, busi or pneumonia" >&2
     exit 2 ;;
esac
echo "wrote $out/$study/summary.md, comparisons.csv, curves.png"
