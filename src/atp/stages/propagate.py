"""Step P — Propagate: easy→hard mean teacher with ClassMix and prototype contrast (spec §8)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atp.adaptation import (
    PrototypeEstimator,
    classmix_masks,
    downscale_labels,
    mix,
    mixed_targets,
    prototype_contrastive_loss,
    pseudo_label_ce,
    pseudo_label_ce_and_negative,
    row_ignore_weights,
)
from atp.data.labels import IGNORE_INDEX
from atp.stages.base import _plain
from atp.stages.mean_teacher import MeanTeacherStage
from atp.stages.options import ContrastOptions, option_group


class PropagateStage(MeanTeacherStage):
    """L_P = L_e + 1[t ≥ t0]·L_scl + L_mix, three backward passes and one optimiser step.

    * ``L_e``: CE (+ negative term) of the student on strongly augmented easy images against the
      teacher's argmax of the weak easy images (weight 1 everywhere).
    * ``L_scl``: prototype contrastive loss of the student's projections of the hard images against
      class prototypes estimated from the teacher's projections of the weak easy images.
    * ``L_mix``: weighted CE (+ negative term) on ClassMix images (easy classes pasted onto hard
      images); pasted pixels weigh 1, hard pixels the teacher's quality ``q`` with the top/bottom
      rows ignored.
    """

    stage_name = "propagate"
    predecessors = ("teach",)
    data_mode = "easy_hard"
    default_init = "auto"
    chain_position = 3

    def __init__(
        self,
        model: torch.nn.Module,
        easy_ce_weight: float = 1.0,
        neg_in_ce: bool = True,
        neg_threshold: float = 0.04,
        ignore_top_rows: int = 15,
        ignore_bottom_rows: int = 120,
        mix_enabled: bool = True,
        mix_from_weak: bool = False,
        classmix_batch_union: bool = True,
        scl: ContrastOptions | Mapping | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if getattr(self.student, "proj_head", None) is None:
            raise ValueError("stage=propagate needs a model with a projection head (model.proj_head must not be null)")
        self.easy_ce_weight = easy_ce_weight
        self.neg_in_ce, self.neg_threshold = neg_in_ce, neg_threshold
        self.ignore_top_rows, self.ignore_bottom_rows = ignore_top_rows, ignore_bottom_rows
        self.mix_enabled, self.mix_from_weak = mix_enabled, mix_from_weak
        self.classmix_batch_union = classmix_batch_union
        self.scl = option_group(ContrastOptions, _plain(scl), "scl")
        feat_dim = self.student.proj_head.out_channels
        self.prototypes = PrototypeEstimator(self.num_classes, feat_dim)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.global_step == 0:
            self.prototypes.reset()

    def _ce_with_negative(self, logits: torch.Tensor, labels: torch.Tensor, weights=None) -> torch.Tensor:
        if not self.neg_in_ce:
            return pseudo_label_ce(logits, labels, weights=weights, ignore_index=IGNORE_INDEX)
        positive, negative, _ = pseudo_label_ce_and_negative(
            logits, labels, threshold=self.neg_threshold, weights=weights, ignore_index=IGNORE_INDEX
        )
        return positive + negative

    def _downscale(self, labels: torch.Tensor, size) -> torch.Tensor:
        return downscale_labels(
            labels, factor=self.scl["downscale"], min_ratio=self.scl["min_ratio"],
            num_classes=self.num_classes, ignore_index=IGNORE_INDEX, size=size,
        )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.begin_step()
        self.update_teacher()
        easy_weak = batch["easy"]["img"]
        hard_weak = batch["hard"]["img"]

        # Teacher: easy labels + projection features (one pass), hard labels and quality.
        with self.teacher.teacher_mode() as teacher:
            features = teacher.extract(easy_weak)
            easy_logits, easy_feats = teacher.decode(features), teacher.project(features)
            easy_labels = self._labels_of(easy_logits, easy_weak.shape[-2:], keep_probs=False, need_confidence=False)[0]
        hard = self.pseudo_label(hard_weak)
        hard_weak = hard.images
        self.track_classes(easy_labels, hard.labels)

        aug_generator = self.step_generator("cpu")
        params = self.strong_aug.draw(aug_generator)
        easy_strong = self.strong_aug.apply(easy_weak, params, aug_generator)
        hard_strong = self.strong_aug.apply(hard_weak, params, aug_generator)
        hard_weights = row_ignore_weights(
            hard.quality, hard.labels.shape, top=self.ignore_top_rows, bottom=self.ignore_bottom_rows
        )

        # Prototypes from teacher features of the weak easy images (no gradient).
        with torch.no_grad():
            self.prototypes.update(easy_feats, self._downscale(easy_labels, easy_feats.shape[-2:]))

        # 1) CE on easy images.
        easy_pred = self.upsample(self.student(easy_strong), easy_strong.shape[-2:])
        loss_easy = self.easy_ce_weight * self._ce_with_negative(easy_pred, easy_labels, self.balanced(easy_labels))
        self.manual_backward(loss_easy)
        terms = {"loss/easy_ce": loss_easy}

        # 2) Prototype contrast on hard images, from start_step on.
        if self.scl["weight"] > 0 and self.global_step >= self.scl["start_step"]:
            hard_feats = self.student.project(self.student.extract(hard_strong))
            hard_targets = hard.labels.masked_fill(hard_weights == 0, IGNORE_INDEX)
            loss_scl = self.scl["weight"] * prototype_contrastive_loss(
                hard_feats,
                self._downscale(hard_targets, hard_feats.shape[-2:]),
                self.prototypes.mean,
                temperature=self.scl["temperature"],
                use_reg=self.scl["use_reg"],
                reg_weight=self.scl["reg_weight"],
            )
            self.manual_backward(loss_scl)
            terms["loss/scl"] = loss_scl

        # 3) ClassMix easy → hard.
        if self.mix_enabled:
            masks = classmix_masks(easy_labels, batch_union=self.classmix_batch_union,
                                   generator=self.step_generator())
            source = (easy_weak, hard_weak) if self.mix_from_weak else (easy_strong, hard_strong)
            mixed = self.strong_aug.apply(mix(masks, *source), params, aug_generator)
            mixed_labels, mixed_weights = mixed_targets(masks, easy_labels, hard.labels, hard_weights)
            mixed_pred = self.upsample(self.student(mixed), mixed.shape[-2:])
            loss_mix = self._ce_with_negative(mixed_pred, mixed_labels, weights=self.balanced(mixed_labels, mixed_weights))
            self.manual_backward(loss_mix)
            terms["loss/mix"] = loss_mix

        self.finish_step()
        if self.should_log():
            terms["pseudo/quality_hard"] = hard.quality
            seen = self.prototypes.count > 0
            terms["proto/classes_seen"] = seen.sum().float()
            norms = self.prototypes.mean.norm(dim=1)
            terms["proto/mean_norm"] = norms[seen].mean() if seen.any() else norms.new_zeros(())
            self.log_terms(terms)
