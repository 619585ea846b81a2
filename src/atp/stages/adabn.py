"""AdaBN — the standard source-free baseline: BatchNorm statistics re-estimated on target images.

No weight changes: every BatchNorm's running mean/variance is reset and then set to the cumulative
average (``momentum=None``) of the target-train batch statistics, with the rest of the network in
eval mode (no dropout or stochastic depth in the features the statistics see). The MiT encoder uses
LayerNorm, so the adapted layers are the decoder's and the projection head's BatchNorms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from atp.adaptation import batch_norms, bn_estimation_mode, forward_for_statistics
from atp.data.datamodule import one_pass_batches
from atp.stages.base import SegStage
from atp.stages.options import EvalOptions


class AdaBNStage(SegStage):
    """Forward passes over target batches in BN-train mode under ``no_grad``; no gradient step.

    It stays a manual-optimisation stage with an optimiser (plain SGD whose parameters never get a
    gradient, so ``step`` changes nothing) because Lightning counts ``global_step`` in optimiser steps:
    checkpoints, resume, validation intervals and the manifest then work as in every other stage. The
    stage ends after ``num_batches`` batches (None: one pass over the target-train set, i.e.
    ceil(images / batch size)), or at ``trainer.max_steps`` if that comes first.
    """

    stage_name = "adabn"
    predecessors = ("source",)
    data_mode = "target"
    default_init = "auto"
    chain_position = None  # a side branch: align still starts from source
    baseline = True

    def __init__(
        self,
        model: torch.nn.Module,
        eval: EvalOptions | Mapping,
        num_batches: int | None = None,
        num_classes: int = 19,
        seed: int = 76,
        log_interval: int = 50,
        collapse_share: float = 0.6,
        collapse_patience: int = 3,
        source_class_share: list[float] | None = None,
    ) -> None:
        super().__init__(model, optim={}, schedule={}, eval=eval, num_classes=num_classes, seed=seed,
                         log_interval=log_interval, collapse_share=collapse_share,
                         collapse_patience=collapse_patience, source_class_share=source_class_share)
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"stage.module.num_batches must be at least 1 (or null for one pass), got {num_batches}")
        self.num_batches = None if num_batches is None else int(num_batches)
        for norm in batch_norms(self.student):
            norm.momentum = None  # cumulative average over all batches since the reset

    def configure_optimizers(self):
        # No parameter ever has a gradient here, so this optimiser's step changes no weight and keeps
        # no state; it exists because Lightning's global_step counts optimiser steps.
        return torch.optim.SGD(self.student.parameters(), lr=0.0)

    def on_train_start(self) -> None:
        if self.num_batches is None:  # one pass over the target-train images
            self.num_batches = one_pass_batches(self.trainer.train_dataloader)
        if self.global_step == 0:  # a new stage (not a resume): forget the source statistics
            for norm in batch_norms(self.student):
                norm.reset_running_stats()

    @torch.no_grad()
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        # BN in training mode, the rest in eval mode; set at every step: Lightning restores each submodule's
        # mode around validation by itself
        bn_estimation_mode(self.student)
        forward_for_statistics(self.student, batch["img"])
        self.optimizers().step()  # advances global_step; no gradients, so no weight changes
        if self.global_step >= self.num_batches:
            self.trainer.should_stop = True
        self.log_terms({"bn/batches": float(self.global_step)})
