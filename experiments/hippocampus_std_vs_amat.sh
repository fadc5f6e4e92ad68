#!/usr/bin/env bash
# Protocol robust_med (',robust_med' after the variant): the settings these results were
# measured with before issue 27; experiments/paper_protocol_reruns.sh measures the paper's.
# CPU-sized STD vs AMAT on the shared MSD Hippocampus data (issue 2's acceptance run).
# Train on the 166 training volumes of splits.json, evaluate on 256 slices of the 42 validation
# volumes with L2 PGD-100 at ε ∈ {0, 1, 3, 5, 7, 10, 15}; prints the comparison table.
#   bash experiments/hippocampus_std_vs_amat.sh [DATA_ROOT] [OUT_DIR]
set -euo pipefail
root=${1:-../shared/data/msd_hippocampus}
out=${2:-runs/hippocampus}
for method in std amat; do
  python -m robust_med.main --config=configs/hippocampus_${method}.py:cpu,robust_med --workdir="$out/$method" \
    --config.data.root="$root" --config.eval.noise_levels='(0.,1.,3.,5.,7.,10.,15.)' \
    --config.progress_bar=False
done
python experiments/compare.py "$out/std" "$out/amat"
