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
``≤ 1.10`` only if its worst block does. ``--quick`` is a smoke test and judges nothing. See BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from atp.atomic import atomic_write_json
from atp.bench.records import at_least, at_most, block_medians, block_ratios, format_table, measured, record
from atp.config import CONF_DIR
from atp.data.io import write_png_atomic
from atp.stages import build_stage_module, default_chain

#: the stages of the default chain (the bare reference steps below exist for these)
ALL_STAGES = tuple(default_chain())
OVERHEAD_TARGET = 1.10
WORKER_IMG_S_TARGET = 5.0
CONSUMPTION_MULTIPLE_TARGET = 3.0
#: Cityscapes frame, the train resize target and the paper's crop (spec §2.4–§2.6).
CITYSCAPES_SIZE = (2048, 1024)
TRAIN_SCALE = (1280, 640)
TRAIN_CROP = (640, 640)


# ----------------------------------------------------------------------------- timing helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one call, the device queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(fns: list[Callable[[int], Any]], steps: int, warmup: int, device: torch.device) -> list[list[float]]:
    """Per-call wall times of each of ``fns``, called in turn (A B C A B C …) ``warmup + steps`` times;
    the first ``warmup`` rounds are not kept."""
    times: list[list[float]] = [[] for _ in fns]
    for step in range(warmup + steps):
        for fn, kept in zip(fns, times, strict=True):
            seconds = timed(lambda fn=fn, step=step: fn(step), device)
            if step >= warmup:
                kept.append(seconds)
    return times


class PeakMemory:
    """Peak memory in MiB while the block runs: CUDA allocator peak, else sampled process RSS."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mib() -> float:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the process-lifetime peak is the best available
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mib = max(self.peak_mib, self.rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak_mib = self.rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self.rss_mib())


# ----------------------------------------------------------------------------- configs and batches
def compose_stage(stage: str, args: argparse.Namespace):
    """The real training config of ``stage`` with the bench's model, crop, batch and step count."""
    from hydra import compose, initialize_config_dir

    crop = args.crop
    overrides = [
        f"stage={stage}", f"model={args.model}", f"dataset.crop_size=[{crop},{crop}]",
        f"data.batch_size={args.batch}", f"trainer.max_steps={args.warmup + args.steps}",
        f"trainer.precision={args.precision}", "logger=none",
    ]
    if stage == "propagate":  # the full step: contrastive term from step 0, hood rows scaled to the crop
        overrides += ["stage.module.scl.start_step=0",
                      f"stage.module.ignore_top_rows={round(15 * crop / 640)}",
                      f"stage.module.ignore_bottom_rows={round(120 * crop / 640)}"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides)


def synthetic_batch(stage: str, batch: int, crop: int, num_classes: int, generator: torch.Generator) -> dict:
    """A batch with the structure the stage's DataModule yields (random normalised images)."""

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, generator=generator)

    if stage == "source":
        return {"img": images(), "label": torch.randint(0, num_classes, (batch, crop, crop), generator=generator)}
    if stage == "propagate":
        return {"easy": {"img": images()}, "hard": {"img": images()}}
    return {"img": images()}


class RepeatedBatch(torch.utils.data.Dataset):
    """``length`` fresh copies of one batch (a loader with ``batch_size=None`` yields them as they are)."""

    def __init__(self, batch: dict, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        def clone(value: Any) -> Any:
            return {k: clone(v) for k, v in value.items()} if isinstance(value, dict) else value.clone()

        return clone(self.batch)


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value.to(device)


# ----------------------------------------------------------------------------- the real stage step
def step_timer_callback(warmup: int, device: torch.device, bare: Callable[[int], Any] | None, profiler: Any | None):
    """A Lightning callback timing each training batch and, right after it, one call of ``bare(step)``
    (real and bare steps alternate); times from the ``warmup``-th batch on are kept."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.real: list[float] = []
            self.bare: list[float] = []
            self._seen = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self._seen == warmup and profiler is not None:
                profiler.start()
            synchronize(device)
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            synchronize(device)
            real = time.perf_counter() - self._start
            bare_seconds = timed(lambda: bare(self._seen), device) if bare is not None else None
            if self._seen >= warmup:
                self.real.append(real)
                if bare_seconds is not None:
                    self.bare.append(bare_seconds)
            self._seen += 1

        def on_train_end(self, trainer, module) -> None:
            if profiler is not None and self._seen > warmup:
                profiler.stop()

    return StepTimer()


def run_real_stage(module, batch: dict, args: argparse.Namespace, device: torch.device,
                   bare: Callable[[int], Any] | None = None, profiler=None):
    """Per-step seconds of ``module``'s ``training_step`` driven by ``Trainer.fit`` (and of ``bare``, alternated)."""
    import pytorch_lightning as pl

    timer = step_timer_callback(args.warmup, device, bare, profiler)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(RepeatedBatch(batch, args.warmup + args.steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer


# ----------------------------------------------------------------------------- the bare steps
class BareStep:
    """The compute a stage cannot avoid, written directly on copies of the module's networks.

    Every variant: one ``zero_grad``, forward/backward passes on a plain loss at crop resolution
    (bilinear upsampling of 1/4 logits, as every stage does), one AdamW step with the same groups.
    Teacher stages add the EMA update, the teacher's forward (no dropout; BatchNorm on batch statistics when the
    stage's teacher uses them) and the strong augmentation (all part of the method).
    """

    def __init__(self, stage: str, module, device: torch.device, bf16: bool) -> None:
        from atp.stages.base import make_adamw

        self.stage, self.device = stage, device
        self.student = copy.deepcopy(module.student).to(device).train()
        self.optimizer = make_adamw(self.student.named_parameters(), module.optim_cfg, device)  # as the stage's
        self.teacher = None
        if hasattr(module, "teacher"):
            self.teacher = copy.deepcopy(module.student).to(device).eval().requires_grad_(False)
            if module.teacher.bn_train_mode:  # the method's teacher: BatchNorm on batch statistics (spec §4.2)
                for layer in self.teacher.modules():
                    if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                        layer.train()
            self.teacher_params = list(self.teacher.parameters())
            self.student_params = list(self.student.parameters())
        self.strong_aug = getattr(module, "strong_aug", None)
        self.num_classes = module.num_classes
        self.seed = module.seed
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def logits(self, images: torch.Tensor, net: torch.nn.Module | None = None) -> torch.Tensor:
        out = (net or self.student)(images)
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def augment(self, images: torch.Tensor, generator: torch.Generator, params) -> torch.Tensor:
        return self.strong_aug.apply(images, params, generator)

    def __call__(self, batch: dict, step: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        with self.autocast():
            getattr(self, f"_{self.stage}")(batch, generator)
        self.optimizer.step()

    def _source(self, batch: dict, generator: torch.Generator) -> None:
        F.cross_entropy(self.logits(batch["img"]), batch["label"], ignore_index=255).backward()

    def _align(self, batch: dict, generator: torch.Generator) -> None:
        strong = self.augment(batch["img"], generator, self.strong_aug.draw(generator))
        probs = self.logits(strong).float().softmax(dim=1)
        entropy = -(probs * probs.clamp_min(1e-8).log()).sum(dim=1).mean()
        entropy.backward()

    def _ema(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.teacher_params, [p.detach() for p in self.student_params], 1e-3)

    def _teach(self, batch: dict, generator: torch.Generator) -> None:
        self._ema()
        images = batch["img"]
        with torch.no_grad():
            labels = self.logits(images, self.teacher).argmax(dim=1)
        strong = self.augment(images, generator, self.strong_aug.draw(generator))
        F.cross_entropy(self.logits(strong), labels).backward()

    def _propagate(self, batch: dict, generator: torch.Generator) -> None:
        self._ema()
        easy, hard = batch["easy"]["img"], batch["hard"]["img"]
        size = easy.shape[-2:]
        with torch.no_grad():
            feats = self.teacher.extract(easy)
            easy_labels = F.interpolate(self.teacher.decode(feats), size=size, mode="bilinear").argmax(dim=1)
            easy_proj = self.teacher.project(feats).float()
            hard_labels = self.logits(hard, self.teacher).argmax(dim=1)
        params = self.strong_aug.draw(generator)
        easy_strong, hard_strong = self.augment(easy, generator, params), self.augment(hard, generator, params)
        # 1) easy CE
        F.cross_entropy(self.logits(easy_strong), easy_labels).backward()
        # 2) hard projection against per-class prototypes (class means of the teacher's easy features)
        proj = self.student.project(self.student.extract(hard_strong)).float()
        small = F.interpolate(easy_labels[:, None].float(), size=easy_proj.shape[-2:], mode="nearest")[:, 0].long()
        onehot = F.one_hot(small.flatten(), self.num_classes).float()
        prototypes = F.normalize(onehot.T @ easy_proj.permute(0, 2, 3, 1).reshape(-1, easy_proj.shape[1]), dim=1)
        hard_small = F.interpolate(hard_labels[:, None].float(), size=proj.shape[-2:], mode="nearest")[:, 0].long()
        scores = torch.einsum("bchw,kc->bkhw", proj, prototypes)
        F.cross_entropy(scores, hard_small).backward()
        # 3) ClassMix: half of the easy classes pasted onto the hard images
        pasted = (easy_labels % 2 == 0)[:, None]
        mixed = self.augment(torch.where(pasted, easy_strong, hard_strong), generator, params)
        F.cross_entropy(self.logits(mixed), torch.where(pasted[:, 0], easy_labels, hard_labels)).backward()


# ----------------------------------------------------------------------------- evaluation
def bench_eval(module, args: argparse.Namespace, device: torch.device, generator: torch.Generator) -> list[dict]:
    """Real ``validation_step`` (whole-image inference + confusion matrix) vs the bare prediction."""
    crop = args.crop
    image_size = (crop, 2 * crop)  # the eval resize keeps the 2:1 Cityscapes frame
    label_size = (round(crop * 1.6), round(crop * 3.2))  # labels stay at the original size (1024 vs 640)
    img = torch.randn(1, 3, *image_size, generator=generator).to(device)
    label = torch.randint(0, module.num_classes, (1, *label_size), generator=generator).to(device)
    batch = {"img": img, "label": label}
    module = module.to(device).eval()
    student = module.student
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16-mixed" \
        else nullcontext

    def real(_: int) -> None:
        with torch.no_grad(), autocast():
            module.validation_step(batch, 0)

    def bare_prediction(_: int) -> None:
        with torch.no_grad(), autocast():
            F.interpolate(student(img), size=label_size, mode="bilinear").argmax(dim=1)

    def bare_forward(_: int) -> None:
        with torch.no_grad(), autocast():
            student(img)

    real_times, prediction_times, forward_times = alternate([real, bare_prediction, bare_forward],
                                                            max(args.steps, 3), args.warmup, device)
    module.val_metric.reset()
    judge = not args.quick
    return [
        measured("eval/step_ms", [1000 * t for t in block_medians(real_times, args.blocks)]),
        measured("eval/bare_prediction_ms", [1000 * t for t in block_medians(prediction_times, args.blocks)]),
        at_most("eval/ratio_vs_prediction", block_ratios(real_times, prediction_times, args.blocks),
                OVERHEAD_TARGET, judge),
        measured("eval/ratio_vs_forward_only", block_ratios(real_times, forward_times, args.blocks)),
    ]


# ----------------------------------------------------------------------------- data pipeline
def write_cityscapes_frames(root: Path, count: int, size: tuple[int, int] = CITYSCAPES_SIZE, seed: int = 0) -> Path:
    """``count`` PNGs of ``size`` (width, height; default 2048×1024) in the Cityscapes train layout, photo-like
    in compressibility."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "leftImg8bit" / "train" / "aachen"
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for index in range(count):
        coarse = rng.integers(0, 256, (max(height // 32, 2), max(width // 32, 2), 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        noisy = np.clip(smooth + rng.integers(-6, 7, smooth.shape), 0, 255).astype(np.uint8)
        write_png_atomic(folder / f"aachen_{index:06d}_000019_leftImg8bit.png", noisy)
    return root


def pipeline_geometry(crop: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(frame, resize, crop) sizes, width first, of the paper's pipeline scaled to a ``crop``² training crop:
    2048×1024 → 1280×640 → 640² at 640, 410×205 → 256×128 → 128² at 128 (like for like with the stages)."""
    return (round(3.2 * crop), round(1.6 * crop)), (2 * crop, crop), (crop, crop)


def bench_data(images: int, samples: int, blocks: int, frame: tuple[int, int] = CITYSCAPES_SIZE,
               scale: tuple[int, int] = TRAIN_SCALE, crop: tuple[int, int] = TRAIN_CROP) -> list[float]:
    """Images per second of the real target training dataset in this process (= one worker), per block of
    ``samples`` samples: PNG decode of a ``frame`` image → resize to ``scale`` → ``crop`` → normalise."""
    from atp.data.datasets import CityscapesDataset

    rates = []
    with tempfile.TemporaryDirectory(prefix="atp-bench-") as tmp:
        root = write_cityscapes_frames(Path(tmp) / "cityscapes", images, frame)
        dataset = CityscapesDataset(root, split="train", scale=scale, labelled=False, pipeline="train",
                                    crop_size=crop)
        dataset[0]  # index the folder, warm the codecs
        for block in range(blocks):
            start = time.perf_counter()
            for index in range(samples):
                sample = dataset[(index % len(dataset), block * samples + index)]
            rates.append(samples / (time.perf_counter() - start))
        assert tuple(sample["img"].shape) == (3, crop[1], crop[0])
    return rates


# ----------------------------------------------------------------------------- driver
def build_stage(stage: str, args: argparse.Namespace):
    from hydra.utils import instantiate

    cfg = compose_stage(stage, args)
    torch.manual_seed(int(cfg.seed))
    model = instantiate(cfg.model)
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed)
    return module, int(cfg.dataset.num_classes)


def profile_table(profiler: Any, rows: int = 12) -> str:
    return profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def profile_difference(real: Any, bare: Any, steps: int, rows: int = 15) -> str:
    """Ops by how much more self CPU time per step the real step spends in them than the bare step (ms, calls)."""
    def per_op(profiler: Any) -> dict[str, tuple[float, float]]:
        return {e.key: (e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in profiler.key_averages()}

    real_ops, bare_ops = per_op(real), per_op(bare)
    names = sorted(set(real_ops) | set(bare_ops),
                   key=lambda n: real_ops.get(n, (0, 0))[0] - bare_ops.get(n, (0, 0))[0], reverse=True)
    total = sum(v[0] for v in real_ops.values()) - sum(v[0] for v in bare_ops.values())
    lines = [f"{'op':<48} {'real ms':>9} {'bare ms':>9} {'extra ms':>9} {'real calls':>11} {'bare calls':>11}"]
    for name in names[:rows]:
        (r_ms, r_calls), (b_ms, b_calls) = real_ops.get(name, (0, 0)), bare_ops.get(name, (0, 0))
        lines.append(f"{name[:48]:<48} {r_ms:>9.2f} {b_ms:>9.2f} {r_ms - b_ms:>9.2f} {r_calls:>11.1f} {b_calls:>11.1f}")
    lines.append(f"{'total self CPU per step':<48} {'':>9} {'':>9} {total:>9.2f}")
    return "\n".join(lines)


def bench_stage(stage: str, args: argparse.Namespace, device: torch.device) -> tuple[list[dict], Any, list[float]]:
    """Real vs bare step of one stage, alternated; returns the records, the module (for eval) and the real
    step's block medians (seconds)."""
    module, num_classes = build_stage(stage, args)
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(stage, args.batch, args.crop, num_classes, generator)
    bare = BareStep(stage, module, device, bf16=args.precision == "bf16-mixed")
    device_batch = to_device(batch, device)

    def bare_step(step: int) -> None:
        bare(device_batch, step)

    if args.profile:  # profiles only: real and bare run apart, so that each profile holds one of them
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=activities)
        real_times = run_real_stage(module, batch, args, device, None, profiler).real
        print(f"\n== profile of {stage} (real step, {args.steps} steps) ==\n{profile_table(profiler)}")
        alternate([bare_step], args.warmup, 0, device)  # warm-up outside the profile, as for the real step
        with profile(activities=activities) as bare_profile:
            (bare_times,) = alternate([bare_step], args.steps, 0, device)
        print(f"\n== profile of {stage} (bare step) ==\n{profile_table(bare_profile)}")
        print(f"\n== {stage}: real minus bare, per step ==\n{profile_difference(profiler, bare_profile, args.steps)}")
        peak_mib = None
    else:
        with PeakMemory(device) as memory:
            timer = run_real_stage(module, batch, args, device, bare_step)
        real_times, bare_times, peak_mib = timer.real, timer.bare, memory.peak_mib
    real_blocks = block_medians(real_times, args.blocks)
    rows = [
        measured(f"{stage}/step_ms", [1000 * t for t in real_blocks]),
        measured(f"{stage}/bare_ms", [1000 * t for t in block_medians(bare_times, args.blocks)]),
        at_most(f"{stage}/ratio", block_ratios(real_times, bare_times, args.blocks), OVERHEAD_TARGET,
                judge=not (args.quick or args.profile)),
        record(f"{stage}/peak_{'cuda_alloc' if device.type == 'cuda' else 'rss'}_mib", peak_mib),
    ]
    return rows, module, real_blocks


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


def data_rows(args: argparse.Namespace, teach_step_seconds: list[float] | None) -> list[dict]:
    """Data throughput per worker at the paper's frame size (absolute target), and — at the same geometry scaled
    to the bench's crop — against what the Teach step of this run consumes (``batch / step time``)."""
    judge = not args.quick
    paper = bench_data(args.data_images, args.data_samples, args.blocks)
    rows = [at_least("data/img_per_s_per_worker", paper, WORKER_IMG_S_TARGET, judge=judge)]
    if teach_step_seconds:
        frame, scale, crop = pipeline_geometry(args.crop)
        scaled = bench_data(args.data_images, args.data_samples, args.blocks, frame, scale, crop)
        consumed = [args.batch / t for t in teach_step_seconds]
        multiples = [min(scaled) / max(consumed), statistics.median(scaled) / statistics.median(consumed),
                     max(scaled) / min(consumed)]  # worst, median, best pairing
        rows += [measured(f"data/img_per_s_per_worker_{frame[0]}x{frame[1]}", scaled),
                 measured("teach/consumed_img_per_s", consumed)]
        rows.append(at_least("data/per_worker_over_teach_consumption", multiples, CONSUMPTION_MULTIPLE_TARGET, "x",
                             judge))
    return rows


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
