#!/usr/bin/env bash
# Protocol robust_med (',robust_med' after the variant): the settings these results were
# measured with before issue 27; experiments/paper_protocol_reruns.sh measures the paper's.
# The landmark head's comparison on ISBI 2015 cephalograms (issue 9; the AMAT paper's §3.2 on a
# CPU): STD with the heatmap BCE loss (Yao et al.), and STD, SAT at each ε and AMAT (Δε = 1) with
# the Dice heatmap loss. AMAT twice: ξ = mean + 2·std of the STD(Dice) model's clean per-sample
# training losses, one per term (the paper's rule for K terms; mean + 2·std is robust_med's reading), and ξ measured the same way on AMAT's own
# model after its STD warm-up epochs (the configs' default). configs/ceph_*.py:cpu — 96×80
# inputs, U-Net 8×5, 40 epochs (where STD's clean validation MRE has plateaued:
# experiments/README.md), PGD-5 while training. Every model is evaluated on the `test` split (the
# 100 Test1 images after the 50 that validate) with L2 PGD-100 and APGD-100, their per-image worst
# case and the masking checks. Resumable: rerun the same command after a kill.
#   bash experiments/ceph_sweep.sh [DATA_ROOT] [OUT_DIR] [SAT_EPS] [--config.<key>=<value> ...]
# (overrides after the third argument apply to every run, e.g. a smaller evaluation).
set -euo pipefail
root=${1:-../shared/data/isbi2015_ceph}
out=${2:-runs/ceph}
sat_eps=${3:-1,2,3,5}
common=(--config.data.root="$root" --config.data.eval_split=test --config.eval.every_epochs=0
        --config.progress_bar=False "${@:4}")
python -m robust_med.sweep --config=configs/ceph_std_bce.py:cpu,robust_med --methods=std \
  --workdir="$out/bce" "${common[@]}"
python -m robust_med.sweep --config=configs/ceph_amat.py:cpu,robust_med --sat_eps="$sat_eps" \
  --workdir="$out/dice" "${common[@]}"
if [ ! -f "$out/dice/amat_xi-warmup/robustness.json" ]; then
  python -m robust_med.main --config=configs/ceph_amat.py:cpu,robust_med \
    --workdir="$out/dice/amat_xi-warmup" "${common[@]}"
fi
runs=("STD(BCE)=$out/bce/std" "STD(Dice)=$out/dice/std")
for eps in ${sat_eps//,/ }; do runs+=("SAT ε=$eps=$out/dice/sat_eps$eps"); done
runs+=("AMAT (ξ from STD)=$out/dice/amat" "AMAT (ξ from warm-up)=$out/dice/amat_xi-warmup")
python experiments/compare.py "${runs[@]}" --out="$out" > /dev/null
echo "wrote $out/summary.md, curves.png, curves_sdr_2mm.png, training.png"
