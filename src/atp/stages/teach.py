"""Step T — Teach: complementary self-training with positive and negative pseudo-labels (spec §6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atp.adaptation import (
    class_balanced_pseudo_labels,
    mean_negative_classes,
    pseudo_label_ce_and_negative,
)
from atp.data.labels import IGNORE_INDEX
from atp.stages.mean_teacher import MeanTeacherStage


class TeachStage(MeanTeacherStage):
    """L_T = CE(student(A(x)), teacher argmax) + L_npl with classes p < τ_n as negatives."""

    stage_name = "teach"
    predecessors = ("align",)
    data_mode = "target"
    default_init = "auto"
    chain_position = 2

    def __init__(
        self,
        model: torch.nn.Module,
        pos_weight: float = 1.0,
        pos_threshold: float | None = None,
        pos_class_keep: float | None = None,
        neg_weight: float = 1.0,
        neg_threshold: float = 0.04,
        neg_source: str = "student",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if neg_source not in ("student", "teacher"):
            raise ValueError(f"stage.module.neg_source must be 'student' or 'teacher', got {neg_source!r}")
        if pos_class_keep is not None and not 0.0 < pos_class_keep <= 1.0:
            raise ValueError(f"stage.module.pos_class_keep must lie in (0, 1] or be null, got {pos_class_keep}")
        self.pos_weight, self.pos_threshold, self.pos_class_keep = pos_weight, pos_threshold, pos_class_keep
        self.neg_weight, self.neg_threshold, self.neg_source = neg_weight, neg_threshold, neg_source

    @property
    def thresholds_positives(self) -> bool:
        return self.pos_threshold is not None or self.pos_class_keep is not None

    def select_positives(self, labels: torch.Tensor, confidence: torch.Tensor | None) -> torch.Tensor:
        """Teacher labels with the unselected pixels ignored: global threshold and/or class-wise share."""
        if self.pos_class_keep is not None:
            return class_balanced_pseudo_labels(
                labels, confidence, self.pos_class_keep, self.num_classes,
                threshold=self.pos_threshold, ignore_index=IGNORE_INDEX,
            )
        if self.pos_threshold is not None:
            return labels.masked_fill(confidence < self.pos_threshold, IGNORE_INDEX)
        return labels

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.begin_step()
        self.update_teacher()
        pseudo = self.pseudo_label(
            batch["img"], keep_probs=self.neg_source == "teacher",
            need_confidence=self.thresholds_positives or self.should_log(),  # q is only logged in Teach
        )
        self.track_classes(pseudo.labels)
        labels = self.select_positives(pseudo.labels, pseudo.confidence)
        aug_generator = self.step_generator("cpu")
        params = self.strong_aug.draw(aug_generator)
        strong = self.strong_aug.apply(pseudo.images, params, aug_generator)
        logits = self.upsample(self.student(strong), strong.shape[-2:])
        mask_probs = pseudo.probs if self.neg_source == "teacher" else None
        positive, negative, probs = pseudo_label_ce_and_negative(
            logits, labels, threshold=self.neg_threshold, weights=self.balanced(labels), mask_probs=mask_probs,
            ignore_index=IGNORE_INDEX,
        )
        self.manual_backward(self.pos_weight * positive + self.neg_weight * negative)
        self.finish_step()
        if self.should_log():
            reference = mask_probs if mask_probs is not None else probs.detach()
            self.log_terms(
                {
                    "loss/pos": positive,
                    "loss/neg": negative,
                    "pseudo/quality": pseudo.quality,
                    "pseudo/neg_classes_per_pixel": mean_negative_classes(reference, self.neg_threshold),
                }
            )
