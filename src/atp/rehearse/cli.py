"""``python -m atp.rehearse [--model mitb5|mitb0] [--steps 2] [--batch 2] [--out outputs/rehearse]
[--device cpu|cuda] [--precision 32|bf16-mixed] [--datasets gta2cs,cs2acdc_fog] [--dry-run]``.

The paper recipe rehearsed at full size: a few toy scenes written as GTA5 (1914×1052), Cityscapes (2048×1024,
train/val/test) and one ACDC condition (1920×1080, train/val/test) ship them, then the user's own commands on
them, one process each: ``atp.data.check`` and ``atp.data.prepare`` per dataset; ``atp.train`` source → align →
teach → propagate with the unchanged paper configs (``--steps`` steps per stage, batch ``--batch``); ``atp.evaluate``
of the final checkpoint in whole mode, slide mode and with flip, and its benchmark-server export of the test split;
``atp.predict`` on a 2048×1024 image and a short video. Align is trained a second time with the same seed. A
recording callback (``atp.rehearse.probe``) times each stage's steps and reads its tensors' shapes. Writes
``<out>/rehearsal.json`` and ``<out>/rehearsal.md`` and prints the summary; exit status 1 when a command or a
check failed (each named with its log), 2 on a usage error. ``--dry-run`` composes every config it would run and
prints the sizes, building nothing.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from atp.atomic import atomic_write_json, atomic_write_text
from atp.config import compose_cli
from atp.data.io import write_png_atomic
from atp.data.toy.generate import render_scene
from atp.data.toy.official import CITYSCAPES_SIZE, write_official_tree, write_video
from atp.errors import UserError
from atp.rehearse import checks, report
from atp.rehearse.plan import (
    PRECISIONS,
    PREDICT_IMAGE,
    PREDICT_VIDEO,
    Options,
    Step,
    build_plan,
    check_datasets,
    image_size,
    predict_inputs,
    tree_spec,
)
from atp.rehearse.runner import StepResult, run_step

MODELS = ("mitb5", "mitb0", "mitb0_lite")
#: Marks a folder as the rehearsal's own, so a re-run may clear its outputs (never another folder's).
MARKER = ".atp-rehearsal"
OWN_FOLDERS = ("runs", "eval", "predict", "logs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m atp.rehearse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mitb5", choices=MODELS, help="model config (default mitb5, the paper's)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per stage (default 2)")
    parser.add_argument("--batch", type=int, default=2, help="images per stream and step (default 2, the paper's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/rehearse"), help="output folder")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="32", choices=tuple(PRECISIONS))
    parser.add_argument("--datasets", default="gta2cs,cs2acdc_fog",
                        help="comma-separated chains to rehearse (default gta2cs,cs2acdc_fog)")
    parser.add_argument("--eval-images", type=int, default=2, help="val and test images per dataset (default 2)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data.num_workers of every command (default 0 on cpu, 4 on cuda)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every stage's last.ckpt (default: removed once the stage is complete; final.ckpt "
                             "is what the next stage and the evaluation read)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the commands' library functions in this process (tests; no per-command RSS)")
    parser.add_argument("--dry-run", action="store_true",
                        help="compose every config the rehearsal runs and print the sizes; build nothing")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.eval_images < 1:
        parser.error("--steps, --batch and --eval-images must be at least 1")
    return args


def options_from(args: argparse.Namespace) -> Options:
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    check_datasets(datasets)
    return Options(model=args.model, steps=args.steps, batch=args.batch, out=args.out.resolve(), device=args.device,
                   precision=args.precision, datasets=datasets, eval_images=args.eval_images, workers=args.workers,
                   keep_checkpoints=args.keep_checkpoints, in_process=args.in_process)


def composed(step: Step) -> DictConfig:
    """The config ``step``'s command composes (Hydra's own ``hydra.*`` keys left out)."""
    config = {"atp.train": "train", "atp.evaluate": "evaluate", "atp.predict": "predict"}.get(step.command, "prepare")
    return compose_cli([o for o in step.overrides if not o.startswith("hydra.")], config)


# ------------------------------------------------------------------------------------------------ dry run
def _size(width_height) -> str:
    return f"{width_height[0]}×{width_height[1]}"


def describe(step: Step, cfg: DictConfig, options: Options) -> str:
    """One line: what the step runs, at which sizes."""
    if step.kind in ("check", "prepare"):
        return f"atp.data.{step.kind} dataset={step.dataset}"
    if step.kind == "train":
        from hydra.utils import get_class

        from atp.stages import check_stage_options

        check_stage_options(cfg.stage)
        get_class(cfg.callbacks.rehearsal._target_)
        streams = {"source": ("source",), "propagate": ("easy", "hard")}.get(step.stage, ("target",))
        sizes = []
        for stream in streams:
            role = "source" if stream == "source" else "target"
            height, width = checks.stream_size(cfg, step.dataset, stream)
            sizes.append(f"{stream} {_size(image_size(step.dataset, role))} → scale {list(cfg.dataset[role].scale)} "
                         f"→ loader {width}×{height}")
        crop = "×".join(map(str, cfg.dataset.crop_size))
        return (f"atp.train stage={step.stage} model={cfg.model.encoder} dataset={step.dataset} "
                f"accelerator={cfg.trainer.accelerator} precision={cfg.trainer.precision} "
                f"steps={cfg.trainer.max_steps} batch={cfg.data.batch_size} crop={crop} | {'; '.join(sizes)}")
    if step.kind in ("evaluate", "export"):
        role = "target_val" if step.kind == "evaluate" else "target_test"
        what = f"export={cfg.export} {role}" if step.kind == "export" else role
        return (f"atp.evaluate {what} {_size(image_size(step.dataset, 'target_val'))} → scale "
                f"{list(cfg.dataset[role].scale)} mode={cfg.eval.mode} flip={cfg.eval.flip} "
                f"model={cfg.model.encoder} device={cfg.device}")
    return (f"atp.predict {PREDICT_IMAGE} {_size(CITYSCAPES_SIZE)} and {PREDICT_VIDEO} 1920×1080 → scale "
            f"{list(cfg.scale)} model={cfg.model.encoder} device={cfg.device}")


def dry_run(options: Options) -> int:
    """Compose every config of the plan and print one line per command with its sizes; nothing is built."""
    spec = tree_spec(options)
    print(f"[dry-run] data under {options.data_dir}: GTA5 {spec.gta} at 1914×1052, Cityscapes {dict(spec.cityscapes)} "
          f"at 2048×1024, ACDC {spec.condition} {dict(spec.acdc)} at 1920×1080")
    for step in build_plan(options):
        print(f"[dry-run] {step.name}: {describe(step, composed(step), options)}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ the run
def prepare_out(out: Path) -> None:
    """Make ``out`` the rehearsal's folder: a new or empty folder, or one an earlier rehearsal wrote (its
    outputs are cleared; its data tree is kept and reused when it has the same spec)."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise UserError(f"rehearse: {out} holds files of something else; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m atp.rehearse\n")
    for name in OWN_FOLDERS:
        shutil.rmtree(out / name, ignore_errors=True)


def write_inputs(options: Options) -> dict:
    """The data tree and the predict inputs; returns what was written and how long it took."""
    started = time.perf_counter()
    spec = tree_spec(options)
    written = write_official_tree(options.data_dir, spec)
    inputs = predict_inputs(options)
    write_png_atomic(inputs / PREDICT_IMAGE, render_scene(0, "target_val", 40_000, CITYSCAPES_SIZE)[0])
    write_video(inputs / PREDICT_VIDEO, options.video_frames)
    return {"spec": spec.as_dict(), "images": spec.images() + 1, "video_frames": options.video_frames,
            "written": written, "write_s": round(time.perf_counter() - started, 1)}


def run_one(step: Step, position: str, results: dict[str, StepResult], options: Options) -> StepResult:
    """Run ``step`` unless the step it needs failed; print one line as it ends."""
    log = options.out / "logs" / f"{step.slug}.log"
    waits_for = results.get(step.after) if step.after else None
    if waits_for is not None and not waits_for.ok:
        result = StepResult(step.name, step.kind, "not run", str(log), "", note=f"{step.after} did not finish")
    else:
        print(f"[{position}] {step.name} …", flush=True)
        result = run_step(step, log, options.in_process)
        if result.ok and step.kind == "train" and not options.keep_checkpoints:
            (step.out_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    rss = "" if result.peak_rss_mib is None else f", peak RSS {result.peak_rss_mib / 1024:.2f} GiB"
    wall = "" if result.wall_s is None else f" {result.wall_s:.1f} s"
    print(f"[{position}] {step.name}: {result.status}{wall}{rss}"
          + (f" ({result.note}; log {result.log})" if result.note else ""), flush=True)
    return result


def step_checks(step: Step, result: StepResult, plan: list[Step], results: dict[str, StepResult],
                options: Options) -> list[checks.Check]:
    """The checks of a finished step (a failed command is reported as such, not checked)."""
    if not result.ok:
        return []
    if step.kind == "train":
        found = checks.check_training(step, composed(step), options, result.log)
        rerun_of = step.extra.get("rerun_of")
        if rerun_of and results[rerun_of].ok:
            first = next(s for s in plan if s.name == rerun_of)
            found.append(checks.check_rerun(first, step, result.log))
        return found
    if step.kind == "evaluate":
        return [checks.check_evaluation(step, composed(step).dataset, result.log)]
    if step.kind == "export":
        spec = tree_spec(options)
        test_images = (spec.acdc if step.extra["server"] == "acdc" else spec.cityscapes)["test"]
        return [checks.check_export(step, test_images, result.log)]
    if step.kind == "predict":
        return [checks.check_predict(step, options, result.log)]
    return []


def write_report(record: dict, plan: list[Step], results: dict[str, StepResult], found: list[checks.Check],
                 options: Options, started: float) -> dict:
    """``rehearsal.json`` and ``rehearsal.md`` of the steps run so far (rewritten after each, so a run that is
    stopped leaves its figures)."""
    done = [(step, results[step.name]) for step in plan if step.name in results]
    failures = [f"{r.name}: {r.status}" + (f" ({r.note})" if r.note else "") + f"; log {r.log}"
                for _, r in done if not r.ok]
    failures += [f"check failed: {c.name}: {c.detail}; log {c.log}" for c in found if not c.ok]
    record.update(
        complete=len(done) == len(plan), ok=not failures and len(done) == len(plan), commands=len(plan),
        total_s=round(time.perf_counter() - started, 1), failures=failures,
        stages=[report.stage_row(step, result, checks.read_json(step.probe_file) if result.ok else None)
                for step, result in done if step.kind == "train"],
        steps=[asdict(r) for _, r in done], checks=[asdict(c) for c in found])
    atomic_write_json(options.out / "rehearsal.json", record)
    atomic_write_text(options.out / "rehearsal.md", report.markdown(record))
    return record


def rehearse(options: Options) -> dict:
    """The whole rehearsal; returns the report it writes to ``<out>/rehearsal.json`` and ``rehearsal.md``."""
    started = time.perf_counter()
    prepare_out(options.out)
    record = {"date": report.now(), "machine": report.machine(),
              "options": {**asdict(options), "out": str(options.out)}}
    record["data"] = write_inputs(options)
    plan = build_plan(options)
    results: dict[str, StepResult] = {}
    found: list[checks.Check] = []
    for index, step in enumerate(plan, 1):
        results[step.name] = run_one(step, f"{index}/{len(plan)}", results, options)
        found += step_checks(step, results[step.name], plan, results, options)
        write_report(record, plan, results, found, options, started)
    return record


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # the running command is stopped with SIGTERM, then this exits


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        options = options_from(args)
        if args.dry_run:
            return dry_run(options)
        record = rehearse(options)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(report.markdown(record))
    for line in report.gpu_memory_lines(record):
        print(line)
    print(f"wrote {options.out / 'rehearsal.json'} and {options.out / 'rehearsal.md'}")
    for failure in record["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 0 if record["ok"] else 1
