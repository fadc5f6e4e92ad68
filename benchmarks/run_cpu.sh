#!/usr/bin/env bash
# Every benchmark on this machine, one after the other (nothing else should run meanwhile),
# writing JSON into benchmarks/results/<tag>/. The evaluation "before" figure needs a checkout of
# the commit before issue 13 in $BEFORE (default: only the after figures, empty and warm cache).
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
  # before (in $BEFORE, 1 device, no cache), after with an empty and a warm cache, and the ratios
  python benchmarks/evaluation.py --compare_to="$BEFORE" --json="$out/eval_compare.json"
else
  cache=$(mktemp -d)
  python benchmarks/evaluation.py --cache_dir="$cache" --json="$out/evaluation_cold.json"
  python benchmarks/evaluation.py --cache_dir="$cache" --json="$out/evaluation_warm.json"
  rm -rf "$cache"
fi
python benchmarks/demo_compile.py --json="$out/demo_compile.json"
python benchmarks/scaling.py --json="$out/scaling.json"
python benchmarks/volume_memory.py --out="$out/volume_memory.json"
python benchmarks/volume_memory.py --volume_shape=32,48,32 --out="$out/volume_memory_32x48x32.json"
python benchmarks/monai_unet3d.py --json="$out/monai_unet3d.json"
python benchmarks/patch_attack_cost.py --steps=2 --batch=2 --json="$out/patch_attack_cost.json"
python benchmarks/square_cost.py --queries=500,1000 --json="$out/square_cost.json"
python benchmarks/evaluation.py --ensemble=square --json="$out/eval_ensemble_square.json"
python benchmarks/evaluation.py --ensemble=square,transfer --square_queries=1000 \
  --json="$out/eval_ensemble.json"
python benchmarks/tensorboard_overhead.py --json="$out/tensorboard_overhead.json"
python benchmarks/norm_speed.py --repeats=5 --json="$out/norm_speed.json"
for b in 400 100; do
  python benchmarks/certify_throughput.py --batch=$b --repeats=2 --json="$out/certify_throughput_b$b.json"
done
python benchmarks/physical_cost.py --steps=50 --repeats=2 --json="$out/physical_cost.json"
