#!/usr/bin/env bash
# Protocol robust_med (',robust_med' after the variant): the settings these results were
# measured with before issue 27; experiments/paper_protocol_reruns.sh measures the paper's.
# Chooses AMAT-boundary's max_margin on a tuning split carved from the training volumes (20% of
# them by the hash rule; data.tune_fraction), never on val, which reports the long sweep.
# AMAT with refine=boundary and ξ from its own 2 warm-up epochs, max_margin ∈ {5, 10, none},
# trained 8 epochs on (at most) 80 of the remaining training volumes, evaluated on 64 slices of
# the tuning volumes with L2 PGD-20 and APGD-20 (worst case). Resumable: rerun after a kill.
#   bash experiments/hippocampus_tune_max_margin.sh [DATA_ROOT] [OUT_DIR]
set -euo pipefail
root=${1:-../shared/data/msd_hippocampus}
out=${2:-runs/hippocampus_tune}
python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu,robust_med --methods=amat \
  --xi_from=warmup --amat_variant=refine=boundary,max_margin=5 \
  --amat_variant=refine=boundary,max_margin=10 --amat_variant=refine=boundary \
  --workdir="$out" --config.data.root="$root" --config.data.max_volumes=80 \
  --config.data.tune_fraction=0.2 --config.data.eval_split=tune \
  --config.num_epochs=8 --config.attack.steps=5 \
  --config.eval.noise_levels='(0,1,3,5,7,10,15)' --config.eval.max_samples=64 \
  --config.eval.batch_size=64 --config.eval.steps=20 --config.eval.apgd_steps=20 \
  --config.eval.masking_checks=False --config.progress_bar=False
