#!/usr/bin/env bash
# Every benchmark on this machine, one after the other (nothing else should run meanwhile),
# writing JSON into benchmarks/results/<tag>/. The evaluation "before" figure needs a checkout of
# the commit before issue 13 in $BEFORE (default: skipped).
#   bash benchmarks/run_cpu.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-cpu}
out=benchmarks/results/$tag
mkdir -p "$out"
python benchmarks/peak.py --json="$out/peak.json"
python benchmarks/attack_throughput.py --repeats=2 --json="$out/attack_throughput.json"
python benchmarks/train_step.py --heads=all --pgd_steps=10 --repeats=5 --json="$out/train_step.json"
python benchmarks/profile.py --methods=sat,amat,amat:boundary --json="$out/profile.json"
if [ -n "${BEFORE:-}" ]; then
  mkdir -p "$BEFORE/benchmarks" && cp benchmarks/common.py benchmarks/evaluation.py "$BEFORE/benchmarks/"
  (cd "$BEFORE" && python benchmarks/evaluation.py --json="$OLDPWD/$out/evaluation_before.json")
fi
cache=$(mktemp -d)
python benchmarks/evaluation.py --cache_dir="$cache" --host_devices=0 --json="$out/evaluation_cold.json"
python benchmarks/evaluation.py --cache_dir="$cache" --host_devices=0 --json="$out/evaluation_warm.json"
rm -rf "$cache"
python benchmarks/scaling.py --json="$out/scaling.json"
