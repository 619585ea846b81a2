"""What the first GPU run must answer besides speed (``scripts/gpu_check.sh``).

``python -m atp.bench.step_checks --model mitb5 --crop 640 --batch 2 --precision bf16-mixed --device cuda``:

* **host syncs** — each stage trains a few steps (the real ``LightningModule`` with the divergence guard, fused
  AdamW as on every GPU) with ``torch.cuda.set_sync_debug_mode("error")`` on every non-logging step after the
  first: any call that makes the host wait for the GPU raises there and is recorded with its stack;
* **Teach's pseudo-labels in bf16** (spec §14 #26) — the teacher's labels, confidence and quality ``q`` of the
  same batches in fp32 and under bf16 autocast: label agreement, confidence difference, the share of pixels
  whose ``confidence ≥ conf_threshold`` decision flips, and ``q`` both ways (``--init`` loads trained weights:
  with random ones the figures bound the numerical drift only);
* **peak memory** per stage over those steps (CUDA allocator: allocated and reserved).

``--dry-run`` runs the same code on the CPU with a tiny model (seconds; the sync mode needs CUDA, so there the
steps run without it — ``tests/stages/test_training_step_is_sync_free.py`` counts the syncs on the CPU instead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from atp.atomic import atomic_write_json
from atp.bench.cli import quiet_lightning
from atp.bench.records import format_table, measured, record
from atp.bench.stages import ALL_STAGES, RepeatedBatch, build_stage, synthetic_batch
from atp.bench.timing import PeakMemory

#: logging interval of the checked runs: steps 2, 5, … log (and the guard reads its flag there)
LOG_INTERVAL = 3
SYNC_ERROR = "synchronizing CUDA operation"


def sync_debug_callback(device: torch.device):
    """Turns ``set_sync_debug_mode("error")`` on for every non-logging training step after the first."""
    import pytorch_lightning as pl

    class SyncDebug(pl.Callback):
        def __init__(self) -> None:
            self.checked: list[int] = []
            self.logged: list[int] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            step = trainer.global_step
            if module.logs_at(step):
                self.logged.append(step)
            elif step >= 1:
                self.checked.append(step)
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("error")

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self._off()

        def on_exception(self, trainer, module, exception) -> None:
            self._off()

        def _off(self) -> None:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)

    return SyncDebug()


def check_stage(stage: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Train ``stage`` for ``args.steps`` steps under the sync check; its verdict and peak memory."""
    import pytorch_lightning as pl

    from atp.callbacks.divergence import DivergenceGuard

    module, num_classes = build_stage(stage, args)
    module.log_interval = LOG_INTERVAL
    batch = synthetic_batch(stage, args.batch, args.crop, num_classes, torch.Generator().manual_seed(0))
    sync_debug = sync_debug_callback(device)
    error = None
    with tempfile.TemporaryDirectory(prefix="atp-step-check-") as tmp, PeakMemory(device) as memory:
        trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
            max_steps=args.steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[DivergenceGuard(tmp, stage), sync_debug],
        )
        loader = torch.utils.data.DataLoader(RepeatedBatch(batch, args.steps), batch_size=None)
        try:
            trainer.fit(module, train_dataloaders=loader)
        except RuntimeError as caught:
            if SYNC_ERROR not in str(caught):
                raise
            error = "".join(traceback.format_exception(caught, limit=-12))
    checked = sync_debug.checked if error is None else sync_debug.checked[:-1]
    verdict = None if device.type != "cuda" else error is None
    print(f"[step-check] stage={stage} steps={args.steps} sync-checked steps={checked} logging steps="
          f"{sync_debug.logged} {'(no CUDA: sync mode off)' if device.type != 'cuda' else ''}"
          f"{'' if error is None else chr(10) + 'FIRST HOST SYNC on step ' + str(sync_debug.checked[-1]) + ':' + chr(10) + error}",
          flush=True)
    memory_kind = "cuda_alloc" if device.type == "cuda" else "rss"
    rows = [record(f"{stage}/sync_free_steps", len(checked), "no sync", verdict),
            record(f"{stage}/peak_{memory_kind}_mib", memory.peak_mib)]
    if device.type == "cuda":
        rows.append(record(f"{stage}/peak_cuda_reserved_mib", torch.cuda.max_memory_reserved(device) / 2**20))
    return rows


def compare_pseudo_labels(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Teach's teacher on the same batches in fp32 and under bf16 autocast (spec §14 #26)."""
    module, _ = build_stage("teach", args)
    if args.init:
        from atp.models.weights import read_checkpoint

        module.student.load_state_dict(read_checkpoint(args.init, which="student"))
    module = module.to(device)
    module.teacher.reset_from(module.student)
    threshold = module.conf_threshold
    figures: dict[str, list[float]] = {k: [] for k in (
        "label_agreement", "confidence_mean_abs_diff", "confidence_max_abs_diff", "threshold_flips",
        "quality_fp32", "quality_bf16", "confidence_fp32_mean")}
    for index in range(args.compare_batches):
        images = torch.randn(args.batch, 3, args.crop, args.crop, generator=torch.Generator().manual_seed(100 + index))
        images = images.to(device)
        full = module.pseudo_label(images)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = module.pseudo_label(images)
        difference = (full.confidence - half.confidence).abs()
        figures["label_agreement"].append(float((full.labels == half.labels).float().mean()))
        figures["confidence_mean_abs_diff"].append(float(difference.mean()))
        figures["confidence_max_abs_diff"].append(float(difference.max()))
        figures["threshold_flips"].append(float(((full.confidence >= threshold) != (half.confidence >= threshold))
                                                .float().mean()))
        figures["quality_fp32"].append(float(full.quality))
        figures["quality_bf16"].append(float(half.quality))
        figures["confidence_fp32_mean"].append(float(full.confidence.mean()))
    rows = [measured(f"teach/bf16_vs_fp32/{name}", values) for name, values in figures.items()]
    gap = [abs(a - b) for a, b in zip(figures["quality_fp32"], figures["quality_bf16"], strict=True)]
    rows.append(measured("teach/bf16_vs_fp32/quality_abs_diff", gap))
    print(f"[step-check] teach pseudo-labels fp32 vs bf16 on {args.compare_batches} batches, conf_threshold="
          f"{threshold}, weights={'--init ' + str(args.init) if args.init else 'random (drift bound only)'}: "
          f"label agreement {statistics.median(figures['label_agreement']):.4f}, q {figures['quality_fp32']} vs "
          f"{figures['quality_bf16']}", flush=True)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m atp.bench.step_checks", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mitb5", choices=["mitb0_lite", "mitb0", "mitb5"])
    parser.add_argument("--crop", type=int, default=640)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7, help="training steps per stage (2 and 5 log)")
    parser.add_argument("--compare-batches", type=int, default=4, help="batches of the fp32/bf16 comparison")
    parser.add_argument("--precision", default="bf16-mixed", choices=["32", "bf16-mixed"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--stages", default=",".join(ALL_STAGES))
    parser.add_argument("--init", type=Path, default=None, help="student weights for the fp32/bf16 comparison")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true",
                        help="the same checks on the CPU: mitb0_lite, 32² crops, 3 steps, fp32 training")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.model, args.crop, args.steps, args.compare_batches = "mitb0_lite", 32, 3, 1
        args.device, args.precision = "cpu", "32"
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stage_list) - set(ALL_STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(ALL_STAGES)}")
    # the bench's config composition reads these
    args.warmup, args.quick, args.profile = 0, False, False
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    quiet_lightning()
    device = torch.device(args.device)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for stage in args.stage_list:
        rows += check_stage(stage, args, device)
    if "teach" in args.stage_list:
        rows += compare_pseudo_labels(args, device)
    rows.append(record("step_checks/wall_s", time.perf_counter() - started))
    print(format_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, rows)
    failed = [row["metric"] for row in rows if row["meets"] is False]
    if failed:
        raise SystemExit(f"step checks failed: {', '.join(failed)} (the first host sync of each is printed above)")
    return rows


if __name__ == "__main__":
    main()
