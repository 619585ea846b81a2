"""Mean-teacher self-training — a standard source-free baseline: confident EMA-teacher pseudo-labels, plain CE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atp.adaptation import thresholded_pseudo_label_ce
from atp.data.labels import IGNORE_INDEX
from atp.stages.mean_teacher import MeanTeacherStage


class SelfTrainStage(MeanTeacherStage):
    """L = CE(student(A(x)), teacher argmax on x) over the pixels whose teacher confidence ≥ ``pos_threshold``.

    The EMA teacher is reset from the student at step 0 and updated at the start of every step (spec §4.2),
    as in Teach; the student sees Teach's strong augmentation A (spec §4.4). The CE has mmseg's mean
    reduction (ignored pixels count in the denominator). Unlike Teach: no negative term, no curriculum, no
    class balance, no prior correction. Larger inputs (ACDC) get the teacher's class-balanced crop.
    """

    stage_name = "selftrain"
    predecessors = ("source",)
    data_mode = "target"
    default_init = "auto"
    chain_position = None  # a baseline, not part of ATP's chain
    baseline = True
    teaches_with_pseudo_labels = True

    def __init__(self, model: torch.nn.Module, pos_threshold: float = 0.968, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not 0.0 <= pos_threshold <= 1.0:
            raise ValueError(f"stage.module.pos_threshold must lie in [0, 1] (0 = every pixel), got {pos_threshold}")
        self.pos_threshold = pos_threshold

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.begin_step()
        self.update_teacher()
        pseudo = self.pseudo_label(batch["img"])
        aug_generator = self.step_generator("cpu")
        params = self.strong_aug.draw(aug_generator)
        strong = self.strong_aug.apply(pseudo.images, params, aug_generator)
        logits = self.upsample(self.student(strong), strong.shape[-2:])
        ce = thresholded_pseudo_label_ce(logits, pseudo.labels, pseudo.confidence, self.pos_threshold,
                                         ignore_index=IGNORE_INDEX)
        self.manual_backward(ce)
        self.finish_step()
        if self.should_log():
            kept = (pseudo.confidence >= self.pos_threshold).float().mean()
            self.log_terms({"loss/ce": ce, "pseudo/kept": kept})
