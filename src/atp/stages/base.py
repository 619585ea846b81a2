"""The SegFormer student every stage trains: evaluation, optimiser, schedule, logging (spec §4.1, §11)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from atp.data.labels import CLASS_NAMES
from atp.errors import UserError
from atp.evaluation.inference import acdc_class_prior_weights, segment
from atp.evaluation.metrics import SegMetric
from atp.stages.options import EvalOptions, OptimOptions, ScheduleOptions, option_group

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig → plain containers (hyper-parameters must pickle without omegaconf)."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def poly_warmup_factor(step: int, max_steps: int, power: float, warmup_steps: int, warmup_ratio: float,
                       min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier: poly decay to ``min_ratio`` (min_lr / base lr) over ``max_steps``, linear
    warm-up from ``warmup_ratio`` (mmcv's poly policy)."""
    progress = min(step, max_steps) / max(max_steps, 1)
    factor = (1.0 - progress) ** power * (1.0 - min_ratio) + min_ratio
    if warmup_steps > 0 and step < warmup_steps:
        factor *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
    return factor


def make_adamw(named_params, cfg: Mapping[str, Any], device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (spec §4.1); fused on CUDA unless ``cfg['fused']`` says otherwise."""
    groups = parameter_groups(named_params, cfg["lr"], cfg["weight_decay"], cfg["head_lr_mult"], cfg["norm_decay_mult"])
    fused = cfg.get("fused")
    fused = device.type == "cuda" if fused is None else fused
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), fused=bool(fused) or None)


def parameter_groups(named_params, lr: float, weight_decay: float, head_lr_mult: float, norm_decay_mult: float):
    """mmcv-style groups (spec §4.1): names with ``head`` get lr × mult; else ``norm`` gets no decay."""
    head, norm, rest = [], [], []
    for name, param in named_params:
        if not param.requires_grad:
            continue
        if "head" in name:
            head.append(param)
        elif "norm" in name:
            norm.append(param)
        else:
            rest.append(param)
    groups = [
        {"params": rest, "lr": lr, "weight_decay": weight_decay, "name": "encoder"},
        {"params": norm, "lr": lr, "weight_decay": weight_decay * norm_decay_mult, "name": "norm"},
        {"params": head, "lr": lr * head_lr_mult, "weight_decay": weight_decay, "name": "head"},
    ]
    return [g for g in groups if g["params"]]


class SegStage(pl.LightningModule):
    """Base LightningModule: the student ``Segmentor``, target-val mIoU, AdamW + poly/warm-up.

    Subclasses implement ``training_step`` with manual optimisation (several backward passes, one
    optimiser step) and call :meth:`finish_step`. Randomness inside a step (strong augmentation,
    dropout) is seeded from ``(seed, global_step)`` so a resumed run repeats the same draws.
    """

    # What orchestration needs to know about a stage; every concrete stage sets all five and is then
    # found by the registry (atp.stages.registry) without being listed anywhere.
    #: the name users select with ``stage=<name>``; None = not a stage of its own (a base class)
    stage_name: ClassVar[str | None] = None
    #: stages whose final checkpoint this one may start from (``init_from=auto`` takes the newest)
    predecessors: ClassVar[tuple[str, ...]] = ()
    #: the training data: ``source`` (labelled source), ``target`` (unlabelled target) or ``easy_hard``
    data_mode: ClassVar[str | None] = None
    #: ``"auto"`` (start from a predecessor's checkpoint) or None (ImageNet encoder / random)
    default_init: ClassVar[str | None] = None
    #: position in the default chain (``stage=chain``); None = not part of it
    chain_position: ClassVar[int | None] = None
    #: whether an EMA teacher's pseudo-labels train the student (its mIoU and pseudo-labels are then reported)
    teaches_with_pseudo_labels: ClassVar[bool] = False
    #: a standard source-free baseline ATP is compared with (a row of the ladder's method table), not part of ATP
    baseline: ClassVar[bool] = False
    #: constructor arguments kept out of the checkpoint's hyper-parameters (networks, not options)
    not_hyperparameters: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimOptions | Mapping,
        schedule: ScheduleOptions | Mapping,
        eval: EvalOptions | Mapping,
        num_classes: int = 19,
        seed: int = 76,
        log_interval: int = 50,
        collapse_share: float = 0.6,
        collapse_patience: int = 3,
        source_class_share: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.student = model
        self.optim_cfg = option_group(OptimOptions, _plain(optim), "optim")
        self.schedule_cfg = option_group(ScheduleOptions, _plain(schedule), "schedule")
        self.eval_cfg = option_group(EvalOptions, _plain(eval), "eval")
        self.num_classes = num_classes
        self.seed = int(seed)
        self.log_interval = max(int(log_interval), 1)
        self.collapse_share = collapse_share
        self.collapse_patience = collapse_patience
        self._collapse_streak = 0
        self.save_hyperparameters(ignore=list(self.not_hyperparameters))
        self.val_metric = SegMetric(num_classes, subsets=self.eval_cfg.get("class_subsets") or ("all19",),
                                    class_names=CLASS_NAMES[:num_classes], validate_args=False)
        prior = acdc_class_prior_weights() if self.eval_cfg.get("acdc_class_prior") else None
        self.register_buffer("class_prior", prior, persistent=False)
        # The share of each class among the source labels (issue #23): counted by the source stage, carried
        # by every stage's checkpoint from the one it started from; None (not saved) when unknown.
        if source_class_share is not None and len(source_class_share) != num_classes:
            raise UserError(f"the init_from checkpoint carries a source class share of {len(source_class_share)} "
                            f"classes, but dataset.num_classes is {num_classes}: start from a model of this dataset")
        share = None if source_class_share is None else torch.tensor(list(source_class_share), dtype=torch.float32)
        self.register_buffer("source_class_share", share)

    # ------------------------------------------------------------------ optimisation
    def trainable_named_parameters(self):
        """Parameters the optimiser updates (the student's; teachers and buffers are excluded)."""
        return (("student." + n, p) for n, p in self.student.named_parameters())

    def configure_optimizers(self):
        optimizer = make_adamw(self.trainable_named_parameters(), self.optim_cfg, self.device)
        sched = self.schedule_cfg
        min_lr = float(sched.get("min_lr") or 0.0)

        def group_factor(base_lr: float):
            min_ratio = min_lr / base_lr if base_lr > 0 else 0.0
            return lambda step: poly_warmup_factor(step, sched["max_steps"], sched["poly_power"],
                                                   sched["warmup_steps"], sched["warmup_ratio"], min_ratio)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [group_factor(g["lr"]) for g in optimizer.param_groups])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def finish_step(self) -> None:
        """One optimiser step and one schedule step (gradients were accumulated by the caller)."""
        self.optimizers().step()
        self.lr_schedulers().step()

    def begin_step(self) -> torch.optim.Optimizer:
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        return optimizer

    # ------------------------------------------------------------------ randomness
    def step_generator(self, device: torch.device | str | None = None) -> torch.Generator:
        """A generator seeded by (seed, step), on ``device`` (default: the module's), same after a resume."""
        generator = torch.Generator(device=device or self.device)
        generator.manual_seed(self.seed * 1_000_003 + self.global_step)
        return generator

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(self.seed * 7_919 + self.global_step)
        # Fixed for the whole step: the optimiser step in the middle advances global_step, and what a
        # step computes for logging must match whether it logs.
        self._log_this_step = self.logs_at(self.global_step)

    # ------------------------------------------------------------------ logging
    def logs_at(self, step: int) -> bool:
        """Whether the training step that starts at ``global_step == step`` logs (every ``log_interval`` steps)."""
        return (step + 1) % self.log_interval == 0

    def should_log(self) -> bool:
        """Whether the current training step logs (every ``log_interval`` steps, counted after the step)."""
        return getattr(self, "_log_this_step", False)

    def log_terms(self, terms: Mapping[str, torch.Tensor | float]) -> None:
        """Log scalars under ``train/`` at the logging interval only (a host sync happens there)."""
        if not self.should_log():
            return
        values = {f"train/{k}": (v.detach().float() if torch.is_tensor(v) else float(v)) for k, v in terms.items()}
        optimizer = self.optimizers()
        values["train/lr"] = optimizer.param_groups[0]["lr"]
        self.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, batch_size=1)

    # ------------------------------------------------------------------ evaluation
    def inference_options(self) -> dict[str, Any]:
        """Keyword arguments of ``atp.evaluation.inference.segment``/``segment_probs``: mode, TTA, class prior."""
        cfg = self.eval_cfg
        return {
            "mode": cfg.get("mode", "whole"),
            "crop_size": cfg.get("crop_size"),
            "stride": cfg.get("stride"),
            "flip": bool(cfg.get("flip", False)),
            "class_prior": self.class_prior,
        }

    def predict_labels(self, img: torch.Tensor, out_size: Sequence[int], model: torch.nn.Module | None = None):
        """Predicted train ids at ``out_size`` with the configured inference mode/TTA/class prior."""
        return segment(model or self.student, img, out_size, **self.inference_options())

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        label = batch["label"]
        self.val_metric.update(self.predict_labels(batch["img"], label.shape[-2:]), label)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/<name>`` for every :class:`SegMetric` score (all-reduced across ranks), plus the
        largest predicted-class share; a class absent from labels and predictions logs IoU 0, not NaN."""
        confmat = self.val_metric.confmat
        self.val_metric.reset()
        if confmat.sum() == 0:
            return
        metrics = {f"val/{name}": 0.0 if math.isnan(value := float(score)) else value
                   for name, score in self.val_metric.scores(confmat).items()}
        share = confmat.sum(dim=0).float() / confmat.sum()
        metrics["val/max_class_share"] = float(share.max())
        self.log_dict(metrics, sync_dist=False, batch_size=1)
        self._watch_collapse(share)
        self.last_val_metrics = metrics

    def _watch_collapse(self, share: torch.Tensor) -> None:
        """Warn when one class takes over the predictions for several validations (small-scale notes #3)."""
        top = int(share.argmax())
        if float(share[top]) > self.collapse_share:
            self._collapse_streak += 1
            if self._collapse_streak >= self.collapse_patience:
                log.warning(
                    "pseudo-label collapse? class %r takes %.0f%% of target-val predictions for %d validations",
                    CLASS_NAMES[top], 100 * float(share[top]), self._collapse_streak,
                )
        else:
            self._collapse_streak = 0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def upsample(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
