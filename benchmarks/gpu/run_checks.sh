#!/usr/bin/env bash
# The GPU checks, in one go, for a session that is lent a GPU (run through the device tool with carry [".whl"]):
#   bash benchmarks/gpu/run_checks.sh
# Prints a short table last; full logs go to $OUT (or gpu_out/). Timings are ratios against a baseline
# measured in the same run on the same card.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .pysite .whl/*.whl
export PYTHONPATH="$PWD/.pysite:$PWD"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
run() {  # name, then benchmark arguments
    local name=$1; shift
    timeout 240 python3 benchmarks/regularizer_overhead.py --model random-1b --device cuda --dtype bfloat16 \
        --batch-size 4 --seq-len 2048 --rounds 10 "$@" > "$OUT/$name.txt" 2>&1 || echo "FAILED" >> "$OUT/$name.txt"
}
run penalty --mode penalty
run ablate --mode ablate
run penalty_gc --mode penalty --gradient-checkpointing
run penalty_2x1 --mode penalty --emotions 2 --layers 14
echo "== $(cat "$OUT/gpu.txt" | tail -1)"
for f in penalty ablate penalty_gc penalty_2x1; do
    printf '%-12s %s | %s\n' "$f" "$(grep 'time ratio' "$OUT/$f.txt" || tail -1 "$OUT/$f.txt")" \
        "$(grep 'peak mem' "$OUT/$f.txt" || true)"
done
