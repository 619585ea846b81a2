#!/usr/bin/env bash
# The first GPU run answers everything at once, on one H100/H200 (about 10 minutes):
#  1. the benchmark: all four stages, MiT-B5, 640² crops, batch 2, bf16-mixed, real and bare steps alternated,
#     ratios judged on the median and the whole spread over the blocks → $OUT_DIR/bench_gpu.json;
#  2. the step checks (atp.bench.step_checks): each stage a few steps with torch.cuda.set_sync_debug_mode("error")
#     on the non-logging steps, Teach's pseudo-label confidence and quality q in fp32 vs bf16 on the same batches
#     (spec §14 #26), peak memory per stage → $OUT_DIR/step_checks_gpu.json;
#  3. the full-size rehearsal (atp.rehearse): the paper recipe through the user's own commands on toy scenes at the
#     real image sizes, MiT-B5, batch 2, bf16-mixed, with the peak GPU memory of each stage against DAFormer's
#     published 9.7 GB → $OUT_DIR/rehearse/rehearsal.{json,md}. Within the time budget it rehearses the
#     Cityscapes → ACDC fog chain, whose stages are a superset of GTA5 → Cityscapes' (640² source crops, the
#     whole 1280×720 target images the stage crops, the ACDC export); all chains: python -m atp.rehearse
#     --device cuda --precision bf16-mixed.
# All run even if one fails; the exit status is that of the first failure.
#   scripts/gpu_check.sh            run it (default OUT_DIR=outputs)
#   scripts/gpu_check.sh --dry-run  check this script's syntax, compose every stage config of the GPU run and of the
#                                   rehearsal, and run the step checks on the CPU with a tiny model (what `make test`
#                                   covers)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT_DIR="${OUT_DIR:-outputs}"
SETTING=(--model mitb5 --crop 640 --batch 2 --precision bf16-mixed --device cuda)
BENCH_ARGS=("${SETTING[@]}" --steps 20 --blocks 4 --warmup 3 --stages source,align,teach,propagate
            --json "$OUT_DIR/bench_gpu.json")
CHECK_ARGS=("${SETTING[@]}" --steps 7 --compare-batches 4 --json "$OUT_DIR/step_checks_gpu.json")
REHEARSE_ARGS=(--model mitb5 --batch 2 --precision bf16-mixed --device cuda --datasets cs2acdc_fog
               --out "$OUT_DIR/rehearse")

echo "+ $PYTHON -m atp.bench ${BENCH_ARGS[*]}"
echo "+ $PYTHON -m atp.bench.step_checks ${CHECK_ARGS[*]}"
echo "+ $PYTHON -m atp.rehearse ${REHEARSE_ARGS[*]}"
if [[ "${1:-}" == "--dry-run" ]]; then
    bash -n "$0"
    "$PYTHON" -m atp.bench "${BENCH_ARGS[@]}" --dry-run
    "$PYTHON" -m atp.rehearse "${REHEARSE_ARGS[@]}" --dry-run
    exec "$PYTHON" -m atp.bench.step_checks --dry-run
fi
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
timeout 300 "$PYTHON" -m atp.bench "${BENCH_ARGS[@]}" || status=$?
timeout 150 "$PYTHON" -m atp.bench.step_checks "${CHECK_ARGS[@]}" || { s=$?; [[ $status -ne 0 ]] || status=$s; }
# rehearsal.json/md are rewritten after each command, so a run the timeout stops still leaves its figures
timeout 210 "$PYTHON" -m atp.rehearse "${REHEARSE_ARGS[@]}" || { s=$?; [[ $status -ne 0 ]] || status=$s; }
exit "$status"
