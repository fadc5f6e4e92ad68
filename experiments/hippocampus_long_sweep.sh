#!/usr/bin/env bash
# Protocol robust_med (',robust_med' after the variant): the settings these results were
# measured with before issue 27; experiments/paper_protocol_reruns.sh measures the paper's.
# The convergence-length sweep on MSD Hippocampus (issue 8): configs/hippocampus_amat.py:cpu_long
# (16 epochs, where STD's clean validation ADI has plateaued; 80 training volumes, PGD-5 while
# training, 96 validation slices, L2 PGD-100 + APGD-100), STD, SAT ε ∈ {5, 10}, and AMAT with the
# paper's refine rule and with boundary refine (max_margin chosen by
# experiments/hippocampus_tune_max_margin.sh), each with ξ from the sweep's STD model and ξ from
# its own 2 warm-up epochs. Resumable: rerun the same command after a kill.
#   bash experiments/hippocampus_long_sweep.sh [DATA_ROOT] [OUT_DIR] [MAX_MARGIN]
# Without MAX_MARGIN only the paper-refine AMAT runs are planned (the tuning may still be running).
set -euo pipefail
root=${1:-../shared/data/msd_hippocampus}
out=${2:-runs/hippocampus_long}
max_margin=${3:-}
variants=(--amat_variant=refine=paper)
if [[ -n "$max_margin" ]]; then
  variants+=("--amat_variant=refine=boundary,max_margin=$max_margin")
fi
python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu_long,robust_med --sat_eps=5,10 \
  --xi_from=std,warmup "${variants[@]}" --workdir="$out" --config.data.root="$root" \
  --config.progress_bar=False
