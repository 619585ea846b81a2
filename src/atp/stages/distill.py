"""Black-box distillation: the source model is reachable only through its predictions (spec §10)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from atp.stages.base import SegStage


class BlackBoxSource:
    """A source model wrapped so that only its class probabilities are reachable.

    It is deliberately not an ``nn.Module`` attribute of the stage: its weights are never saved
    in the student's checkpoints, never trained and never seen by the optimiser.
    """

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._predict = predict

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self._predict(images)


def distill_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T²·KL(p_T ‖ q_T) per pixel, averaged: both sides softened by T (Hinton et al.).

    The source is a black box giving probabilities p, so its softened distribution is p^(1/T)
    renormalised, i.e. softmax(log p / T), exactly softmax(z / T) for the logits z behind p.
    """
    target = target_probs
    if temperature != 1.0:
        target = (target_probs.clamp_min(1e-12).log() / temperature).softmax(dim=1)
    log_probs = (student_logits / temperature).log_softmax(dim=1)
    return F.kl_div(log_probs, target, reduction="none").sum(dim=1).mean() * temperature**2


class DistillStage(SegStage):
    """Pixel-wise KL(source ‖ student) on weakly augmented target images (+ optional hard CE)."""

    stage_name = "distill"

    def __init__(
        self,
        model: torch.nn.Module,
        oracle: BlackBoxSource | None = None,
        temperature: float = 1.0,
        hard_ce_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.oracle = oracle
        self.temperature = temperature
        self.hard_ce_weight = hard_ce_weight

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if self.oracle is None:
            raise RuntimeError("stage=distill needs stage.module.oracle (a source checkpoint path)")
        self.begin_step()
        images = batch["img"]
        target = self.oracle(images)  # (B, C, H, W) probabilities at the input size
        logits = self.upsample(self.student(images), images.shape[-2:])
        kl = distill_kl(logits, target, self.temperature)
        loss = kl
        terms = {"loss/kl": kl}
        if self.hard_ce_weight > 0:
            hard = F.cross_entropy(logits, target.argmax(dim=1))
            loss = loss + self.hard_ce_weight * hard
            terms["loss/hard_ce"] = hard
        self.manual_backward(loss)
        self.finish_step()
        self.log_terms(terms)
