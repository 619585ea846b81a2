"""SHOT-IM (Liang et al., ICML 2020) — a standard source-free baseline: information maximisation with the
source hypothesis (classifier) frozen."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atp.adaptation import information_maximization_loss
from atp.stages.mean_teacher import MeanTeacherStage

FREEZE_CHOICES = ("classifier", "decoder")


class ShotStage(MeanTeacherStage):
    """L = mean per-pixel entropy − div_weight · entropy of the batch's mean prediction (both nats).

    Hypothesis transfer: ``freeze=classifier`` (default, SHOT) freezes the 1×1 classifier
    ``student.decode_head.conv_seg`` and trains the rest of the prediction path (encoder and the other
    decoder layers, BatchNorms on batch statistics); ``freeze=decoder`` freezes the whole decode head, its
    BatchNorms in eval mode (source statistics), like Align's ``freeze_decoder``. The projection head is not
    on the prediction path and gets no gradient. No augmentation (``strong_aug`` probabilities 0 in
    ``conf/stage/shot.yaml``); the EMA teacher only chooses the crop of inputs larger than it (ACDC).
    SHOT's clustering pseudo-labels (full SHOT) are not built: they need a pass over the whole target set per
    epoch and per-pixel labels aligned to the random crops.
    """

    stage_name = "shot"
    predecessors = ("source",)
    data_mode = "target"
    default_init = "auto"
    chain_position = None  # a baseline, not part of ATP's chain
    baseline = True
    teaches_with_pseudo_labels = False

    def __init__(self, model: torch.nn.Module, div_weight: float = 1.0, freeze: str = "classifier",
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if freeze not in FREEZE_CHOICES:
            raise ValueError(f"stage.module.freeze must be one of {', '.join(FREEZE_CHOICES)}, got {freeze!r}")
        self.div_weight, self.freeze = div_weight, freeze
        frozen = self.student.decode_head if freeze == "decoder" else self.student.decode_head.conv_seg
        frozen.requires_grad_(False)

    def trainable_named_parameters(self):
        """The prediction path's parameters that are not frozen (the projection head is left out)."""
        return (("student." + name, param) for name, param in self.student.named_parameters()
                if not name.startswith("proj_head.") and param.requires_grad)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.hold_decoder_bn(self.freeze == "decoder")
        self.begin_step()
        images = self.target_crop(batch["img"])
        aug_generator = self.step_generator("cpu")
        params = self.strong_aug.draw(aug_generator)
        images = self.strong_aug.apply(images, params, aug_generator)  # the images themselves at p = 0
        logits = self.upsample(self.student(images), images.shape[-2:])
        loss, entropy, diversity = information_maximization_loss(logits, div_weight=self.div_weight)
        self.manual_backward(loss)
        self.finish_step()
        self.log_terms({"loss/ent": entropy, "loss/div": -diversity, "loss/total": loss})
