#!/usr/bin/env bash
# Protocol robust_med (',robust_med' after the variant): the settings these results were
# measured with before issue 27; experiments/paper_protocol_reruns.sh measures the paper's.
# CPU-sized STD / SAT(ε = 1, 5, 10, 15) / AMAT(Δε = 2.5) sweep on the shared MSD Hippocampus data
# (the run quoted in experiments/README.md). Resumable: rerun the same command after a kill.
#   bash experiments/hippocampus_sweep.sh [DATA_ROOT] [OUT_DIR]
set -euo pipefail
root=${1:-../shared/data/msd_hippocampus}
out=${2:-runs/hippocampus_sweep}
python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu,robust_med --sat_eps=1,5,10,15 \
  --workdir="$out" --config.data.root="$root" --config.data.max_volumes=80 \
  --config.num_epochs=8 --config.attack.steps=5 \
  --config.eval.noise_levels='(0,1,3,5,7,10,15)' --config.eval.max_samples=96 \
  --config.eval.batch_size=96 --config.progress_bar=False
