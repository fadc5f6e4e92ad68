#!/usr/bin/env bash
# Issue 28's verdict re-runs (experiments/verdict_reruns.sh), every study at once: one process
# per study sharing one GPU (the :cpu-sized models leave an H200 mostly idle, and compilation is
# per process), stopped at a deadline, each study's runs packed without checkpoints.
#
#   bash experiments/verdict_reruns_parallel.sh DATA_ROOT OUT [DEADLINE_S] [STUDIES]
#   e.g. bash experiments/verdict_reruns_parallel.sh ../shared/data runs/verdicts 520 \
#          "fgsm pneumonia busi hippocampus bccd"
#
# Resumable like verdict_reruns.sh (rerun to continue; finished runs are skipped), and each
# study's summary is rewritten from what finished: python -m robust_med.sweep
# --workdir=OUT/STUDY --summarize. The 2026-12-04 run (experiments/README.md) used this on a lent
# H200 whose image lacked ml-collections, dm-pix, nibabel, grain, array-record and portpicker
# (installed from wheels first) and read a copy of ../shared/data.
set -u
data=${1:?DATA_ROOT}
out=${2:?OUT}
deadline=${3:-520}
studies=${4:-fgsm pneumonia busi hippocampus bccd}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
start=$(date +%s)
declare -A pid
for s in $studies; do
  setsid bash "$here/verdict_reruns.sh" "$s" "$data" "$out" >>"$out/$s.log" 2>&1 &
  pid[$s]=$!
done
while :; do
  sleep 20
  alive=0
  for s in $studies; do kill -0 "${pid[$s]}" 2>/dev/null && alive=$((alive + 1)); done
  elapsed=$(( $(date +%s) - start ))
  echo "t=${elapsed}s studies running=$alive reports=$(ls "$out"/*/*/robustness.json 2>/dev/null | wc -l)"
  { [ $alive = 0 ] || [ $elapsed -ge "$deadline" ]; } && break
done
for s in $studies; do kill -TERM -- -"${pid[$s]}" 2>/dev/null; done
sleep 3
for s in $studies; do
  kill -KILL -- -"${pid[$s]}" 2>/dev/null
  [ -d "$out/$s" ] && tar czf "$out/$s.tgz" --exclude=checkpoints -C "$out" "$s" "$s.log"
done
echo "packed $(ls "$out"/*.tgz 2>/dev/null | wc -l) studies in $out"
