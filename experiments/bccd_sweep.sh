#!/usr/bin/env bash
# Protocol robust_med (',robust_med' after the variant): the settings these results were
# measured with before issue 27; experiments/paper_protocol_reruns.sh measures the paper's.
# The detection head's comparison on BCCD blood cells (issue 10; the AMAT paper's §3.3 on a CPU):
# STD, SAT at each ε and AMAT (Δε = 2.5). AMAT twice: ξ = mean + 2·std of the STD model's clean
# per-sample training losses, one per term (box, obj, cls; the paper's rule for K terms; mean + 2·std is robust_med's reading), and ξ measured the
# same way on AMAT's own model after its STD warm-up epochs (the configs' default).
# configs/bccd_*.py:cpu — 192×192 letterboxed inputs, an 8-wide detector, 30 epochs, PGD-3 while
# training. Every model is evaluated on the `val` split with L2 PGD-100 and APGD-100 on the grid
# 0, 1, 2, 5, 10 (inputs in [0, 1]), their per-image worst case (by the image's average IoU) and
# the masking checks. Resumable: rerun the same command after a kill.
#   bash experiments/bccd_sweep.sh [DATA_ROOT] [OUT_DIR] [SAT_EPS] [--config.<key>=<value> ...]
# (overrides after the third argument apply to every run, e.g. a smaller evaluation).
set -euo pipefail
root=${1:-../shared/data/bccd}
out=${2:-runs/bccd}
sat_eps=${3:-1,5}
common=(--config.data.root="$root" --config.eval.every_epochs=0 --config.progress_bar=False
        "${@:4}")
python -m robust_med.sweep --config=configs/bccd_amat.py:cpu,robust_med --sat_eps="$sat_eps" \
  --workdir="$out" "${common[@]}"
if [ ! -f "$out/amat_xi-warmup/robustness.json" ]; then
  python -m robust_med.main --config=configs/bccd_amat.py:cpu,robust_med --workdir="$out/amat_xi-warmup" \
    "${common[@]}"
fi
runs=("STD=$out/std")
for eps in ${sat_eps//,/ }; do runs+=("SAT ε=$eps=$out/sat_eps$eps"); done
runs+=("AMAT (ξ from STD)=$out/amat" "AMAT (ξ from warm-up)=$out/amat_xi-warmup")
python experiments/compare.py "${runs[@]}" --out="$out" > /dev/null
echo "wrote $out/summary.md, curves.png, curves_map50_95.png, training.png"
