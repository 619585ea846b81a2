"""Performance benchmark: stage overhead, evaluation overhead, data-pipeline throughput, peak memory.

``python -m atp.bench --quick --json outputs/bench.json`` (``make bench``). In one process, for each
stage the real ``LightningModule`` is built from the Hydra configs (``conf/train.yaml`` with
``stage=<s> model=<m>``, then :func:`atp.stages.build_stage_module`) and trained by a minimal Lightning
``Trainer`` on synthetic in-memory batches; a callback times ``on_train_batch_start`` →
``on_train_batch_end`` (the real ``training_step`` with Lightning's manual-optimisation plumbing).
The same step is then written out bare — only the compute the method cannot avoid — and timed on
copies of the same networks. ``ratio = stage / bare`` (target ≤ 1.10) measures what the stage code
adds. See BENCHMARKS.md for what each bare step contains.
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
from atp.data.io import write_png_atomic
from atp.stages import build_stage_module, default_chain

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: the stages of the default chain (the bare reference steps below exist for these)
ALL_STAGES = tuple(default_chain())
OVERHEAD_TARGET = 1.10
WORKER_IMG_S_TARGET = 5.0
CONSUMPTION_MULTIPLE_TARGET = 3.0
#: Cityscapes frame, the train resize target and the paper's crop (spec §2.4–§2.6).
CITYSCAPES_SIZE = (2048, 1024)
TRAIN_SCALE = (1280, 640)
TRAIN_CROP = (640, 640)


# ----------------------------------------------------------------------------- records
def record(metric: str, value: float | None, target: str | None = None, meets: bool | None = None) -> dict:
    """One result row: ``{"metric", "value", "target", "meets"}`` (``meets`` is null without a target)."""
    return {"metric": metric, "value": None if value is None else round(float(value), 4),
            "target": target, "meets": meets}


def at_most(metric: str, value: float, limit: float) -> dict:
    return record(metric, value, f"<= {limit:g}", bool(value <= limit))


def at_least(metric: str, value: float, floor: float, unit: str = "") -> dict:
    return record(metric, value, f">= {floor:g}{unit}", bool(value >= floor))


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of the records."""
    lines = [f"{'metric':<42} {'value':>12} {'target':>10} {'meets':>6}", "-" * 73]
    for row in rows:
        meets = {True: "yes", False: "NO", None: ""}[row["meets"]]
        value = "n/a" if row["value"] is None else f"{row['value']:.4g}"
        lines.append(f"{row['metric']:<42} {value:>12} {row['target'] or '':>10} {meets:>6}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- timing helpers
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[int], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn(step)`` over ``steps`` calls after ``warmup`` untimed calls."""
    times = []
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        fn(step)
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
def step_timer_callback(warmup: int, device: torch.device, profiler: Any | None):
    """A Lightning callback recording the wall time of each training batch after ``warmup`` batches."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._seen = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self._seen == warmup and profiler is not None:
                profiler.start()
            synchronize(device)
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            synchronize(device)
            if self._seen >= warmup:
                self.times.append(time.perf_counter() - self._start)
            self._seen += 1

        def on_train_end(self, trainer, module) -> None:
            if profiler is not None and self._seen > warmup:
                profiler.stop()

    return StepTimer()


def run_real_stage(module, batch: dict, args: argparse.Namespace, device: torch.device, profiler=None) -> float:
    """Median seconds per ``training_step`` of ``module`` driven by ``Trainer.fit``."""
    import pytorch_lightning as pl

    timer = step_timer_callback(args.warmup, device, profiler)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=args.precision,
        max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(RepeatedBatch(batch, args.warmup + args.steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return statistics.median(timer.times)


# ----------------------------------------------------------------------------- the bare steps
class BareStep:
    """The compute a stage cannot avoid, written directly on copies of the module's networks.

    Every variant: one ``zero_grad``, forward/backward passes on a plain loss at crop resolution
    (bilinear upsampling of 1/4 logits, as every stage does), one AdamW step with the same groups.
    Teacher stages add the EMA update and the strong augmentation (both part of the method).
    """

    def __init__(self, stage: str, module, device: torch.device, bf16: bool) -> None:
        from atp.stages.base import make_adamw

        self.stage, self.device = stage, device
        self.student = copy.deepcopy(module.student).to(device).train()
        self.optimizer = make_adamw(self.student.named_parameters(), module.optim_cfg, device)  # as the stage's
        self.teacher = None
        if hasattr(module, "teacher"):
            self.teacher = copy.deepcopy(module.student).to(device).eval().requires_grad_(False)
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

    steps = max(args.steps, 3)
    t_real = median_seconds(real, steps, args.warmup, device)
    t_pred = median_seconds(bare_prediction, steps, args.warmup, device)
    t_fwd = median_seconds(bare_forward, steps, args.warmup, device)
    module.val_metric.reset()
    return [
        record("eval/step_ms", 1000 * t_real),
        record("eval/bare_prediction_ms", 1000 * t_pred),
        at_most("eval/ratio_vs_prediction", t_real / t_pred, OVERHEAD_TARGET),
        record("eval/ratio_vs_forward_only", t_real / t_fwd),
    ]


# ----------------------------------------------------------------------------- data pipeline
def write_cityscapes_frames(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` 2048×1024 PNGs in the Cityscapes train layout, photo-like in compressibility."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "leftImg8bit" / "train" / "aachen"
    folder.mkdir(parents=True, exist_ok=True)
    width, height = CITYSCAPES_SIZE
    for index in range(count):
        coarse = rng.integers(0, 256, (height // 32, width // 32, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        noisy = np.clip(smooth + rng.integers(-6, 7, smooth.shape), 0, 255).astype(np.uint8)
        write_png_atomic(folder / f"aachen_{index:06d}_000019_leftImg8bit.png", noisy)
    return root


def bench_data(images: int, samples: int) -> float:
    """Images per second of the real target training dataset in this process (= one worker)."""
    from atp.data.datasets import CityscapesDataset

    with tempfile.TemporaryDirectory(prefix="atp-bench-") as tmp:
        root = write_cityscapes_frames(Path(tmp) / "cityscapes", images)
        dataset = CityscapesDataset(root, split="train", scale=TRAIN_SCALE, labelled=False, pipeline="train",
                                    crop_size=TRAIN_CROP)
        dataset[0]  # index the folder, warm the codecs
        start = time.perf_counter()
        for index in range(samples):
            sample = dataset[(index % len(dataset), index)]
        elapsed = time.perf_counter() - start
        assert tuple(sample["img"].shape) == (3, *TRAIN_CROP)
    return samples / elapsed


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


def bench_stage(stage: str, args: argparse.Namespace, device: torch.device) -> tuple[list[dict], Any, float]:
    """Real vs bare step of one stage; returns the records, the module (for eval) and the step time."""
    module, num_classes = build_stage(stage, args)
    generator = torch.Generator().manual_seed(0)
    batch = synthetic_batch(stage, args.batch, args.crop, num_classes, generator)
    profiler = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=activities)
    with PeakMemory(device) as memory:
        t_real = run_real_stage(module, batch, args, device, profiler)
    if profiler is not None:
        print(f"\n== profile of {stage} (real step, {args.steps} steps) ==\n{profile_table(profiler)}")
    bare = BareStep(stage, module, device, bf16=args.precision == "bf16-mixed")
    device_batch = to_device(batch, device)
    t_bare = median_seconds(lambda step: bare(device_batch, step), args.steps, args.warmup, device)
    if profiler is not None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as bare_profile:
            for step in range(args.steps):
                bare(device_batch, step)
        print(f"\n== profile of {stage} (bare step) ==\n{profile_table(bare_profile)}")
    rows = [
        record(f"{stage}/step_ms", 1000 * t_real),
        record(f"{stage}/bare_ms", 1000 * t_bare),
        at_most(f"{stage}/ratio", t_real / t_bare, OVERHEAD_TARGET),
        record(f"{stage}/peak_{'cuda_alloc' if device.type == 'cuda' else 'rss'}_mib", memory.peak_mib),
    ]
    return rows, module, t_real


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m atp.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mitb0_lite", choices=["mitb0_lite", "mitb0", "mitb5"])
    parser.add_argument("--crop", type=int, default=128, help="square training crop (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="images per stream (default 2, spec §2.7)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--quick", action="store_true", help="tiny model, 64² crops, few steps (< 2 min on 2 CPU cores)")
    parser.add_argument("--json", type=Path, default=None, help="write the records as a JSON list here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--stages", default=",".join(ALL_STAGES), help="comma-separated subset of " + ",".join(ALL_STAGES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--data-images", type=int, default=4, help="2048×1024 PNGs generated for the data benchmark")
    parser.add_argument("--data-samples", type=int, default=12, help="samples timed in the data benchmark")
    parser.add_argument("--no-data", action="store_true", help="skip the data-pipeline benchmark")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of real and bare steps "
                        "(the profiler runs during the timed real steps: use the timings of a run without it)")
    parser.add_argument("--dry-run", action="store_true", help="compose every stage config and exit (no model is built)")
    args = parser.parse_args(argv)
    if args.quick:
        explicit = set(argv if argv is not None else sys.argv[1:])
        args.crop = args.crop if "--crop" in explicit else 64
        args.steps = args.steps if "--steps" in explicit else 8
        args.warmup = args.warmup if "--warmup" in explicit else 2
        args.data_images = args.data_images if "--data-images" in explicit else 2
        args.data_samples = args.data_samples if "--data-samples" in explicit else 6
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(ALL_STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(ALL_STAGES)}")
    args.stage_list = stages
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
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
        step_seconds: dict[str, float] = {}
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
            per_worker = bench_data(args.data_images, args.data_samples)
            rows.append(at_least("data/img_per_s_per_worker", per_worker, WORKER_IMG_S_TARGET))
            if "teach" in step_seconds:
                consumed = args.batch / step_seconds["teach"]
                rows.append(record("teach/consumed_img_per_s", consumed))
                rows.append(at_least("data/per_worker_over_teach_consumption", per_worker / consumed,
                                     CONSUMPTION_MULTIPLE_TARGET, "x"))
        rows.append(record("bench/wall_s", time.perf_counter() - started))
        print(f"\natp.bench: model={args.model} crop={args.crop} batch={args.batch} device={args.device} "
              f"precision={args.precision} threads={torch.get_num_threads()} steps={args.steps} (+{args.warmup} warm-up)")
    print(format_table(rows))
    if args.json is not None and not args.dry_run:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
