"""Black-box distillation: the source model is reachable only through its predictions (spec §10)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from atp.errors import UserError
from atp.models.weights import load_segmentor, read_checkpoint
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


def black_box_from_checkpoint(network: torch.nn.Module, path: str, which: str = "student",
                              trust: bool = False) -> BlackBoxSource:
    """``network`` with the weights of checkpoint ``path``, wrapped so only class probabilities come out
    (at the input size). The network moves to the images' device on the first call."""
    state = read_checkpoint(path, which=which, trust=trust)
    load_segmentor(network, state, source=str(path))
    network.eval()

    def predict(images: torch.Tensor) -> torch.Tensor:
        if next(network.parameters()).device != images.device:  # once, on the first batch
            network.to(images.device)
        logits = F.interpolate(network(images), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.softmax(dim=1)

    return BlackBoxSource(predict)


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
    predecessors = ()  # replaces source in a black-box chain: align starts from it
    data_mode = "target"
    default_init = None
    chain_position = None

    not_hyperparameters = ("model", "oracle_model")

    def __init__(
        self,
        model: torch.nn.Module,
        oracle: str | None = None,
        oracle_which: str = "student",
        oracle_trust: bool = False,
        oracle_model: torch.nn.Module | None = None,
        temperature: float = 1.0,
        hard_ce_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """``oracle``: the source checkpoint (any format ``atp.convert`` reads; ``oracle_which`` student or
        teacher, ``oracle_trust`` allows full unpickling); ``oracle_model``: an untrained network of the
        source's architecture (the config passes ``${model}``) that the checkpoint is loaded into."""
        super().__init__(model, **kwargs)
        if not oracle:
            raise UserError("stage=distill needs stage.module.oracle=/path/to/source_checkpoint")
        if oracle_model is None:
            raise UserError("stage=distill needs stage.module.oracle_model (the config sets it to ${model})")
        self.oracle = black_box_from_checkpoint(oracle_model, oracle, which=oracle_which, trust=oracle_trust)
        self.temperature = temperature
        self.hard_ce_weight = hard_ce_weight

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
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
