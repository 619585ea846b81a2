"""The stage benchmarks: each real stage module on synthetic batches, timed step by step against a bare
step (only the compute the method cannot avoid), and the evaluation benchmark."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from atp.bench.records import at_most, block_medians, block_ratios, measured, record
from atp.bench.timing import (
    PeakMemory,
    alternate,
    profile_difference,
    profile_table,
    step_timer_callback,
)
from atp.config import CONF_DIR
from atp.stages import build_stage_module, default_chain

#: the stages of the default chain (the bare reference steps below exist for these)
ALL_STAGES = tuple(default_chain())
OVERHEAD_TARGET = 1.10


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


def build_stage(stage: str, args: argparse.Namespace):
    from hydra.utils import instantiate

    cfg = compose_stage(stage, args)
    torch.manual_seed(int(cfg.seed))
    model = instantiate(cfg.model)
    module = build_stage_module(cfg.stage, model=model, num_classes=cfg.dataset.num_classes, seed=cfg.seed)
    return module, int(cfg.dataset.num_classes)


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
