#!/usr/bin/env bash
# GPU benchmark on one H100 (all four stages, MiT-B5, 640² crops, batch 2, bf16-mixed; < 8 minutes).
#   scripts/gpu_check.sh            run it; records go to $OUT_DIR/bench_gpu.json (default outputs/)
#   scripts/gpu_check.sh --dry-run  print the command, check this script's syntax and compose every
#                                   stage config on the CPU without building a model or running anything
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT_DIR="${OUT_DIR:-outputs}"
BENCH_ARGS=(--model mitb5 --crop 640 --batch 2 --precision bf16-mixed --device cuda
            --steps 10 --warmup 3 --stages source,align,teach,propagate --json "$OUT_DIR/bench_gpu.json")

echo "+ $PYTHON -m atp.bench ${BENCH_ARGS[*]}"
if [[ "${1:-}" == "--dry-run" ]]; then
    bash -n "$0"
    exec "$PYTHON" -m atp.bench "${BENCH_ARGS[@]}" --dry-run
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PYTHON" -m atp.bench "${BENCH_ARGS[@]}"
