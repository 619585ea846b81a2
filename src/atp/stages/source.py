"""Source training: supervised cross-entropy on the labelled source domain (spec §9)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F

from atp.data.labels import IGNORE_INDEX
from atp.stages.base import SegStage


class SourceStage(SegStage):
    """Plain CE (no negative term) on labelled source crops; validation on target val."""

    stage_name = "source"
    predecessors = ()
    data_mode = "source"
    default_init = None  # ImageNet encoder from model.imagenet_init when given, else random
    chain_position = 0

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.begin_step()
        images, labels = batch["img"], batch["label"]
        logits = self.upsample(self.student(images), labels.shape[-2:])
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        self.manual_backward(loss)
        self.finish_step()
        self.log_terms({"loss/ce": loss})
