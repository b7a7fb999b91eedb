#!/usr/bin/env bash
# GPU check for CompiledSVI (issue 10), meant to finish in under 5 minutes on one GPU:
#   1. exact-enumeration z-tests of REINFORCE / REBAR / RELAX through backend="cuda_graph";
#   2. python -m benchmarks.run --device cuda --compile (headline batches 24 and 1024);
#   3. eager SVI against CompiledSVI on MNIST for the five main estimators, 3 minutes in all.
# Usage: bash benchmarks/gpu_check.sh [output directory]   (default: runs/gpu_check)
# Needs a Python with CUDA torch, pyro-ppl and this repository importable; set PYTHON to
# choose the interpreter. Each step prints its command; results go to the output directory.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
OUT="${1:-runs/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

run() {
    echo "+ $*" | tee -a "$OUT/commands.txt"
    "$@"
}

run "$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); \
print('cuda:', ok, torch.cuda.get_device_name(0) if ok else ''); sys.exit(0 if ok else 3)"
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

echo "== 1/3: z-tests through backend='cuda_graph' =="
run "$PYTHON" -m pytest -q -p no:randomly -p no:cacheprovider -n 0 -s \
    tests/infer/test_compiled.py -k cuda_graph 2>&1 | tee "$OUT/ztests.txt"

echo "== 2/3: benchmarks, compiled rows next to eager ones =="
run timeout 150 "$PYTHON" -m benchmarks.run --device cuda --compile --no-scaling \
    --no-storchastic --threads 1 --rounds 3 --budget 2 --out "$OUT/bench" \
    2>&1 | tee "$OUT/bench.txt"

echo "== 3/3: eager against compiled on MNIST, 5 estimators x 2 modes x 18 s =="
run timeout 240 "$PYTHON" -m benchmarks.compiled_compare --device cuda --seconds 18 \
    2>&1 | tee "$OUT/compare.txt"

echo "done: $OUT"
