"""Source training: supervised cross-entropy on the labelled source domain (spec §9)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from atp.adaptation import StrongAugment
from atp.data.labels import IGNORE_INDEX
from atp.data.prepare import labels_class_share
from atp.data.transforms import MEAN, STD
from atp.stages.base import SegStage, _plain
from atp.stages.options import StrongAugOptions, option_group


class SourceStage(SegStage):
    """Plain CE (no negative term) on labelled source crops; validation on target val.

    ``strong_aug`` ([I], default None = the spec's source recipe, no photometric augmentation): the
    adaptation stages' colour jitter and blur (:class:`~atp.adaptation.StrongAugment`, its arguments)
    on the source crops.
    """

    stage_name = "source"
    predecessors = ()
    data_mode = "source"
    default_init = None  # ImageNet encoder from model.imagenet_init when given, else random
    chain_position = 0

    def __init__(self, model: torch.nn.Module, strong_aug: StrongAugOptions | Mapping | None = None,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        aug = _plain(strong_aug)
        self.strong_aug = (None if aug is None else
                           StrongAugment(mean=MEAN, std=STD, **option_group(StrongAugOptions, aug, "strong_aug")))
        # counted from the source labels when training starts (all zeros until then: unknown)
        self.source_class_share = torch.zeros(self.num_classes)

    def on_train_start(self) -> None:
        """Record the share of each class among the source labels this model learns from (issue #23): the
        prior that Teach's and Propagate's prior correction reads from the checkpoints of this chain. A statistic
        of the source training, so adaptation stays source-free. Kept as it is on a resume."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.global_step > 0 or not hasattr(datamodule, "dataset"):
            return
        share = labels_class_share(datamodule.dataset("source"), self.num_classes)
        self.source_class_share = torch.tensor(share, dtype=torch.float32, device=self.device)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.begin_step()
        images, labels = batch["img"], batch["label"]
        if self.strong_aug is not None:
            images = self.strong_aug(images, self.step_generator("cpu"))
        logits = self.upsample(self.student(images), labels.shape[-2:])
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        self.manual_backward(loss)
        self.finish_step()
        self.log_terms({"loss/ce": loss})
