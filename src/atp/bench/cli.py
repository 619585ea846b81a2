"""Performance benchmark: stage overhead, evaluation overhead, data-pipeline throughput, peak memory.

``make bench`` = ``python -m atp.bench --model mitb0_lite --crop 128 --batch 2 --json outputs/bench.json``.
In one process, for each stage the real ``LightningModule`` is built from the Hydra configs
(``conf/train.yaml`` with ``stage=<s> model=<m>``, then :func:`atp.stages.build_stage_module`) and trained by
a minimal Lightning ``Trainer`` on synthetic in-memory batches; a callback times ``on_train_batch_start`` →
``on_train_batch_end`` (the real ``training_step`` with Lightning's manual-optimisation plumbing) and, right
after each real step, one *bare* step — only the compute the method cannot avoid, on copies of the same
networks. Real and bare steps alternate, so a drift of the machine's speed hits both alike. The timed steps
are cut into ``--blocks`` consecutive blocks; each block gives ``ratio = median real / median bare``. A
target is judged on the median block ratio *and* its whole spread (min–max over the blocks): a ratio meets
``≤ 1.10`` only if its worst block does. ``--quick`` is a smoke test and judges nothing. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

from atp.atomic import atomic_write_json
from atp.bench.data import data_rows
from atp.bench.records import format_table, record
from atp.bench.stages import ALL_STAGES, bench_eval, bench_stage, build_stage, compose_stage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m atp.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mitb0_lite", choices=["mitb0_lite", "mitb0", "mitb5"])
    parser.add_argument("--crop", type=int, default=128, help="square training crop (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="images per stream (default 2, spec §2.7)")
    parser.add_argument("--steps", type=int, default=30, help="timed real (and as many bare) steps per stage")
    parser.add_argument("--blocks", type=int, default=5,
                        help="consecutive blocks the timed steps are cut into; a target must hold in every block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 64² crops, few steps, judges nothing (< 1 min on 2 CPU cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the records as a JSON list here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--stages", default=",".join(ALL_STAGES), help="comma-separated subset of " + ",".join(ALL_STAGES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--data-images", type=int, default=4, help="PNGs generated for each data benchmark")
    parser.add_argument("--data-samples", type=int, default=8, help="samples timed per block in the data benchmark")
    parser.add_argument("--no-data", action="store_true", help="skip the data-pipeline benchmark")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of real and bare steps "
                        "(run apart, not alternated, under the profiler: such a run judges nothing)")
    parser.add_argument("--dry-run", action="store_true", help="compose every stage config and exit (no model is built)")
    args = parser.parse_args(argv)
    if args.quick:
        explicit = set(argv if argv is not None else sys.argv[1:])
        args.crop = args.crop if "--crop" in explicit else 64
        args.steps = args.steps if "--steps" in explicit else 8
        args.blocks = args.blocks if "--blocks" in explicit else 2
        args.warmup = args.warmup if "--warmup" in explicit else 2
        args.data_images = args.data_images if "--data-images" in explicit else 2
        args.data_samples = args.data_samples if "--data-samples" in explicit else 6
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(ALL_STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(ALL_STAGES)}")
    args.stage_list = stages
    if args.steps < 1 or args.warmup < 0 or not 1 <= args.blocks <= args.steps:
        parser.error("--steps must be >= 1, --warmup >= 0 and --blocks between 1 and --steps")
    return args


def quiet_lightning() -> None:
    import pytorch_lightning  # noqa: F401  (its import sets its loggers to INFO; lower them afterwards)

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def dry_run(args: argparse.Namespace) -> list[dict]:
    """Compose each stage's config and check the values the benchmark relies on."""
    rows = []
    for stage in args.stage_list:
        cfg = compose_stage(stage, args)
        assert cfg.stage.name == stage and list(cfg.dataset.crop_size) == [args.crop, args.crop]
        print(f"[dry-run] stage={stage} model={cfg.model.encoder} crop={args.crop} batch={args.batch} "
              f"precision={cfg.trainer.precision} module={cfg.stage.module._target_}")
        rows.append(record(f"{stage}/config_composed", 1.0))
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dry_run:
        rows = dry_run(args)
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible")
        quiet_lightning()
        device = torch.device(args.device)
        started = time.perf_counter()
        rows: list[dict] = []
        step_seconds: dict[str, list[float]] = {}
        module = None
        for stage in args.stage_list:
            stage_rows, module, step_seconds[stage] = bench_stage(stage, args, device)
            rows += stage_rows
            print(format_table(stage_rows), flush=True)
        if not args.no_eval:
            if module is None:
                module, _ = build_stage("source", args)
            rows += bench_eval(module, args, device, torch.Generator().manual_seed(1))
        if not args.no_data:
            rows += data_rows(args, step_seconds.get("teach"))
        rows.append(record("bench/wall_s", time.perf_counter() - started))
        print(f"\natp.bench: model={args.model} crop={args.crop} batch={args.batch} device={args.device} "
              f"precision={args.precision} threads={torch.get_num_threads()} steps={args.steps} (+{args.warmup} "
              f"warm-up) in {args.blocks} blocks; median [min-max over blocks]{'; judges nothing' if args.quick else ''}")
    print(format_table(rows))
    if args.json is not None and not args.dry_run:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
