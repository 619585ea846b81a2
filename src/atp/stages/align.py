"""Step A — Align: curriculum entropy + diversity on unlabelled target images (spec §5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atp.adaptation import curriculum_entropy_loss, diversity_loss
from atp.errors import UserError
from atp.stages.mean_teacher import MeanTeacherStage


class AlignStage(MeanTeacherStage):
    """L_A = λ_cel·mean((1−H)^γ·H) − λ_div·Ĥ(m) on the student's prediction of A(x).

    The EMA teacher exists only to choose class-balanced crops for inputs larger than the crop
    (ACDC); for inputs already at crop size it is neither updated nor run.
    """

    stage_name = "align"
    predecessors = ("source", "distill")
    data_mode = "target"
    default_init = "auto"
    chain_position = 1
    teaches_with_pseudo_labels = False

    def __init__(
        self,
        model: torch.nn.Module,
        cel_weight: float = 1e-3,
        cel_gamma: float = 5.0,
        div_weight: float = 1e-4,
        div_alpha: float = 3.0,
        div_bug_compat: bool = False,
        freeze_decoder: bool = False,
        freeze_decoder_bn: bool | None = None,
        div_toward: str = "uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if div_toward not in ("uniform", "source_prior"):
            raise ValueError(f"stage.module.div_toward must be 'uniform' or 'source_prior', got {div_toward!r}")
        if div_toward == "source_prior" and self.source_class_share is None:
            raise UserError("stage.module.div_toward=source_prior needs the source labels' class share, which the "
                            "checkpoint this stage starts from does not carry (train the source with this atp, or "
                            "set stage.module.div_toward=uniform)")
        self.div_toward = div_toward
        self.cel_weight, self.cel_gamma = cel_weight, cel_gamma
        self.div_weight, self.div_alpha, self.div_bug_compat = div_weight, div_alpha, div_bug_compat
        self.freeze_decoder = freeze_decoder
        # None: decoder BN follows freeze_decoder; false with a frozen decoder = AdaBN-style
        # re-estimation of the decoder's BN statistics on target batches.
        self.freeze_decoder_bn = freeze_decoder if freeze_decoder_bn is None else freeze_decoder_bn
        if self.freeze_decoder_bn and self.bn_refresh_batches != 0:
            raise UserError("stage.module.freeze_decoder_bn holds the decoder's BN statistics and "
                            "stage.module.bn_refresh_batches re-estimates them after the last step: set "
                            "stage.module.freeze_decoder_bn=false or stage.module.bn_refresh_batches=0")
        if freeze_decoder:
            self.student.decode_head.requires_grad_(False)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.hold_decoder_bn(self.freeze_decoder_bn)
        self.begin_step()
        images = self.target_crop(batch["img"])
        aug_generator = self.step_generator("cpu")
        params = self.strong_aug.draw(aug_generator)
        strong = self.strong_aug.apply(images, params, aug_generator)
        logits = self.upsample(self.student(strong), strong.shape[-2:])
        cel = curriculum_entropy_loss(logits, gamma=self.cel_gamma)
        prior = self.source_class_share if self.div_toward == "source_prior" else None
        div = diversity_loss(logits, alpha=self.div_alpha, bug_compat=self.div_bug_compat, prior=prior)
        loss = self.cel_weight * cel + self.div_weight * div
        self.manual_backward(loss)
        self.finish_step()
        terms = {"loss/cel": cel, "loss/div": div, "loss/total": loss}
        if self.should_log() and self.source_class_share is not None:
            # how far the (confidence-weighted) predicted class share has drifted from the source's (issue #23)
            terms["drift/marginal_kl_source"] = diversity_loss(logits.detach(), alpha=self.div_alpha,
                                                               prior=self.source_class_share)
        self.log_terms(terms)
