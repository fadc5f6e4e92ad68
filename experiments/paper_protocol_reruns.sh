#!/usr/bin/env bash
# Issue 27: the hippocampus and ISBI 2015 comparisons of STD and AMAT re-run under the paper
# protocol (config.protocol = 'paper', docs/fidelity.md): AMAT's ξ on the summed loss
# (segmentation) or per term at mean + 2·std (landmarks), ξ from the sweep's trained STD model,
# the authors' training-attack step with a random start, landmark budgets stated in the authors'
# input units (3×200×160 in [-1, 1]) and attacks clamped to the input range.
#
#   bash experiments/paper_protocol_reruns.sh [DATA_ROOT] [OUT]
#
# Resumable: rerun the same command after a kill (finished runs are skipped).
set -euo pipefail
data=${1:-../shared/data}
out=${2:-runs/paper_protocol}
python -m robust_med.sweep --config=configs/hippocampus_amat.py:cpu_long --methods=std,amat \
  --workdir="$out/hippocampus" --config.data.root="$data/msd_hippocampus" \
  --config.progress_bar=False
python -m robust_med.sweep --config=configs/ceph_amat.py:cpu --methods=std,amat \
  --workdir="$out/ceph" --config.data.root="$data/isbi2015_ceph" --config.data.eval_split=test \
  --config.eval.every_epochs=0 --config.eval.max_samples=32 --config.progress_bar=False
